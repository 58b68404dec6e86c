"""The package's shape: data flows one way (commands on top of the library, no cycles), and the light
commands start without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sslcli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> set[str]:
    """sslcli modules this file imports when it runs (anywhere in it, functions included; not the imports
    under `if TYPE_CHECKING:`, which only a type checker follows)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and ast.unparse(stmt.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
               for child in stmt.body for node in ast.walk(child)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("sslcli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslcli"):
            for alias in node.names:  # `from sslcli import data` imports the module sslcli.data
                candidate = f"{node.module}.{alias.name}"
                names.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else node.module)
    return names - {"sslcli"}


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): runtime_imports(p) for p in PACKAGE.rglob("*.py")}


def is_command(name: str) -> bool:
    return name in ("sslcli.cli", "sslcli.__main__") or name.startswith("sslcli.commands")


def test_library_modules_never_import_a_command():
    upward = {(module, dep) for module, deps in import_graph().items() if not is_command(module)
              for dep in deps if is_command(dep)}
    assert not upward, f"library modules importing commands (the data flows down only): {sorted(upward)}"


def test_commands_do_not_import_each_other_or_the_cli():
    crossing = {(module, dep) for module, deps in import_graph().items() if module.startswith("sslcli.commands.")
                for dep in deps if is_command(dep) and dep != "sslcli.commands"}
    assert not crossing, sorted(crossing)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[node], _ = 2, path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    # Package __init__ modules import their children by design (the methods registry): the edge from a
    # child back to its package is the package's own import, not a cycle between two modules.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in import_graph().items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    # The negative control of the test above: a planted cycle is reported.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


LIGHT = """
import json, sys
from sslcli.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "torchvision", "timm", "matplotlib") if m in sys.modules)
print(json.dumps(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize("argv", [["--help"], ["presets"], ["methods", "--json"], ["pretrain", "--help"],
                                  ["pretrain", "DATA", "--preset", "dino-cpu", "--dry-run"],
                                  ["finetune", "ENCODER", "--data", "DATA", "--dry-run"], ["inspect", "ENCODER"]],
                         ids=lambda a: " ".join(a))
def test_light_commands_do_not_import_torch(argv: list[str], encoder_file: Path):
    argv = [str(encoder_file) if a == "ENCODER" else a for a in argv]
    proc = subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=120)
    heavy = json.loads(proc.stderr.strip().splitlines()[-1])
    assert heavy == [], f"{argv} imported {heavy}"
    assert proc.stdout.strip()  # and it did its work


@pytest.mark.parametrize("command", ["probe", "finetune", "embed", "export"])
def test_a_file_that_is_not_an_encoder_is_refused_before_torch_is_imported(command: str, tmp_path: Path):
    not_encoder = tmp_path / "encoder.safetensors"
    not_encoder.write_text('{"weights": [1, 2]}')
    extra = {"embed": ["--out", str(tmp_path / "e.safetensors")], "export": ["--to", "timm", "--out", str(tmp_path)]}
    argv = [command, str(not_encoder), *(["--data", str(tmp_path)] if command != "export" else []),
            *extra.get(command, [])]
    proc = subprocess.run([sys.executable, "-c", LIGHT, *argv], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: {not_encoder} is not a safetensors file (it is JSON text)"), proc.stderr
    assert json.loads(lines[-1]) == [], f"{command} imported {lines[-1]} before refusing the file"
