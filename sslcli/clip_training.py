"""Pretraining on video: DATA holds video files (or a temporal method reads folders of frames as clips). The
clips are decoded once into the frame cache (video_data.py); an image method trains on their frames as on
images, a temporal method on the frame tuples its sampler draws from each clip."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from sslcli import cache, console, data, distributed, video, video_data
from sslcli.errors import UsageError
from sslcli.methods import CONFIGS
from sslcli.spec import PretrainSpec
from sslcli.train import Batches
from sslcli.training_data import cache_policy, rank_batch_size


@dataclass(frozen=True)
class FrameSet(data.ImageSet):
    """The training set of a video run as the rest of pretraining sees it: `paths` are the clips (the run's
    fingerprint), its length the frames decoded from them plus the clips that were not (which the bad-input
    policy counts, so that trained images = len - skipped is the frame count)."""

    frame_count: int = 0
    clip_count: int = 0
    bad_clips: int = 0

    def __len__(self) -> int:
        return self.frame_count + self.bad_clips


def is_video_input(spec: PretrainSpec) -> bool:
    """A temporal method always reads clips; an image method does when DATA holds video files."""
    if spec.data.path is None:
        return False
    return CONFIGS[spec.method.name].frames_per_sample > 0 or video.holds_videos(data.split_folders(spec.data.path)[0])


def frame_cache_folder(spec: PretrainSpec) -> Path:
    policy = cache_policy(spec)
    if policy.mode == "off":
        raise UsageError("video input decodes its clips once into the frame cache: data.cache=off is not "
                         "available for video (use data.cache=auto or on, and data.cache_dir for its folder)")
    return Path(policy.folder) if policy.folder else cache.default_cache_dir()


def training_clips(spec: PretrainSpec, policy: data.BadImagePolicy,
                   with_indices: bool = False) -> tuple[FrameSet, Batches, int]:
    """The frames of DATA's clips, `batches(epoch, skip)` of frames (image methods) or of frame tuples (temporal
    methods), and the steps per epoch (the frames over the batch size: an epoch sees about as many anchors as
    there are frames)."""
    root = data.split_folders(spec.data.path)[0]
    clips = video.find_clips(root)
    size = data.storage_size_for(spec.data.image_size)
    with distributed.main_first():  # one process decodes; the others open what it wrote
        frames = video_data.open_or_build(clips.clips, size, spec.data.fps, frame_cache_folder(spec), policy,
                                          data.default_workers(spec.data.num_workers))
    bad = int((frames.index.lengths == 0).sum())
    images = FrameSet(root=root, paths=clips.paths, labels=None, classes=None, frame_count=frames.count,
                      clip_count=len(clips), bad_clips=bad)
    batch_size, seed = spec.train.batch_size, spec.train.seed
    rank_batch_size(batch_size)  # refuses a batch that does not split over the ranks
    part = (distributed.rank(), distributed.world_size())
    config = spec.method
    sampler = config.frame_sampler()
    steps = frames.count // batch_size
    console.info(f"video: {console.plural(frames.count, 'frame')} from {console.plural(len(clips) - bad, 'clip')}"
                 + (f" at {spec.data.fps:g} fps" if spec.data.fps else ""))
    if sampler is not None:
        if not sampler.usable(frames.index) and frames.count:
            raise UsageError(f"{config.name} needs clips of at least {sampler.min_frames} frames "
                             f"({sampler.needs}), but the {len(clips) - bad} readable clips under {root} give none at "
                             f"this rate: raise data.fps or lower the method's windows")

        def tuples(epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
            return (x for x, _ in video_data.tuple_batches(frames, sampler, batch_size, seed, epoch, steps, skip, part))

        batches: Batches = tuples
    else:
        def singles(epoch: int, skip: int = 0) -> Iterator:
            for x, i in cache.batches(frames.images, batch_size, seed, epoch, skip=skip, shard=part):
                yield (x, None, i) if with_indices else x

        batches = singles
    if steps == 0:
        raise UsageError(f"batch size {batch_size} is larger than the {frames.count} frames decoded from the clips "
                         f"under {root}; lower --batch-size or raise data.fps")
    return images, batches, steps
