"""Video on disk -> frames: finding clips (video files or folders of frame images), decoding a clip's frames at
a chosen rate into uint8 arrays at the storage size, and why a clip is unreadable.

A clip is a video file (whatever PyAV, i.e. FFmpeg, decodes: mp4, mkv, webm, avi, mov) or a folder whose files
are the frames in name order (`clip/000001.jpg ...`). Decoding uses PyAV, the `video` extra, imported only when
a clip is decoded. Torch-free, so that `--dry-run` can size a video folder without importing torch.
"""

from __future__ import annotations

import os
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sslcli.errors import UsageError
from sslcli.sizing import EXTENSIONS as IMAGE_EXTENSIONS
from sslcli.sizing import is_special_file, size_for

VIDEO_EXTENSIONS: frozenset[str] = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})
_INSTALL = "video input needs PyAV: pip install 'sslcli[video]'"

# The first bytes of the containers sslcli names by extension: a file that starts like one but cannot be opened
# was cut short (an mp4 whose index, the moov box at its end, is missing), not a file of another kind.
_MAGIC = ((4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"RIFF"), (0, b"\x00\x00\x01\xba"))


@dataclass(frozen=True)
class Clip:
    """One clip: a video file, or a folder of frame images (`frames` in name order)."""

    path: Path
    frames: tuple[Path, ...] = ()  # a frame folder's images; empty for a video file

    @property
    def is_folder(self) -> bool:
        return self.path.is_dir()


@dataclass(frozen=True)
class ClipSet:
    """The clips under one DATA folder, with labels when they sit in class folders (CLASS/clip.mp4)."""

    root: Path
    clips: list[Clip]
    labels: list[int] | None
    classes: list[str] | None

    @property
    def paths(self) -> list[Path]:
        return [clip.path for clip in self.clips]

    def __len__(self) -> int:
        return len(self.clips)


class BadClipError(Exception):
    """A clip that cannot be decoded into frames."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _frame_images(folder: Path, names: list[str]) -> tuple[Path, ...]:
    return tuple(Path(folder, n) for n in sorted(names)
                 if _visible(n) and os.path.splitext(n)[1].lower() in IMAGE_EXTENSIONS)


def holds_videos(root: Path | str) -> bool:
    """Whether any video file (by extension) sits under root: DATA is then read as clips."""
    for _, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        if any(_visible(f) and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS for f in filenames):
            return True
    return False


def find_clips(root: Path | str, name: str = "DATA") -> ClipSet:
    """Clips under root: every video file, and every folder that holds frame images and no sub-folder (a frame
    folder, even an empty one: it is reported as a clip without frames). A clip directly in root makes the whole
    folder unlabeled; otherwise each top-level sub-folder is a class (CLASS/clip.mp4, CLASS/clip/000001.jpg)."""
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"data folder {root} does not exist or is not a folder: check the path given as {name}")
    clips: list[Clip] = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or one folder reached twice
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        folder = Path(dirpath)
        clips.extend(Clip(folder / f) for f in sorted(filenames) if _visible(f)
                     and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS and not is_special_file(folder / f))
        frames = _frame_images(folder, filenames)
        if folder != root and not dirnames and (frames or not any(_visible(f) for f in filenames)):
            clips.append(Clip(folder, frames))
    if not clips:
        looked = ", ".join(sorted(VIDEO_EXTENSIONS))
        raise UsageError(f"no clips found in {root} (looked for video files: {looked}; and folders of frame "
                         f"images): point {name} at a folder of videos")
    rel = sorted((clip.path.relative_to(root).parts, clip) for clip in clips)
    clips = [clip for _, clip in rel]
    if any(len(parts) == 1 for parts, _ in rel):
        return ClipSet(root, clips, None, None)
    classes = sorted({parts[0] for parts, _ in rel})
    index = {c: i for i, c in enumerate(classes)}
    return ClipSet(root, clips, [index[parts[0]] for parts, _ in rel], classes)


def _av():
    try:
        import av
    except ImportError:
        raise UsageError(_INSTALL) from None
    av.logging.set_level(av.logging.PANIC)  # FFmpeg's own log lines would bypass --quiet; the reasons say it
    return av


def _open_reason(path: Path) -> str:
    """Why a file that FFmpeg would not open is bad, in the user's words."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as f:
            head = f.read(16)
    except PermissionError:
        return "permission denied"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if any(head[at:at + len(magic)] == magic for at, magic in _MAGIC):
        return "truncated or corrupt video: its container starts as a video but its index or data is cut short"
    return "not a video, or a format PyAV (FFmpeg) cannot read"


