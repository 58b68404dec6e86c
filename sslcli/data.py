"""Images on disk -> uint8 tensors: finding files, decoding any Pillow mode to RGB, bad files, batches.

Decoding happens once per sample to a fixed square (`storage_size_for`); augmentation works on the
uint8 batch afterwards. A file that cannot be decoded never crashes a worker: the dataset returns a
reason instead of a tensor and `BadImagePolicy` decides in the main process whether to skip or stop.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sslcli import console
from sslcli.errors import UsageError
from sslcli.image_lists import is_list_file, read_image_list
from sslcli.pixels import ChannelError, read_pixels
from sslcli.sizing import EXTENSIONS, is_special_file

IMAGE_EXTENSIONS: frozenset[str] = EXTENSIONS  # one list, kept in the torch-free sizing.py


@dataclass(frozen=True)
class ImageSet:
    """The images of one DATA folder or list file, with labels when it is an ImageFolder tree or a labeled CSV.

    `root` is the folder, or the list file the paths came from."""

    root: Path
    paths: list[Path]
    labels: list[int] | None
    classes: list[str] | None

    def __len__(self) -> int:
        return len(self.paths)


def _is_image_name(name: str) -> bool:
    # Hidden files include macOS "._x.jpg" AppleDouble files, which carry the extension but no image.
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(root: Path) -> list[Path]:
    """Every image file under root, skipping hidden names; symlinked folders are followed once each."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    # followlinks=True so symlinked class folders work; the (device, inode) guard stops symlink loops
    # and keeps a folder reachable by two routes from being counted twice.
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath, f) for f in filenames if _is_image_name(f))
    regular = [p for p in found if not is_special_file(p)]
    if len(regular) < len(found):
        special = sorted(set(found) - set(regular))
        shown = ", ".join(console.name(p) for p in special[:3]) + (", ..." if len(special) > 3 else "")
        console.warn(f"skipping {console.plural(len(special), 'entry', 'entries')} that {'is' if len(special) == 1 else 'are'} "
                     f"not a regular file (a named pipe, device or socket would block or mislead the reader): {shown}")
    return regular


def find_images(root: Path | str, name: str = "DATA") -> ImageSet:
    """The images DATA (or --data, --val) names: the one place a command turns that value into
    (paths, labels, classes), so every command takes folders and list files alike.

    A folder is an ImageFolder tree (class = top-level sub-folder) or unlabeled images: if any image
    sits directly in root the whole folder is unlabeled; otherwise each top-level sub-folder that holds
    images (at any depth) is a class, sorted by name as torchvision does. A .txt or .csv file is a list
    (image_lists.py): its paths in its order, classes the sorted label strings of a label column.
    `name` is how the user gave the value (DATA, --data, --val): errors name it.
    """
    root = Path(root)
    if is_list_file(root):
        return images_from_list(root, name)
    if not root.exists():
        raise UsageError(f"data folder {root} does not exist: check the path given as {name}")
    if not root.is_dir():
        raise UsageError(f"{root} is a file, not a folder: point {name} at a folder of images")
    found = _walk_images(root)
    if not found:
        looked = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise UsageError(f"no images found in {root} (looked for {looked}): point {name} at a folder of images")
    # Sorting by relative path parts keeps the order independent of the file system's listing order.
    rel = sorted((p.relative_to(root).parts, p) for p in found)
    paths = [p for _, p in rel]
    if any(len(parts) == 1 for parts, _ in rel):
        return ImageSet(root=root, paths=paths, labels=None, classes=None)
    # Only folders that actually hold images become classes, so an empty folder shifts no label.
    classes = sorted({parts[0] for parts, _ in rel})
    index = {name: i for i, name in enumerate(classes)}
    labels = [index[parts[0]] for parts, _ in rel]
    return ImageSet(root=root, paths=paths, labels=labels, classes=classes)


def images_from_list(source: Path, name: str = "DATA") -> ImageSet:
    """The images of a list file; labels index the sorted label strings (as ImageFolder sorts class folders)."""
    listed = read_image_list(source, name)
    paths, labels = listed.paths, listed.labels
    regular = [i for i, p in enumerate(paths) if not is_special_file(p)]
    if len(regular) < len(paths):
        special = [paths[i] for i in sorted(set(range(len(paths))) - set(regular))]
        shown = ", ".join(console.name(p) for p in special[:3]) + (", ..." if len(special) > 3 else "")
        console.warn(f"{console.name(source)}: skipping {console.plural(len(special), 'entry', 'entries')} that "
                     f"{'is' if len(special) == 1 else 'are'} not a regular file (a named pipe, device or socket "
                     f"would block or mislead the reader): {shown}")
        paths = [paths[i] for i in regular]
        labels = [labels[i] for i in regular] if labels is not None else None
        if not paths:
            raise UsageError(f"{source} lists no regular files: give {name} a list of image files")
    if labels is None:
        return ImageSet(root=source, paths=paths, labels=None, classes=None)
    classes = sorted(set(labels))
    index = {label: i for i, label in enumerate(classes)}
    return ImageSet(root=source, paths=paths, labels=[index[label] for label in labels], classes=classes)


