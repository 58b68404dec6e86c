"""The decode cache: every image decoded once into a uint8 array on disk, memory-mapped by later runs.

Decoding JPEGs is the most expensive part of an SSL input pipeline; done once, every epoch after is
a memory copy. The cache is keyed by a hash of the file list with sizes and modification times and
the storage size, so a changed, added or removed file gives a new key and a rebuild. Unreadable
files are recorded in the cache's JSON and reported again, under the run's bad-image policy, on reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from sslcli import console, data
from sslcli.files import atomic_write_json

CACHE_VERSION = 1
_announced: set[Path] = set()  # arrays whose reuse was already reported


def default_cache_dir() -> Path:
    if os.environ.get("SSLCLI_CACHE_DIR"):
        return Path(os.environ["SSLCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslcli"


def array_bytes(count: int, size: int, channels: int = 3) -> int:
    return count * channels * size * size


def cache_key(paths: list[Path], size: int, channels: int = 3, interpolation: str = "bilinear") -> str:
    """sha256 of (path, bytes, mtime) for every file, the storage size, the channels, the resampling filter and
    the cache format version.

    The file list is the folder's images or a list file's lines, so editing the list or any file it names
    gives a new key. 3 channels and bilinear add nothing to the key: the caches written before data.channels
    and data.interpolation stay valid."""
    head = (f"sslcli-decode-cache v{CACHE_VERSION} size={size}" + (f" channels={channels}" if channels != 3 else "")
            + (f" interpolation={interpolation}" if interpolation != "bilinear" else ""))
    digest = hashlib.sha256(f"{head}\n".encode())
    for path in paths:
        try:
            st = os.stat(path)
            stamp = f"{st.st_size} {st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(os.fsencode(os.path.abspath(path)) + f" {stamp}\n".encode())
    return digest.hexdigest()[:32]


@dataclass
class DecodedImages:
    """Decoded images [N,C,S,S] uint8 (a read-only memory map) and which of them decoded."""

    array: np.ndarray
    good: np.ndarray  # bool [N]
    path: Path

    @property
    def good_indices(self) -> np.ndarray:
        return np.flatnonzero(self.good)


def fits(paths: list[Path], size: int, cache_dir: Path, max_bytes: float, channels: int = 3) -> bool:
    """Whether the array fits the size budget and the free space of the cache folder."""
    needed = array_bytes(len(paths), size, channels)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return needed <= max_bytes and needed < shutil.disk_usage(cache_dir).free * 0.9


def open_or_build(paths: list[Path], size: int, cache_dir: Path, policy: data.BadImagePolicy,
                  num_workers: int, channels: int = 3, interpolation: str = "bilinear") -> DecodedImages:
    """The cached array for these files at this size, decoding them first if no valid cache exists."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size, channels, interpolation)
    array_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    meta = _read_meta(meta_path, len(paths), size, channels, interpolation)
    expected = array_bytes(len(paths), size, channels)
    if meta is None or not array_path.is_file() or array_path.stat().st_size != expected:
        meta = _build(paths, size, array_path, meta_path, policy, num_workers, channels, interpolation)
    else:
        if array_path not in _announced:  # once per process: the online kNN reopens its splits every epoch
            _announced.add(array_path)
            console.info(f"decode cache: reusing {array_path}")
        for index, reason in meta["bad"]:
            policy.record(paths[index], reason)
    good = np.ones(len(paths), dtype=bool)
    good[[index for index, _ in meta["bad"]]] = False
    array = np.memmap(array_path, dtype=np.uint8, mode="r", shape=(len(paths), channels, size, size))
    return DecodedImages(array=array, good=good, path=array_path)


def _read_meta(meta_path: Path, count: int, size: int, channels: int = 3,
               interpolation: str = "bilinear") -> dict | None:
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("version") != CACHE_VERSION or meta.get("count") != count or meta.get("size") != size:
        return None
    if meta.get("channels", 3) != channels or meta.get("interpolation", "bilinear") != interpolation:
        return None
    return meta


