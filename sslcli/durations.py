"""Durations as people write them (5m, 90s, 2h, 1h30m): no torch, so the spec can read --budget."""

from __future__ import annotations

import math
import re

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int) -> float:
    """'5m', '90s', '2h', '1h30m', '1.5h' or a number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        value = str(text).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", value)
        if not parts or re.sub(r"\s*(\d+(?:\.\d+)?)\s*[hms]\s*", "", value):
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"'{text}' is not a duration; use e.g. 90s, 5m, 2h or 1h30m") from None
        else:
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a budget must be a positive duration, got '{text}'")
    return seconds
