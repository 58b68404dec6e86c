"""The frame cache: every clip's frames decoded once, at data.fps and the storage size, into one uint8 array on
disk (memory-mapped by later runs), with the frame index of each clip; and the batches drawn from it.

It is the decode cache's approach (cache.py) for video: keyed by a hash of the clip files (sizes and modification
times, every image of a frame folder), the storage size and the rate, written to a temporary file and renamed
into place, valid only once its JSON (each clip's first frame and frame count, the unreadable clips and why, each
frame's motion) is written. Image methods draw batches of single frames from it exactly as from decoded images
(cache.batches); temporal methods draw tuples of frames of one clip, chosen by the method's sampler.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sslcli import cache, console, data, video
from sslcli.files import atomic_write_json

FRAME_CACHE_VERSION = 1


@dataclass(frozen=True)
class ClipIndex:
    """Where each clip's frames are in the frame array: clip c is rows starts[c] .. starts[c] + lengths[c]
    (length 0: an unreadable clip). motion[i]: mean absolute difference of frame i and the one before it in its
    clip, on 0..255 (the first frame of a clip takes its successor's): the optical-flow proxy of samplers that
    prefer moving frames."""

    starts: np.ndarray  # int64 [C]
    lengths: np.ndarray  # int64 [C]
    motion: np.ndarray  # float32 [N]
    # int64 [C]: the sequence of each clip, clips in one folder sharing one (SEQUENCE/VIEW layouts: the views of
    # a moment, for multi-view TCN); None when not known
    groups: np.ndarray | None = None

    @property
    def clip_of(self) -> np.ndarray:
        """int64 [N]: the clip of each frame."""
        return np.repeat(np.arange(len(self.lengths)), self.lengths)


@dataclass
class DecodedFrames:
    """The frame array (as cache.DecodedImages, so image methods train on it unchanged) and its clip index."""

    images: cache.DecodedImages
    index: ClipIndex

    @property
    def count(self) -> int:
        return int(self.images.array.shape[0])


# A sampler picks, for a batch, K frames of one clip per sample: int64 [batch, K] rows of the frame array.
Sampler = Callable[[ClipIndex, int, np.random.Generator], np.ndarray]


def sequence_groups(clips: list[video.Clip]) -> np.ndarray:
    """int64 [C]: clips in the same folder share a group (a sequence's views: SEQUENCE/VIEW.mp4 or SEQUENCE/VIEW/)."""
    parents: dict[Path, int] = {}
    return np.asarray([parents.setdefault(c.path.parent, len(parents)) for c in clips], dtype=np.int64)


def cache_key(clips: list[video.Clip], size: int, fps: float | None) -> str:
    files = [f for clip in clips for f in (clip.frames if clip.is_folder else (clip.path,))]
    base = cache.cache_key(files, size)
    clip_names = "\n".join(os.fsdecode(os.path.abspath(c.path)) for c in clips)
    return hashlib.sha256(f"frames v{FRAME_CACHE_VERSION} fps={fps} {base}\n{clip_names}".encode()).hexdigest()[:32]


class _ClipDataset(torch.utils.data.Dataset):
    """Decoded clips by index; a bad clip gives (None, i, reason) instead of raising in a worker."""

    def __init__(self, clips: list[video.Clip], size: int, fps: float | None):
        self.clips, self.size, self.fps = clips, size, fps

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int, str | None]:
        try:
            return video.decode_clip(self.clips[i], self.size, self.fps), i, None
        except video.BadClipError as exc:
            return None, i, exc.reason


def _as_is(item):
    """The item as the dataset gave it (the default would turn the numpy frames into a tensor)."""
    return item


def motion_of(frames: np.ndarray) -> np.ndarray:
    """float32 [T]: mean |frame t - frame t-1| per frame of one clip; the first takes the second's value."""
    if len(frames) < 2:
        return np.zeros(len(frames), dtype=np.float32)
    diff = np.abs(frames[1:].astype(np.int16) - frames[:-1].astype(np.int16)).mean(axis=(1, 2, 3))
    return np.concatenate([diff[:1], diff]).astype(np.float32)


def open_or_build(clips: list[video.Clip], size: int, fps: float | None, cache_dir: Path,
                  policy: data.BadImagePolicy, num_workers: int) -> DecodedFrames:
    """The cached frames of these clips at this size and rate, decoding them first if no valid cache exists."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(clips, size, fps)
    array_path, meta_path = cache_dir / f"{key}.frames.u8", cache_dir / f"{key}.frames.json"
    meta = _read_meta(meta_path, len(clips), size)
    total = None if meta is None else int(sum(meta["lengths"]))
    if meta is None or not array_path.is_file() or array_path.stat().st_size != cache.array_bytes(total, size):
        meta = _build(clips, size, fps, array_path, meta_path, policy, num_workers)
        total = int(sum(meta["lengths"]))
    else:
        console.info(f"frame cache: reusing {array_path}")
        for i, reason in meta["bad"]:
            policy.record(clips[i].path, reason, what="video")
    lengths = np.asarray(meta["lengths"], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    index = ClipIndex(starts, lengths, np.asarray(meta["motion"], dtype=np.float32), sequence_groups(clips))
    array = (np.memmap(array_path, dtype=np.uint8, mode="r", shape=(total, 3, size, size)) if total
             else np.zeros((0, 3, size, size), dtype=np.uint8))  # a zero-length memmap is refused by numpy
    return DecodedFrames(cache.DecodedImages(array, np.ones(total, dtype=bool), array_path), index)


def _read_meta(meta_path: Path, count: int, size: int) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != FRAME_CACHE_VERSION or len(meta.get("lengths", ())) != count or meta.get("size") != size:
        return None
    return meta


def _build(clips: list[video.Clip], size: int, fps: float | None, array_path: Path, meta_path: Path,
           policy: data.BadImagePolicy, num_workers: int) -> dict:
    rate = "each clip's own rate" if fps is None else f"{fps:g} fps"
    console.info(f"frame cache: decoding {console.plural(len(clips), 'clip')} at {size} px and {rate} into "
                 f"{array_path} (once; later runs reuse it)")
    cache.remove_stale_builds(array_path)
    fd, tmp = tempfile.mkstemp(dir=array_path.parent, prefix=f".{array_path.name}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, 0o644)
    lengths, motion, bad = [0] * len(clips), [], []
    try:
        with os.fdopen(fd, "wb") as out:
            # One clip per item, in order: each clip's frames are appended as they come, so no clip's place
            # depends on the workers' timing.
            loader = torch.utils.data.DataLoader(_ClipDataset(clips, size, fps), batch_size=None,
                                                 num_workers=num_workers, collate_fn=_as_is,
                                                 # its own generator: iterating a loader draws a seed, which from
                                                 # the global RNG would change the model's initial weights
                                                 generator=torch.Generator().manual_seed(0))
            progress = console.Progress(len(clips), "decoding", every=max(1, len(clips) // 10), unit="clip")
            for step, (frames, i, reason) in enumerate(loader, start=1):
                if frames is None:
                    policy.record(clips[i].path, reason, what="video")
                    bad.append((i, reason))
                else:
                    out.write(np.ascontiguousarray(frames).tobytes())
                    lengths[i] = len(frames)
                    motion.extend(np.round(motion_of(frames), 3).tolist())
                progress.update(step, {"frames": sum(lengths)})
            progress.close()
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, array_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"version": FRAME_CACHE_VERSION, "size": size, "fps": fps, "lengths": lengths, "bad": bad,
            "motion": motion, "clips": [os.fsdecode(c.path) for c in clips]}
    atomic_write_json(meta_path, meta)  # written last: a cache is valid only once its JSON exists
    return meta


def tuple_batches(frames: DecodedFrames, sampler: Sampler, batch_size: int, seed: int, epoch: int,
                  steps: int, skip: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B,K,3,S,S], the rows [B,K]) for `steps` batches of one epoch, from batch `skip` on. Batch b's
    tuples are drawn from a generator seeded by (seed, epoch, b) alone, so a resumed run draws exactly the batches
    it had not trained on, and every rank draws the same global batch and takes its slice (shard=(rank, world))."""
    rank, world = shard
    local = batch_size // world
    for b in range(skip, steps):
        rows = sampler(frames.index, batch_size, np.random.default_rng([seed, epoch, b]))
        mine = rows[rank * local:(rank + 1) * local]
        flat = np.sort(np.unique(mine))  # one sorted read of the memory map, then the tuples from it
        block = frames.images.array[flat]
        picked = block[np.searchsorted(flat, mine)]
        yield torch.from_numpy(np.ascontiguousarray(picked)), torch.from_numpy(mine)
