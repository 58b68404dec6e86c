"""Frozen features of clips, for probe and embed on video folders (CLASS/clip.mp4): a clip's feature is the mean
of its frames' features, each frame seen as `features.eval_view` shows an image (the centre crop at the encoder's
size), the frames read from the frame cache (video_data.py) at the rate the encoder was trained with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sslcli import cache, console, data, video, video_data
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError
from sslcli.features import eval_view
from sslcli.splits import eval_splits


def training_fps(meta: dict[str, Any]) -> float | None:
    """The data.fps the encoder was pretrained with (its metadata's spec), so that probe and embed see clips at the
    rate it learned from; None (every frame) when it was not trained on video at a set rate."""
    try:
        fps = json.loads(meta.get("spec") or "{}").get("data", {}).get("fps")
    except (ValueError, AttributeError):
        return None
    return float(fps) if isinstance(fps, (int, float)) and fps > 0 else None


def is_video_folder(folder: Path | str) -> bool:
    return Path(folder).is_dir() and video.holds_videos(folder)


def labeled_clips(folder: Path, role: str, option: str = "--data") -> video.ClipSet:
    clips = video.find_clips(folder, name=option)
    if clips.labels is None:
        raise UsageError(f"the {role} folder {folder} is not labeled: probe needs one sub-folder per class "
                         "(CLASS/clip.mp4)")
    return clips


def subset(clips: video.ClipSet, indices: list[int]) -> video.ClipSet:
    return video.ClipSet(clips.root, [clips.clips[i] for i in indices],
                         [clips.labels[i] for i in indices] if clips.labels is not None else None, clips.classes)


def labeled_clip_splits(train: Path, val: Path | None, label_fraction: float | None,
                        seed: int) -> tuple[video.ClipSet, video.ClipSet, torch.Tensor]:
    """splits.labeled_splits for clips: the train split's clips (optionally a class-balanced fraction), the eval
    split's, and the eval labels in the train split's class indices."""
    train_dir, val_dir = eval_splits(train, val)
    train_set = labeled_clips(train_dir, "train")
    val_set = labeled_clips(val_dir, "eval", "--val" if val is not None else "--data")
    if label_fraction is not None:
        train_set = subset(train_set, data.label_fraction_subset(train_set.labels, label_fraction, seed))
    index = {name: i for i, name in enumerate(train_set.classes or [])}
    unknown = sorted(set(val_set.classes or []) - set(index))
    if unknown:
        raise UsageError(f"eval classes not in the train split: {', '.join(unknown[:5])}; "
                         "both folders need the same class sub-folders")
    return train_set, val_set, torch.tensor([index[val_set.classes[label]] for label in val_set.labels])


@torch.no_grad()
def extract_clip_features(model: nn.Module, info: EncoderInfo, clips: list[video.Clip], *, fps: float | None,
                          batch_size: int, num_workers: int, device: torch.device, policy: data.BadImagePolicy,
                          caching: cache.CachePolicy = cache.CachePolicy(),
                          show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(the mean frame feature of every readable clip [C', D], the indices of those clips), in clip order."""
    folder = Path(caching.folder) if caching.folder else cache.default_cache_dir()
    frames = video_data.open_or_build(clips, data.storage_size_for(info.image_size), fps, folder, policy, num_workers)
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    total = -(-frames.count // batch_size)
    progress = console.Progress(total, f"features {info.name}", every=10, unit="feature batch", visible=show_progress)
    sums = torch.zeros(len(clips), info.feature_dim)
    clip_of = torch.from_numpy(frames.index.clip_of)
    try:
        for batch, (x, rows) in enumerate(cache.in_order(frames.images, batch_size), start=1):
            with autocast:
                f = model(eval_view(x.to(device, non_blocking=True), info)).float().cpu()
            sums.index_add_(0, clip_of[rows], f)
            progress.update(batch, {"frames": int(min(batch * batch_size, frames.count))})
    finally:
        progress.close()
    counts = torch.from_numpy(frames.index.lengths)
    kept = torch.nonzero(counts > 0).flatten()
    if not len(kept):
        raise UsageError("no readable clips to extract features from")
    return sums[kept] / counts[kept, None].to(sums.dtype), kept
