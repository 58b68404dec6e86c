"""data.image_size=auto: the training size chosen from the images themselves, without torch and without
decoding them (Pillow reads the size from the file header), so --dry-run shows it at once."""

from __future__ import annotations

import os
import random
import stat
import statistics
from pathlib import Path

from PIL import Image

from sslcli.image_lists import is_list_file, read_image_list

SIZES = (32, 64, 96, 128, 160, 224)  # the sizes auto picks from; 224 is the cap
SAMPLE = 64  # images whose header is read
# The image files sslcli reads (data.IMAGE_EXTENSIONS is this set; it lives here, where no torch is imported).
# .npy: NumPy arrays (H x W, H x W x C or C x H x W), for images of other than 3 channels (data.channels).
EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".npy"})


def size_for(shorter_side: float) -> int:
    """The size for images whose median shorter side is this: 32 for CIFAR-sized images (<= 40 px), else the
    nearest of SIZES (a tie goes to the smaller: 112 px gives 96), at most 224 for large photos."""
    if shorter_side <= 40:
        return 32
    return min(SIZES, key=lambda size: (abs(size - shorter_side), size))


def is_special_file(path: Path) -> bool:
    """A named pipe, device or socket (or a link to one): opening it can block forever or read something that
    is no file. A broken link is not special: reading it fails, and the reader reports it as unreadable."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def image_files(folder: Path, limit: int = 100_000) -> list[Path]:
    """Image files under folder in a fixed order (hidden names and special files skipped), at most `limit`."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in sorted(filenames)
                     if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS
                     and not is_special_file(Path(dirpath, f)))
        if len(found) >= limit:
            break
    return found[:limit]


def shorter_side(path: Path) -> int:
    """The shorter side of an image from its header alone (Pillow's, or a .npy file's: its spatial sides are
    its two largest dimensions, the channels being the smallest)."""
    if path.suffix.lower() == ".npy":
        import numpy as np

        shape = np.load(path, mmap_mode="r", allow_pickle=False).shape  # a memory map reads the header only
        if len(shape) not in (2, 3):
            raise ValueError(f"array of shape {shape} is not an image")
        return sorted(shape)[-2]
    with Image.open(path) as img:  # the header only: no pixel is decoded
        return min(img.size)


def auto_image_size(folder: Path | str, seed: int = 0) -> tuple[int, float, int] | None:
    """(chosen size, median shorter side, images measured) from a seeded sample of up to SAMPLE images of a
    folder or list file, or None when it holds no image whose header can be read (the data loader then says
    why)."""
    folder = Path(folder)
    if is_list_file(folder) and folder.is_file():
        files = read_image_list(folder, warn=False).paths
    elif folder.is_dir():
        files = image_files(folder)
    else:
        return None
    sample = random.Random(seed).sample(files, min(SAMPLE, len(files)))
    sides = []
    for path in sample:
        try:
            sides.append(shorter_side(path))
        except Exception:  # noqa: BLE001 - an unreadable file says nothing about the size; data.py reports it
            continue
    if not sides:
        return None
    median = statistics.median(sides)
    return size_for(median), median, len(sides)
