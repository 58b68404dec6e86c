"""The package's shape: data flows one way (commands on top of the library, no cycles), and the light
commands start without torch."""

from __future__ import annotations

import ast
import json
import os
import re
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


# The library's layers, lowest first: a module imports only modules of its own layer or a lower one. Every
# module is named here (a new one must be placed), the method packages by their prefix.
LAYERS: dict[str, set[str]] = {
    "core": {"errors", "console", "durations", "files", "device", "distributed", "schedules", "step",
             "stop_signals", "sizing", "views", "colour", "headers", "onednn", "run_lock", "encoder_args",
             "image_lists", "extras"},
    "data and models": {"data", "pixels", "cache", "augment", "splits", "encoders", "heads", "losses", "evaluate",
                        "features", "checkpoint", "weights", "embedding_files", "nearest", "video", "video_data",
                        "clip_features"},
    "methods": {"methods"},
    "engine": {"spec", "train", "guard", "prefetch", "budget", "pretraining", "finetuning", "online_knn", "monitors",
               "report", "resume", "semi_supervised", "training_data", "trackers", "command_specs", "onnx_export",
               "hub_folder", "embedding_map", "clip_training", "label_augmentation", "teacher_distillation",
               "attention_maps"},
    "commands": {"commands", "cli", "__main__"},
    "public API": {"sslcli", "api"},  # the package's face: sslcli.pretrain(...) runs the commands
}


def layer_of(module: str) -> int:
    short = module.removeprefix("sslcli.") if module != "sslcli" else "sslcli"
    top = short.split(".")[0]
    for index, (_, names) in enumerate(LAYERS.items()):
        if short in names or top in names:
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_structure.py LAYERS: place it")


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    upward = sorted((module, dep) for module, deps in import_graph().items() for dep in deps
                    if layer_of(dep) > layer_of(module))
    names = list(LAYERS)
    assert not upward, "upward imports: " + ", ".join(
        f"{m} ({names[layer_of(m)]}) -> {d} ({names[layer_of(d)]})" for m, d in upward)


def test_the_layer_check_finds_an_upward_import():
    # The negative control: a data module importing the training loop is reported.
    assert layer_of("sslcli.cache") < layer_of("sslcli.train") < layer_of("sslcli.commands.probe")
    assert layer_of("sslcli.methods.simclr.model") == layer_of("sslcli.methods")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("sslcli.not_placed")


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


def test_the_suite_without_the_shared_data_stops_with_one_line(tmp_path: Path):
    env = {**os.environ, "SSLCLI_SHARED_DATA": str(tmp_path / "absent")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:xdist",
                           str(Path(__file__).parent / "test_spec.py")], capture_output=True, text=True, env=env,
                          cwd=PACKAGE.parent, timeout=120)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stdout + proc.stderr
    assert [line for line in output if "shared datasets are missing" in line] == [
        f"ERROR: the shared datasets are missing: {tmp_path / 'absent' / 'cifar10'} is not a folder; clone the "
        "repository beside ../shared or set SSLCLI_SHARED_DATA to the data folder"], output


def test_a_new_method_is_one_package_and_its_presets(tmp_path: Path):
    """Adding a method touches nothing else: a copy of the repository gets one more method package (SimCLR's,
    renamed) and its three presets, and the registry, the CLI and the method contract tests pick it up."""
    import shutil

    root = PACKAGE.parent
    for folder in ("sslcli", "tests", "presets", "bench"):
        shutil.copytree(root / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", tmp_path)
    package = tmp_path / "sslcli" / "methods" / "toysimclr"
    shutil.copytree(root / "sslcli" / "methods" / "simclr", package, ignore=shutil.ignore_patterns("__pycache__"))
    config = (package / "config.py").read_text()
    (package / "config.py").write_text(config.replace('Literal["simclr"] = "simclr"', 'Literal["toysimclr"] = "toysimclr"')
                                       .replace("SimCLRConfig", "ToySimCLRConfig").replace("recipes: ClassVar", "_: ClassVar"))
    model = (package / "model.py").read_text()
    (package / "model.py").write_text(model.replace("sslcli.methods.simclr.config", "sslcli.methods.toysimclr.config")
                                      .replace("SimCLRConfig", "ToySimCLRConfig"))
    for kind in ("cpu", "cifar10", "imagenette"):
        preset = (root / "presets" / f"simclr-{kind}.toml").read_text()
        (tmp_path / "presets" / f"toysimclr-{kind}.toml").write_text(preset.replace('name = "simclr"',
                                                                                  'name = "toysimclr"'))
    from bench.common import SHARED_DATA

    env = {**os.environ, "PYTHONPATH": str(tmp_path), "SSLCLI_SHARED_DATA": str(SHARED_DATA)}
    listed = subprocess.run([sys.executable, "-m", "sslcli", "methods", "--json"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert "toysimclr" in json.loads(listed.stdout)
    helped = subprocess.run([sys.executable, "-m", "sslcli", "pretrain", "--help"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert "toysimclr" in helped.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
                            "tests/test_methods.py", "-k", "toysimclr or every_method_has"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", tests.stdout).group(1))
    assert passed >= 6, tests.stdout[-2000:]  # the contract tests ran on the new method
