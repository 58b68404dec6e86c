"""`sslcli methods`: every method, one line each with its paper (from the configs: no torch needed)."""

from __future__ import annotations

from typing import Any

from sslcli.methods import CONFIGS


def run() -> dict[str, Any]:
    return {name: {"summary": cfg.summary, "paper": cfg.paper} for name, cfg in CONFIGS.items()}


def format_text(rows: dict[str, Any]) -> str:
    width = max(len(name) for name in rows)
    return "\n".join(f"{name:<{width}}  {row['summary']}  {row['paper']}" for name, row in rows.items())
