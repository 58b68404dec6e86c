"""`sslcli presets`: every preset, one line each, with the kNN top-1 it is expected to reach where measured."""

from __future__ import annotations

from typing import Any

from sslcli.spec import list_presets, preset_expectations


def run() -> dict[str, Any]:
    expected = preset_expectations()
    return {name: {"description": description, "expected": expected.get(name)} for name, description in list_presets()}


def format_text(rows: dict[str, Any]) -> str:
    width = max((len(name) for name in rows), default=0)
    lines = []
    for name, row in rows.items():
        e = row["expected"]
        # A preset with a time budget was measured over fixed epochs (so the figure is the machine's own).
        after = f" after {e['epochs']} epochs" if e and e.get("epochs") else ""
        note = f"  [expect kNN {e['knn_top1']:.1f} % ± {e['tolerance']:.1f}{after}]" if e else ""
        if not e and name.endswith("-cpu"):  # a CPU preset's figure comes from `make bench-methods` on 2 cores
            note = "  [kNN not measured yet]"
        lines.append(f"{name:<{width}}  {row['description']}{note}")
    return "\n".join(lines)