def split_folders(root: Path | str) -> tuple[Path, Path | None]:
    """(train folder, eval folder) when root holds train/ plus val/ or test/ (val preferred); else (root, None)."""
    root = Path(root)
    train = root / "train"
    if train.is_dir():
        for name in ("val", "test"):
            if (root / name).is_dir():
                return train, root / name
    return root, None


def storage_size_for(image_size: int) -> int:
    """Side of the square decoded per image; larger sizes keep a margin so random crops have room."""
    return image_size if image_size <= 64 else round(1.15 * image_size)


def _white_background(img: Image.Image) -> Image.Image:
    # Fully transparent pixels hold arbitrary colour (often black); dropping the alpha channel would
    # expose it. Compositing over white gives what image viewers and browsers show.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(values: np.ndarray, full_scale: float) -> Image.Image:
    scaled = np.clip(values.astype(np.float64), 0.0, full_scale) * (255.0 / full_scale)
    return Image.fromarray(np.rint(scaled).astype(np.uint8)).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 3-channel 8-bit RGB; alpha is composited over white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _white_background(img)
    if mode.startswith("I"):
        # 16-bit greyscale (PNG, TIFF) opens as I;16* or I with values 0..65535. Pillow's own
        # convert("L") clips at 255, which turns almost every pixel white, so scale instead.
        return _grey_to_rgb(np.asarray(img), 65535.0)
    if mode == "F":
        # Float images have no fixed range: treat <= 1.0 as 0..1, otherwise as 0..255.
        values = np.asarray(img)
        return _grey_to_rgb(values, 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0)
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...: Pillow converts these correctly


class BadImageError(Exception):
    """A file that cannot be decoded as an image."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _reason(path: Path, exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"too many pixels, possible decompression bomb ({exc})"
    if isinstance(exc, ChannelError):
        return str(exc)
    if isinstance(exc, UnidentifiedImageError):
        try:
            if path.stat().st_size == 0:
                return "empty file (0 bytes)"
        except OSError:
            pass
        return "not an image, or a format Pillow cannot read"
    return f"{type(exc).__name__}: {exc}".strip()


def resize_center_crop(img: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """Shorter side to `size` with the named filter, centre crop (images here, video frames in video.py)."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        # reducing_gap first shrinks by an integer factor with a box filter: much faster on large
        # photos and visually indistinguishable at 3.0 (Pillow's own recommendation).
        img = img.resize((new_w, new_h), Image.Resampling[interpolation.upper()], reducing_gap=3.0)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_image(path: Path, size: int, channels: int = 3, interpolation: str = "bilinear") -> torch.Tensor:
    """Decode, resize the shorter side to `size` (with `interpolation`), center-crop: uint8 [channels, size, size].

    3 channels (the default): any Pillow mode becomes RGB (to_rgb). 1 or N channels, and .npy arrays: the
    image's own channels (pixels.read_pixels), each resized the same way."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; such files are bad too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if channels == 3 and path.suffix.lower() != ".npy":
                with Image.open(path) as img:
                    img.load()  # decode everything now, so a truncated file fails here and not later
                    out = np.asarray(resize_center_crop(to_rgb(img), size, interpolation), dtype=np.uint8)
            else:
                planes = read_pixels(path, channels)
                # Pillow resizes one 8-bit plane at a time ("L"): the same filter as RGB images get.
                out = np.stack([np.asarray(resize_center_crop(Image.fromarray(planes[:, :, c]), size,
                                                                interpolation))
                                for c in range(channels)], axis=2)
    except Exception as exc:
        # Pillow's format plugins raise a zoo of types on bad input (OSError, SyntaxError, ValueError,
        # struct.error, zlib.error, ...); every one of them means "this file is unreadable".
        raise BadImageError(path, _reason(path, exc)) from exc
    # HWC -> CHW in numpy: torch's .contiguous() goes through its intra-op thread pool, measured
    # 50x slower than this copy on a busy 2-core machine.
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


class BadImagePolicy:
    """What to do with unreadable files: skip them (warning about the first few) or stop with exit 2."""

    def __init__(self, mode: Literal["skip", "fail"] = "skip", show: int = 5):
        if mode not in ("skip", "fail"):
            raise ValueError(f"bad-image mode must be 'skip' or 'fail', not {mode!r}")
        self.mode = mode
        self.show = show
        self.count = 0
        self.first_paths: list[Path] = []
        self._seen: set[Path] = set()
        self._held: list[str] | None = None

    def hold(self) -> None:
        """Keep the warnings until release(): a command that may still refuse its input prints none of them."""
        self._held = []

    def release(self) -> None:
        """Print the warnings held since hold(), once the command goes on with the images."""
        held, self._held = self._held or [], None
        for line in held:
            console.warn(line)

    def record(self, path: Path, reason: str, what: str = "image") -> None:
        """`what` names the kind of file in the messages (an image; a video for a clip, video_data.py)."""
        if self.mode == "fail":
            raise UsageError(f"cannot read {what} {console.name(path)}: {reason} (remove it, or use --on-bad-image skip)")
        # Every epoch meets the same bad files again; count each file once so the summary is honest.
        if path in self._seen:
            return
        self._seen.add(path)
        self.count += 1
        if self.count <= self.show:
            self.first_paths.append(path)
            line = f"skipping unreadable {what} {console.name(path)}: {reason}"
            self._held.append(line) if self._held is not None else console.warn(line)

    def summary(self) -> str | None:
        if self.count == 0:
            return None
        noun = "image" if self.count == 1 else "images"
        shown = ", ".join(console.name(p) for p in self.first_paths[:3])
        more = ", ..." if self.count > min(3, len(self.first_paths)) else ""
        first = f" (first: {shown}{more})" if shown else ""
        return f"skipped {self.count} unreadable {noun}{first}"


class ImageDataset(torch.utils.data.Dataset):
    """Decoded images by index; a bad file gives (None, i, reason) instead of raising in a worker."""

    def __init__(self, paths: list[Path], size: int, channels: int = 3, interpolation: str = "bilinear"):
        self.paths = list(paths)
        self.size = size
        self.channels = channels
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, int, str | None]:
        try:
            return decode_image(self.paths[i], self.size, self.channels, self.interpolation), i, None
        except BadImageError as exc:
            return None, i, exc.reason


def collate_images(
    batch: list[tuple[torch.Tensor | None, int, str | None]], size: int = 0, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Stack the good samples: (uint8 [b,C,S,S], int64 [b], [(index, reason), ...]); b may be 0.

    `size` and `channels` only shape the empty tensor of an all-bad batch (make_loader passes them).
    """
    good = [(img, i) for img, i, _ in batch if img is not None]
    bad = [(i, reason) for img, i, reason in batch if img is None]
    if good:
        # numpy, not torch.stack: torch's thread pool made this ~30x slower in the main process.
        images = torch.from_numpy(np.stack([img.numpy() for img, _ in good]))
    else:
        images = torch.empty((0, channels, size, size), dtype=torch.uint8)
    indices = torch.tensor([i for _, i in good], dtype=torch.int64)
    return images, indices, bad


