"""`sslcli methods`: every method, one line each with its paper (from the configs: no torch needed)."""

from __future__ import annotations

from typing import Any

from sslcli.methods import CONFIGS, PRESET_FAMILIES


def run() -> dict[str, Any]:
    return {name: {"summary": cfg.summary, "paper": cfg.paper, "family": cfg.family,
                   "preset_families": [family for family, method in PRESET_FAMILIES.items() if method == name]}
            for name, cfg in CONFIGS.items()}


def format_text(rows: dict[str, Any]) -> str:
    width = max(len(name) for name in rows)

    def also(row: dict[str, Any]) -> str:
        families = row.get("preset_families") or []
        return f"  (also the presets {', '.join(f'{f}-*' for f in families)})" if families else ""

    return "\n".join(f"{name:<{width}}  {row['summary']}  {row['paper']}{also(row)}" for name, row in rows.items())