def _build(paths: list[Path], size: int, array_path: Path, meta_path: Path, policy: data.BadImagePolicy,
           num_workers: int, channels: int = 3, interpolation: str = "bilinear") -> dict:
    filter_name = f" ({interpolation})" if interpolation != "bilinear" else ""
    console.info(f"decode cache: decoding {len(paths)} images at {size} px{filter_name} into {array_path} "
                 "(once; later runs reuse it)")
    remove_stale_builds(array_path)
    # The builder's PID in the name: a build killed outright (kill -9) leaves its file, which the next build
    # of the same images recognises as stale; a build that is still running is left alone.
    fd, tmp = tempfile.mkstemp(dir=array_path.parent, prefix=f".{array_path.name}.{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # a shared cache folder: others may reuse it read-only
    os.close(fd)
    bad: list[tuple[int, str]] = []
    try:
        array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(paths), channels, size, size))
        loader = data.make_loader(paths, size, 256, shuffle=False, drop_last=False, num_workers=num_workers, seed=0,
                                  channels=channels, interpolation=interpolation)
        progress = console.Progress(len(loader), "decoding", every=max(1, len(loader) // 10), unit="decoding batch")
        for step, (images, indices, failures) in enumerate(loader, start=1):
            array[indices.numpy()] = images.numpy()
            for index, reason in failures:
                policy.record(paths[index], reason)
                bad.append((index, reason))
            progress.update(step, {"images": min(step * 256, len(paths))})
        progress.close()
        array.flush()
        del array
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, array_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    meta = {"version": CACHE_VERSION, "count": len(paths), "size": size, "bad": bad,
            **({"channels": channels} if channels != 3 else {}),
            **({"interpolation": interpolation} if interpolation != "bilinear" else {})}
    atomic_write_json(meta_path, meta)  # written last: a cache is valid only once its JSON exists
    return meta


def remove_stale_builds(array_path: Path) -> None:
    """Delete the temporary arrays of earlier builds of this cache whose process is gone."""
    for tmp in array_path.parent.glob(f".{array_path.name}.*.tmp"):
        pid = tmp.name[len(array_path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            console.info(f"decode cache: removed {tmp.name}, left by a build that was killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch, a function of (seed, epoch) only, so any epoch can be replayed."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batches(images: DecodedImages, batch_size: int, seed: int, epoch: int, drop_last: bool = True, skip: int = 0,
            shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B,C,S,S], indices) for one shuffled epoch over the images that decoded, from batch `skip` on
    (a run resumed mid-epoch continues with exactly the batches it had not seen).

    shard=(rank, world): each global batch of batch_size images is cut into world equal slices and this
    rank gets slice `rank` (batch_size must divide by world)."""
    rank, world = shard
    indices = images.good_indices
    order = indices[epoch_order(len(indices), seed, epoch).numpy()]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    local = batch_size // world
    for start in range(skip * batch_size, stop, batch_size):
        # Sorted reads walk the memory map forwards; the order inside a batch does not matter.
        first = start + rank * local
        chosen = np.sort(order[first:min(first + local, stop)])
        yield torch.from_numpy(np.ascontiguousarray(images.array[chosen])), torch.from_numpy(chosen)


def in_order(images: DecodedImages, batch_size: int,
             indices: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 [B,C,S,S], indices) over the images that decoded (or the given ones), in file order
    (for feature extraction)."""
    indices = images.good_indices if indices is None else indices
    for start in range(0, len(indices), batch_size):
        chosen = indices[start:start + batch_size]
        yield torch.from_numpy(np.ascontiguousarray(images.array[chosen])), torch.from_numpy(chosen)


@dataclass(frozen=True)
class CachePolicy:
    """When images are decoded once into the cache: 'auto' when the array fits max_gb and the disk, 'on'
    always, 'off' never (decode on the fly). The one rule for pretrain, probe, embed and the online kNN."""

    mode: Literal["auto", "on", "off"] = "auto"
    folder: Path | None = None  # default: $SSLCLI_CACHE_DIR or ~/.cache/sslcli
    max_gb: float = 16.0

    def folder_for(self, paths: list[Path], size: int, channels: int = 3) -> Path | None:
        """The cache folder to use for these images at this storage size, or None to decode on the fly."""
        if self.mode == "off":
            return None
        folder = Path(self.folder) if self.folder else default_cache_dir()
        try:
            if self.mode == "on" or fits(paths, size, folder, self.max_gb * 2**30, channels):
                return folder
        except OSError as exc:
            console.warn(f"decode cache disabled: cannot use {folder} ({exc}); set data.cache_dir to a writable folder")
            return None
        console.info(f"decode cache off: {array_bytes(len(paths), size, channels) / 2**30:.1f} GB is over the "
                     f"{self.max_gb:g} GB limit (data.cache_max_gb)")
        return None

def steps_per_epoch(images: DecodedImages, batch_size: int) -> int:
    return int(images.good.sum()) // batch_size
