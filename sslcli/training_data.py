"""The images pretraining trains on and its stream of batches: from the decode cache or decoded on the fly,
each rank's share under torchrun, in an order that depends only on (seed, epoch) so a resume continues it."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from sslcli import cache, data, distributed
from sslcli.errors import UsageError
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
    (images, their labels or None, their positions in `images` or None), the labels -1 for the unlabeled
    images; the images and their order are the same as without.

    Under torchrun each rank gets its share of every global batch: from the cache, a slice of the global
    batch a single process would draw (so the images of a step do not depend on the number of ranks);
    decoding on the fly, a DistributedSampler reseeded with set_epoch.
    """
    storage_size = data.storage_size_for(spec.data.image_size)
    workers = data.default_workers(spec.data.num_workers)
    batch_size, seed = spec.train.batch_size, spec.train.seed
    local_batch = rank_batch_size(batch_size)
    channels = spec.data.channels
    interpolation = spec.data.resize_filter()
    folder = cache_policy(spec).folder_for(images.paths, storage_size, channels)
    if folder is not None:
        with distributed.main_first():  # one process decodes; the others open what it wrote
            decoded = cache.open_or_build(images.paths, storage_size, folder, policy, workers, channels, interpolation)
        part = (distributed.rank(), distributed.world_size())

        def cached(epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
            return (_batch(x, i, labels, with_indices)
                    for x, i in cache.batches(decoded, batch_size, seed, epoch, skip=skip, shard=part))

        batches, steps = cached, cache.steps_per_epoch(decoded, batch_size)
    else:
        sampler = None
        if distributed.is_distributed():
            sampler = torch.utils.data.DistributedSampler(data.ImageDataset(images.paths, storage_size),
                                                          shuffle=True, seed=seed, drop_last=True)
        loader = data.make_loader(images.paths, storage_size, local_batch, shuffle=True, drop_last=True,
                                  num_workers=workers, seed=seed, pin_memory=device.type == "cuda", sampler=sampler,
                                  channels=channels, interpolation=interpolation)

        def streamed(epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
            if sampler is not None:
                sampler.set_epoch(epoch)
            else:
                loader.generator.manual_seed(seed * 1_000_003 + epoch)  # each epoch's order depends on (seed, epoch)
            # Resuming mid-epoch decodes and drops the batches already trained on, to reach the same order.
            return itertools.islice((_batch(x, i, labels, with_indices) for x, i in data.iter_batches(loader, policy, images.paths)),
                                    skip, None)

        batches, steps = streamed, len(loader)
    if steps == 0:
        if policy.count:  # the decode cache met the unreadable ones: say so, not that the batch is too large
            raise UsageError(f"only {len(images) - policy.count} of the {len(images)} images found could be read "
                             f"({policy.count} unreadable: not images, or broken links), fewer than one batch of "
                             f"{batch_size}; check the files under {images.root} or lower --batch-size")
        raise UsageError(f"batch size {batch_size} is larger than the {len(images)} images found; lower --batch-size")
    return batches, steps


def _batch(x: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor | None, with_indices: bool):
    """The batch as the loop takes it: the images alone, or (images, labels, indices) with None for what
    the run does not use."""
    if labels is None and not with_indices:
        return x
    return x, None if labels is None else labels[indices], indices if with_indices else None
