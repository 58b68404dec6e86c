"""Test helpers that are not fixtures."""

from __future__ import annotations

from pathlib import Path


def images_are_valid_png(path: Path) -> bool:
    """A non-empty PNG that decodes."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        return img.format == "PNG" and path.stat().st_size > 0
    except (OSError, SyntaxError):
        return False
