"""The images pretraining trains on and its stream of batches: from the decode cache or decoded on the fly,
each rank's share under torchrun, in an order that depends only on (seed, epoch) so a resume continues it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from sslcli import cache, data, distributed
from sslcli.errors import RunError, UsageError
from sslcli.spec import PretrainSpec
from sslcli.train import Batches


def training_images(spec: PretrainSpec) -> data.ImageSet:
    """The images to train on: DATA (a folder or a list file), or DATA/train when DATA holds splits; optionally
    a seeded subset."""
    if spec.data.path is None:
        raise UsageError("no DATA folder given: sslcli pretrain DATA ...")
    train_dir, _ = data.split_folders(spec.data.path)
    images = data.find_images(train_dir)
    limit = spec.data.max_images
    if limit is not None and limit < len(images):
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(spec.train.seed))[:limit]
        images = data.subset(images, sorted(order.tolist()))
    return images


def semi_supervised_labels(spec: PretrainSpec, images: data.ImageSet) -> torch.Tensor | None:
    """data.label_fraction (S4L): int64 [images], the class of each image of a seeded class-balanced subset
    (data.label_fraction_subset, seeded by train.seed) and -1 for the others; None without a fraction."""
    fraction = spec.data.label_fraction
    if fraction is None:
        return None
    if images.labels is None:
        raise UsageError(f"--label-fraction needs labeled DATA (one sub-folder per class), but the images under "
                         f"{images.root} are unlabeled")
    labels = torch.full((len(images),), -1, dtype=torch.int64)
    kept = data.label_fraction_subset(images.labels, fraction, seed=spec.train.seed)
    labels[kept] = torch.tensor([images.labels[i] for i in kept], dtype=torch.int64)
    return labels


def cache_policy(spec: PretrainSpec) -> cache.CachePolicy:
    return cache.CachePolicy(spec.data.cache, spec.data.cache_dir, spec.data.cache_max_gb)


def rank_batch_size(global_batch: int) -> int:
    """train.batch_size is the global batch: under torchrun each rank takes an equal share of it."""
    world = distributed.world_size()
    if global_batch % world:
        raise UsageError(f"batch size {global_batch} does not split evenly over {world} processes; "
                         f"use a multiple of {world} (train.batch_size is the global batch)")
    return global_batch // world


def training_batches(spec: PretrainSpec, images: data.ImageSet, policy: data.BadImagePolicy,
                     device: torch.device, labels: torch.Tensor | None = None,
                     with_indices: bool = False) -> tuple[Batches, int]:
    """`batches(epoch, skip)` of uint8 images and the number of steps per epoch, from the cache or the files.

    With `labels` (semi_supervised_labels) or `with_indices` (a method with a memory bank) each batch is
    (images, their labels or None, their positions in `images` or None). With `labels` every step's batch is
    S4L's two minibatches in one: train.batch_size images of the whole set, their labels -1 (the unlabeled
    minibatch, whose images and order are the same as without labels), then train.labeled_batch_size images
    of the labeled subset with their classes (labeled_stream), so the supervised term sees as many labeled
    images a step as the paper's, whatever the fraction.

    Under torchrun each rank gets its share of every global batch: from the cache, a slice of the global
    batch a single process would draw (so the images of a step do not depend on the number of ranks);
    decoding on the fly, a DistributedSampler reseeded with set_epoch.
    """
    storage_size = data.storage_size_for(spec.data.image_size)
    workers = data.default_workers(spec.data.num_workers)
    batch_size, seed = spec.train.batch_size, spec.train.seed
    rank_batch_size(batch_size)  # refuses a batch that does not split over the ranks, before any decoding
    folder = cache_policy(spec).folder_for(images.paths, storage_size, spec.data.channels)
    decoded = None
    if folder is not None:
        with distributed.main_first():  # one process decodes; the others open what it wrote
            decoded = cache.open_or_build(images.paths, storage_size, folder, policy, workers, spec.data.channels,
                                           spec.data.resize_filter())
        pairs, steps = _cached_pairs(decoded, batch_size, seed), cache.steps_per_epoch(decoded, batch_size)
    else:
        pairs, steps = _streamed_pairs(spec, images.paths, batch_size, policy, device)
    if steps == 0:
        if policy.count:  # the decode cache met the unreadable ones: say so, not that the batch is too large
            raise UsageError(f"only {len(images) - policy.count} of the {len(images)} images found could be read "
                             f"({policy.count} unreadable: not images, or broken links), fewer than one batch of "
                             f"{batch_size}; check the files under {images.root} or lower --batch-size")
        raise UsageError(f"batch size {batch_size} is larger than the {len(images)} images found; lower --batch-size")
    if labels is not None:
        labeled, labeled_steps = labeled_stream(spec, images, labels, policy, device, decoded)
        return _with_labeled(pairs, steps, labeled, labeled_steps, labels, with_indices), steps

    def batches(epoch: int, skip: int = 0) -> Iterator:
        return (_batch(x, i, with_indices) for x, i in pairs(epoch, skip))

    return batches, steps


def labeled_batch_size(spec: PretrainSpec) -> int:
    """S4L's labeled minibatch: train.labeled_batch_size, by default the paper's, as large as the unlabeled one."""
    return spec.train.labeled_batch_size or spec.train.batch_size


def labeled_stream(spec: PretrainSpec, images: data.ImageSet, labels: torch.Tensor, policy: data.BadImagePolicy,
                   device: torch.device, decoded: cache.DecodedImages | None = None) -> tuple[Batches, int]:
    """`pairs(epoch, skip)` of (uint8 images, their positions in `images`) over the labeled images only
    (labels >= 0), labeled_batch_size(spec) a batch, and that stream's steps per epoch; from `decoded` (the
    run's decode cache, nothing decoded twice) or the files."""
    size = labeled_batch_size(spec)
    positions = torch.nonzero(labels >= 0).flatten()
    if len(positions) < size:
        raise UsageError(f"--label-fraction {spec.data.label_fraction:g} keeps {len(positions)} labeled images, "
                         f"fewer than one labeled batch of {size} (train.labeled_batch_size, by default the batch "
                         "size); raise the fraction or lower train.labeled_batch_size")
    rank_batch_size(size)
    if decoded is not None:
        keep = np.zeros_like(decoded.good)
        keep[positions.numpy()] = True
        subset = cache.DecodedImages(decoded.array, decoded.good & keep, decoded.path)
        if cache.steps_per_epoch(subset, size) == 0:
            raise UsageError(f"only {int(subset.good.sum())} of the {len(positions)} labeled images could be read, "
                             f"fewer than one labeled batch of {size}; lower train.labeled_batch_size")
        return _cached_pairs(subset, size, spec.train.seed), cache.steps_per_epoch(subset, size)
    paths = [images.paths[i] for i in positions.tolist()]
    streamed, steps = _streamed_pairs(spec, paths, size, policy, device)

    def pairs(epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((x, positions[i]) for x, i in streamed(epoch, skip))

    return pairs, steps


def _cached_pairs(decoded: cache.DecodedImages, batch_size: int, seed: int) -> Batches:
    part = (distributed.rank(), distributed.world_size())

    def pairs(epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return cache.batches(decoded, batch_size, seed, epoch, skip=skip, shard=part)

    return pairs


def _streamed_pairs(spec: PretrainSpec, paths: list, batch_size: int, policy: data.BadImagePolicy,
                    device: torch.device) -> tuple[Batches, int]:
    """(images, positions in `paths`) decoded on the fly, in an order that depends only on (seed, epoch)."""
    storage_size, seed = data.storage_size_for(spec.data.image_size), spec.train.seed
    sampler = None
    if distributed.is_distributed():
        sampler = torch.utils.data.DistributedSampler(data.ImageDataset(paths, storage_size),
                                                      shuffle=True, seed=seed, drop_last=True)
    loader = data.make_loader(paths, storage_size, rank_batch_size(batch_size), shuffle=True, drop_last=True,
                              num_workers=data.default_workers(spec.data.num_workers), seed=seed,
                              pin_memory=device.type == "cuda", sampler=sampler, channels=spec.data.channels,
                              interpolation=spec.data.resize_filter())

    def pairs(epoch: int, skip: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if sampler is not None:
            sampler.set_epoch(epoch)
        else:
            loader.generator.manual_seed(seed * 1_000_003 + epoch)  # each epoch's order depends on (seed, epoch)
        # Resuming mid-epoch decodes and drops the batches already trained on, to reach the same order.
        return itertools.islice(data.iter_batches(loader, policy, paths), skip, None)

    return pairs, len(loader)


def _with_labeled(pairs: Batches, steps: int, labeled: Batches, labeled_steps: int, labels: torch.Tensor,
                  with_indices: bool) -> Batches:
    """Each unlabeled batch followed by the labeled batch of the same global step: the labeled stream runs
    its own epochs, its position a function of the step alone, so a resumed run draws the same images."""
    def batches(epoch: int, skip: int = 0) -> Iterator:
        stream = _labeled_from(labeled, labeled_steps, epoch * steps + skip)
        for x, i in pairs(epoch, skip):
            xl, il = next(stream)
            unlabeled = torch.full((x.shape[0],), -1, dtype=torch.int64)
            yield (torch.cat([x, xl]), torch.cat([unlabeled, labels[il]]),
                   torch.cat([i, il]) if with_indices else None)

    return batches


def _labeled_from(labeled: Batches, labeled_steps: int, step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The labeled batches from global step `step` on, epoch after epoch of the labeled stream."""
    epoch, skip = divmod(step, labeled_steps)
    while True:
        count = 0
        for pair in labeled(epoch, skip):
            count += 1
            yield pair
        if count == 0 and skip == 0:
            raise RunError("none of the labeled images could be read: S4L's labeled batches ran dry")
        epoch, skip = epoch + 1, 0


def _batch(x: torch.Tensor, indices: torch.Tensor, with_indices: bool):
    """The batch as the loop takes it without labels: the images alone, or (images, None, indices)."""
    return (x, None, indices) if with_indices else x
