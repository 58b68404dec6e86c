"""The manual against the repository and the CLI: README.md and docs/*.md.

- Every relative link ([text](path), [text](path#anchor), images too) resolves to a file inside the repository,
  and an anchor to a heading of its target (GitHub's slugs); http(s):// and mailto: links are not followed.
- The methods tables (README.md, docs/methods.md) list exactly the methods of `sslcli methods --json`, each
  with its paper link.
- The expected kNN figures quoted in docs/benchmarks.md equal the presets' (`sslcli presets --json`).

Each checker is a function of Markdown text, so the negative controls plant a fault in a string. No torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
BENCHMARKS = DOCS / "benchmarks.md"
METHODS_PAGE = DOCS / "methods.md"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) or ![alt](target), with an optional "title"; the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SKIPPED_SCHEMES = ("http://", "https://", "mailto:")
PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def manual_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks (links and headings in code are not Markdown)."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


# ---------------------------------------------------------------- links and anchors


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, hyphens and spaces
    kept), spaces to hyphens. Inline code keeps its text; link syntax keeps its text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(text):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images outside code."""
    targets = []
    for line in prose_lines(text):
        targets.extend(LINK.findall(INLINE_CODE.sub("", line)))
    return targets


def broken_links(text: str, where: Path, root: Path = ROOT) -> list[str]:
    """What is wrong with the relative links of `text`, read as the file `where` of the repository `root`."""
    problems = []
    for target in links(text):
        if target.lower().startswith(SKIPPED_SCHEMES):
            continue
        path, _, anchor = target.partition("#")
        if path:
            resolved = (where.parent / path).resolve()
            if not resolved.is_relative_to(root.resolve()):
                problems.append(f"{target}: outside the repository")
                continue
            if not resolved.exists():
                problems.append(f"{target}: no such file")
                continue
        else:
            resolved = where
        if anchor:
            if resolved.suffix != ".md" or resolved.is_dir():
                problems.append(f"{target}: an anchor into a file that is not Markdown")
                continue
            heads = anchors(text if resolved == where else resolved.read_text(encoding="utf-8"))
            if anchor not in heads:
                problems.append(f"{target}: no heading '#{anchor}' in {resolved.relative_to(root.resolve())}")
    return problems


@pytest.mark.parametrize("page", manual_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path):
    assert page.is_file(), f"{page} is missing"
    text = page.read_text(encoding="utf-8")
    assert links(text), f"{page.name} has no links at all: the parser is not reading it"
    assert broken_links(text, page) == [], f"broken links in {page.relative_to(ROOT)}"


def test_the_docs_folder_holds_the_manual():
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"cli.md", "methods.md", "training.md", "artifacts.md", "benchmarks.md", "development.md"} <= names
    readme_targets = {t.partition("#")[0] for t in links(README.read_text(encoding="utf-8"))}
    assert {f"docs/{name}" for name in names} <= readme_targets, "the README links every page of docs/"