def _worker_init(worker_id: int) -> None:
    # Each worker is one of several processes already; extra intra-op threads would only oversubscribe
    # the cores that the other workers and the training loop need.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def make_loader(
    paths: list[Path],
    size: int,
    batch_size: int,
    *,
    shuffle: bool,
    drop_last: bool,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    sampler: torch.utils.data.Sampler | None = None,
    channels: int = 3,
    interpolation: str = "bilinear",
) -> torch.utils.data.DataLoader:
    """A DataLoader of decoded uint8 batches; the shuffle order depends only on `seed` and the epoch.

    A sampler (DistributedSampler under torchrun) replaces the loader's own shuffle."""
    # The sampler draws from this generator each epoch, so epoch k's order is the same in every run.
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        ImageDataset(paths, size, channels, interpolation),
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=functools.partial(collate_images, size=size, channels=channels),
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=generator,
    )


def iter_batches(
    loader: torch.utils.data.DataLoader, policy: BadImagePolicy, image_paths: list[Path]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images uint8, indices) per batch; bad files go to `policy`, batches left empty are skipped."""
    for images, indices, bad in loader:
        for index, reason in bad:
            policy.record(image_paths[index], reason)
        if images.shape[0] > 0:
            yield images, indices


def label_fraction_subset(labels: list[int], fraction: float, seed: int = 0) -> list[int]:
    """Indices of a seeded, class-balanced subset: each class keeps round(fraction * its size), at least one.

    For the 1 % and 10 % semi-supervised protocols. Every class is shuffled by one generator in class
    order, independently of `fraction`, so a smaller fraction's subset is contained in a larger one's
    (the 1 % images are among the 10 % images) and the same seed always picks the same files.
    """
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"label fraction must be in (0, 1], got {fraction}")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    generator = torch.Generator().manual_seed(seed)
    keep: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        count = min(len(members), max(1, round(fraction * len(members))))
        keep.extend(members[i] for i in order[:count])
    return sorted(keep)


def subset(images: ImageSet, indices: list[int]) -> ImageSet:
    """The images at `indices` (labels and class list kept, so label ids do not shift)."""
    return ImageSet(
        root=images.root,
        paths=[images.paths[i] for i in indices],
        labels=[images.labels[i] for i in indices] if images.labels is not None else None,
        classes=images.classes,
    )


def default_workers(setting: int | str) -> int:
    """Decoding processes: 'auto' leaves one core to the main process (decoding shares the cores with the
    model on small machines), at most 8."""
    if setting != "auto":
        return int(setting)
    return max(0, min(8, (os.cpu_count() or 1) - 1))