def _frame_array(img: Image.Image, size: int) -> np.ndarray:
    """As data.decode_image does for images: shorter side to `size`, centre crop; uint8 [3, size, size]."""
    from sslcli.data import resize_center_crop  # data imports torch; the clip listing here stays light

    out = np.asarray(resize_center_crop(img, size).convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


class _RateSampler:
    """Keeps the frames that sample a stream at `fps`: the first frame at or after each tick 0, 1/fps, 2/fps, ...
    from the first frame's time (every frame with fps None, or when fps is at least the clip's own rate)."""

    def __init__(self, fps: float | None):
        self.step = None if fps is None else 1.0 / fps
        self.tick: float | None = None

    def keep(self, t: float) -> bool:
        if self.step is None:
            return True
        if self.tick is None:
            self.tick = t
        if t + 1e-6 < self.tick:
            return False
        while self.tick <= t + 1e-6:  # past a gap longer than a tick (variable-rate streams) in one go
            self.tick += self.step
        return True


def decode_video(path: Path, size: int, fps: float | None) -> np.ndarray:
    """A video file's frames at `fps` (None: every frame), each resized and centre-cropped: uint8 [T,3,S,S]."""
    av = _av()
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise BadClipError(path, _open_reason(path)) from exc
    with container:
        if not container.streams.video:
            raise BadClipError(path, "no video stream (an audio-only or data file)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected = stream.frames  # from the container's index; 0 when it does not say
        rate = float(stream.average_rate or 25)
        sampler, kept, decoded, shape = _RateSampler(fps), [], 0, None
        try:
            for frame in container.decode(stream):
                if shape is None:
                    shape = (frame.width, frame.height)
                elif (frame.width, frame.height) != shape:
                    raise BadClipError(path, f"frames of different sizes ({shape[0]}x{shape[1]} then "
                                       f"{frame.width}x{frame.height}) in one stream")
                t = float(frame.time) if frame.time is not None else decoded / rate
                decoded += 1
                if sampler.keep(t):  # converted at once: a decoded frame at full size is megabytes
                    kept.append(_frame_array(frame.to_image(), size))
        except av.error.FFmpegError as exc:
            raise BadClipError(path, f"truncated or corrupt video: decoding stopped after {decoded} frames "
                               f"({exc.strerror or exc})") from exc
    if not decoded:
        raise BadClipError(path, "a clip with zero frames")
    if expected and decoded < expected * 0.9:  # FFmpeg drops a broken tail silently; the index still counts it
        raise BadClipError(path, f"truncated video: {decoded} of the {expected} frames its index lists decoded")
    return np.stack(kept)


def decode_frame_folder(clip: Clip, size: int) -> np.ndarray:
    """A frame folder's images in name order, every one (a folder has no timestamps), all of one size."""
    if not clip.frames:
        raise BadClipError(clip.path, "a frame folder with zero frames (no image files in it)")
    out, shape = [], None
    for path in clip.frames:
        try:
            with Image.open(path) as img:
                img.load()
                if shape is None:
                    shape = img.size
                elif img.size != shape:
                    raise BadClipError(clip.path, f"frames of different sizes ({shape[0]}x{shape[1]} in "
                                       f"{clip.frames[0].name}, {img.size[0]}x{img.size[1]} in {path.name})")
                out.append(_frame_array(img, size))
        except BadClipError:
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on a bad file; all mean unreadable
            raise BadClipError(clip.path, f"frame {path.name} is not a readable image ({type(exc).__name__})") from exc
    return np.stack(out)


def decode_clip(clip: Clip, size: int, fps: float | None) -> np.ndarray:
    """uint8 [T,3,size,size] of a clip; raises BadClipError with the reason when it cannot be read."""
    return decode_frame_folder(clip, size) if clip.is_folder else decode_video(clip.path, size, fps)


def frame_shorter_side(clip: Clip) -> int | None:
    """The shorter side of a clip's frames, from its header (None when it cannot be read)."""
    try:
        if clip.is_folder:
            with Image.open(clip.frames[0]) as img:
                return min(img.size)
        av = _av()
        with av.open(str(clip.path)) as container:
            stream = container.streams.video[0]
            return min(stream.codec_context.width, stream.codec_context.height) or None
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - an unreadable clip says nothing about the size; decoding reports it
        return None


def auto_frame_size(root: Path | str, seed: int = 0, sample: int = 16) -> tuple[int, float, int] | None:
    """data.image_size=auto for a video folder: (size, median shorter side, clips measured), as sizing does for
    images; None when no clip could be measured."""
    try:
        clips = find_clips(root).clips
    except UsageError:
        return None
    sides = [s for clip in random.Random(seed).sample(clips, min(sample, len(clips)))
             if (s := frame_shorter_side(clip)) is not None]
    if not sides:
        return None
    median = statistics.median(sides)
    return size_for(median), median, len(sides)