def test_the_link_checker_reports_planted_faults():
    where = DOCS / "planted.md"  # read as a page of docs/ (it need not exist)
    planted = "\n".join([
        "# Here and there",
        "[fine](cli.md) [fine](../README.md) [fine](cli.md#the-spec-presets-and---set) [fine](#here-and-there)",
        "[gone](nope.md)",
        "[out](../../shared/REFERENCES.md)",
        "[anchor](cli.md#no-such-heading)",
        "[self](#nowhere)",
        "![image](../bench/results/missing.png)",
        "[web](https://arxiv.org/abs/2002.05709) [mail](mailto:maintainers) `[code](in-code.md)`",
        "```",
        "[fenced](in-a-fence.md)",
        "```",
    ])
    problems = broken_links(planted, where)
    assert len(problems) == 5, problems
    for expected in ("nope.md: no such file", "../../shared/REFERENCES.md: outside the repository",
                     "cli.md#no-such-heading: no heading", "#nowhere: no heading", "../bench/results/missing.png: no such file"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_a_link_that_climbs_out_of_the_repository_fails_even_where_the_file_exists(tmp_path: Path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "shared.md").write_text("# Shared\n")
    assert broken_links("[x](../shared.md)", repo / "README.md", root=repo) == ["../shared.md: outside the repository"]


def test_slugs_follow_github():
    assert slug("`sslcli probe ENCODER --data DIR [--val DIR]`") == "sslcli-probe-encoder---data-dir---val-dir"
    assert slug("Is it learning? Online kNN, collapse monitors, report") == \
        "is-it-learning-online-knn-collapse-monitors-report"
    assert slug("`sslcli report RUN_DIR`") == "sslcli-report-run_dir"
    assert anchors("# A\n## A\n```\n# B\n```\n") == {"a", "a-1"}


# ---------------------------------------------------------------- tables


def tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table as rows of cells (header first, the separator row left out)."""
    found: list[list[list[str]]] = []
    block: list[str] = []
    for line in [*prose_lines(text), ""]:
        if line.lstrip().startswith("|"):
            block.append(line.strip())
            continue
        if len(block) >= 2 and re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", block[1]):
            found.append([cells(row) for i, row in enumerate(block) if i != 1])
        block = []
    return found


def cells(row: str) -> list[str]:
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [c.strip() for c in re.split(r"(?<!\\)\|", row)]


def bare(cell: str) -> str:
    return cell.replace("`", "").strip()


@cache
def cli_json(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sslcli", *args, "--json"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def methods_tables(text: str) -> list[dict[str, str]]:
    """Each table whose first column is `--method`: name -> the link of its paper column."""
    out = []
    for table in tables(text):
        header = [bare(c).lower() for c in table[0]]
        if header[0] != "--method":
            continue
        assert "paper" in header, f"a --method table without a paper column: {table[0]}"
        paper = header.index("paper")
        rows: dict[str, str] = {}
        for row in table[1:]:
            assert len(row) == len(header), f"a row with {len(row)} cells under {len(header)} columns: {row}"
            found = LINK.search(row[paper])
            name = bare(row[0])
            rows[name if name not in rows else f"{name} (twice)"] = found.group(1) if found else ""
        out.append(rows)
    return out


def methods_table_problems(text: str, methods: dict[str, dict]) -> list[str]:
    problems = []
    for rows in methods_tables(text):
        for name in sorted(set(methods) - set(rows)):
            problems.append(f"{name}: missing from the table")
        for name, link in rows.items():
            if name not in methods:
                problems.append(f"{name}: in the table, not in sslcli methods")
            elif link != methods[name]["paper"]:
                problems.append(f"{name}: paper {link or '(none)'} in the table, {methods[name]['paper']} in sslcli")
    return problems


@pytest.mark.parametrize("page", [README, METHODS_PAGE], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_methods_tables_list_the_methods_of_the_cli(page: Path):
    text = page.read_text(encoding="utf-8")
    methods = cli_json("methods")
    assert len(methods) >= 20
    if page == README:
        assert len(methods_tables(text)) == 1, "the README has one methods table (first column `--method`)"
    assert methods_table_problems(text, methods) == []


def test_the_methods_check_reports_a_planted_difference():
    methods = cli_json("methods")
    text = README.read_text(encoding="utf-8")
    simclr, byol = methods["simclr"]["paper"], methods["byol"]["paper"]
    lines = text.splitlines()
    wrong = [line.replace(simclr, "https://arxiv.org/abs/0000.00000") if line.startswith("| `simclr`") else line
             for line in lines if not line.startswith("| `byol`")]
    wrong.insert(next(i for i, line in enumerate(wrong) if line.startswith("| `mocov2`")),
                 "| `nosuch` | [0000.00001](https://arxiv.org/abs/0000.00001) | not a method |")
    problems = methods_table_problems("\n".join(wrong), methods)
    assert sorted(problems) == sorted([
        f"simclr: paper https://arxiv.org/abs/0000.00000 in the table, {simclr} in sslcli",
        "byol: missing from the table",
        "nosuch: in the table, not in sslcli methods",
    ]), problems
    assert byol not in "\n".join(wrong)


# ---------------------------------------------------------------- expected kNN figures


def quoted_expectations(text: str) -> list[tuple[str, float, str]]:
    """(preset, figure, column) for every table cell of a column headed `expected...` in a table whose first
    column names presets."""
    out = []
    for table in tables(text):
        header = [bare(c).lower() for c in table[0]]
        columns = [i for i, h in enumerate(header) if h.startswith("expected")]
        if header[0] != "preset" or not columns:
            continue
        for row in table[1:]:
            for i in columns:
                figure = PERCENT.search(row[i])
                assert figure, f"no percentage in the {header[i]!r} cell of {row}"
                out.append((bare(row[0]), float(figure.group(1)), header[i]))
    return out


def expectation_problems(text: str, presets: dict[str, dict]) -> list[str]:
    problems = []
    quoted = quoted_expectations(text)
    for name, figure, column in quoted:
        expected = (presets.get(name) or {}).get("expected")
        if name not in presets:
            problems.append(f"{name}: not a preset")
        elif expected is None:
            problems.append(f"{name}: quoted {figure} % but the preset expects nothing")
        elif abs(figure - expected["knn_top1"]) > 0.005:
            problems.append(f"{name}: {figure} % in column {column!r}, the preset expects {expected['knn_top1']} %")
    measured = {name for name, info in presets.items() if info.get("expected")}
    full = {name for name, _, column in quoted if column == "expected knn top-1"}
    for name in sorted(measured - full):
        problems.append(f"{name}: missing from the 'expected kNN top-1' table")
    return problems


def test_the_expected_knn_figures_in_the_benchmarks_are_the_presets():
    text = BENCHMARKS.read_text(encoding="utf-8")
    presets = cli_json("presets")
    assert len(quoted_expectations(text)) >= len([p for p in presets.values() if p["expected"]])
    assert expectation_problems(text, presets) == []


def test_the_expectation_check_reports_a_planted_difference():
    presets = cli_json("presets")
    text = BENCHMARKS.read_text(encoding="utf-8")
    quickstart = presets["quickstart"]["expected"]["knn_top1"]
    simsiam = presets["simsiam-cpu"]["expected"]["knn_top1"]
    wrong = []
    for line in text.splitlines():
        if line.startswith("| `vicreg-cpu` |") and "bench-methods" in line:
            continue  # a measured preset left out of the full table
        if line.startswith("| `quickstart` |") and "PRESETS=quickstart" in line:
            line = PERCENT.sub("12.34 %", line, count=1)  # a wrong figure
        if line.startswith("| `simsiam-cpu` |") and "bench-methods" not in line:
            line = line.replace("`simsiam-cpu`", "`simclr-cifar10`")  # a preset that expects nothing
        wrong.append(line)
    assert sorted(expectation_problems("\n".join(wrong), presets)) == sorted([
        f"quickstart: 12.34 % in column 'expected knn top-1', the preset expects {quickstart} %",
        "vicreg-cpu: missing from the 'expected kNN top-1' table",
        f"simclr-cifar10: quoted {simsiam} % but the preset expects nothing",
    ])


def test_the_manual_s_preset_example_resolves_as_it_says(tmp_path: Path):
    """The `extends` example of docs/cli.md, written to a file and resolved: its own values over simclr-cpu's."""
    from sslcli.spec import PretrainSpec, resolve

    text = (DOCS / "cli.md").read_text()
    example = re.search(r"```toml\n(# mine\.toml.*?)```", text, re.S)
    assert example, "docs/cli.md lost its preset example"
    (tmp_path / "mine.toml").write_text(example.group(1))
    mine = resolve(PretrainSpec, preset=str(tmp_path / "mine.toml"))
    base = resolve(PretrainSpec, preset="simclr-cpu")
    assert (mine.train.epochs, mine.method.temperature) == (30, 0.3)
    assert mine.method.proj_hidden_dim == base.method.proj_hidden_dim and mine.optim == base.optim
