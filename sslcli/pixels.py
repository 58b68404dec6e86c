"""Images of other than 3 channels (data.channels = 1 or N) and NumPy .npy arrays: a file -> uint8 [H, W, C].

Greyscale (X-ray, medical) and multi-band (satellite) images keep their own channels instead of becoming RGB.
Sources: Pillow for PNG, JPEG, TIFF, ... (an alpha channel is composited over white for 1 channel, and kept as a
channel of its own for N); tifffile for TIFFs of N channels (Pillow reads at most 4 bands of 8 bits); .npy files
through np.load with allow_pickle=False (an object array is refused, never unpickled). An array is H x W, H x W x C
or C x H x W (the axis whose length is data.channels is the channel axis).

Bit depth: 8-bit data (uint8) is kept as it is; anything else (16-bit PNG/TIFF, int32, float) is scaled to 0..255
by the image's own minimum and maximum over all its channels (one range per image, so the bands keep their
relative brightness). A 12-bit X-ray in a 16-bit file then uses all 256 levels instead of the 16 that the 16-bit
range would leave it, and nothing is clipped; a constant image becomes 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TIFF_SUFFIXES = (".tif", ".tiff")
TIFF_EXTRA = "pip install 'sslcli[tiff]'"


class ChannelError(ValueError):
    """The file is an image, but not of the channels the run takes."""


def read_pixels(path: Path, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] of one file (ValueError, OSError, ... when it cannot be read as such)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = _read_npy(path)
    elif suffix in TIFF_SUFFIXES and channels not in (1, 3):
        array = _read_tiff(path)
    else:
        array = _read_pillow(path, channels)
    if channels == 3 and array.ndim == 2:  # a greyscale array for an RGB run: grey in all three, as data.to_rgb
        array = np.repeat(array[:, :, None], 3, axis=2)
    return to_uint8(channels_last(array, channels))


def _read_npy(path: Path) -> np.ndarray:
    # A memory map reads the header first, so a huge array is refused before anything is loaded.
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "object" in str(exc).lower():  # numpy's words for a pickled array, which allow_pickle=False refuses
            raise ValueError("an array of Python objects, which would need unpickling: sslcli never unpickles; "
                             "save the pixels as numbers") from None
        raise
    _check_pixels(mapped.shape)
    return np.asarray(mapped)


def _read_tiff(path: Path) -> np.ndarray:
    try:
        import tifffile
    except ImportError:
        try:
            return _read_pillow(path, 0)
        except Exception:  # noqa: BLE001 - Pillow's reason matters less than the reader that would work
            raise ValueError(f"a multi-channel TIFF needs tifffile: {TIFF_EXTRA}") from None
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_pixels(page.shape)
        return page.asarray()


def _check_pixels(shape: tuple[int, ...]) -> None:
    if len(shape) not in (2, 3):
        raise ChannelError(f"an array of shape {tuple(shape)} is not an image (H x W, H x W x C or C x H x W)")
    height, width = sorted(shape)[-2:]
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and height * width > 2 * limit:  # the bound Pillow puts on its own files
        raise Image.DecompressionBombError(f"{height * width} pixels is over twice Pillow's limit of {limit}")


def _read_pillow(path: Path, channels: int) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if channels == 1 and not img.mode.startswith(("I", "F")):
            if "A" in img.mode or img.mode in ("P", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")  # alpha over white, as for RGB (data.to_rgb)
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            return np.asarray(img.convert("L"))
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.array(img)


def channels_last(array: np.ndarray, channels: int) -> np.ndarray:
    """[H, W, channels] from H x W, H x W x C or C x H x W; ChannelError when the channels do not match."""
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim != 3:
        raise ChannelError(f"an array of shape {array.shape} is not an image (H x W, H x W x C or C x H x W)")
    elif array.shape[-1] != channels and array.shape[0] == channels:
        array = array.transpose(1, 2, 0)
    if array.shape[-1] != channels:
        found = array.shape[-1] if array.shape[-1] <= array.shape[0] else min(array.shape)
        raise ChannelError(f"has {found} channels (shape {array.shape}), but data.channels is {channels}")
    return array


def to_uint8(array: np.ndarray) -> np.ndarray:
    """8-bit data as it is, booleans as 0/255, anything else stretched by its own min..max to 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"pixels of type {array.dtype} are not numbers sslcli can scale")
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = values[finite].min(), values[finite].max()
    scaled = np.where(finite, values - low, 0.0) * (255.0 / (high - low) if high > low else 0.0)
    return np.rint(scaled).astype(np.uint8)
