"""Frozen features: the eval view of a uint8 batch and an encoder's features of a list of images.

The same decode, centre crop and normalisation for probe, embed, the online kNN and fine-tuning's
evaluation, so every score and every embedding sees the geometry the encoder saw in training.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from sslcli import cache, console, data, distributed
from sslcli.encoders import EncoderInfo
from sslcli.errors import UsageError


def eval_view(x: torch.Tensor, info: EncoderInfo) -> torch.Tensor:
    """uint8 images decoded at the storage size -> the centre crop at the encoder's input size, normalised."""
    offset = (x.shape[-1] - info.image_size) // 2
    x = x[:, :, offset:offset + info.image_size, offset:offset + info.image_size]
    mean = torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255 - mean) / std


def _eval_batches(paths: list[Path], storage: int, batch_size: int, num_workers: int, device: torch.device,
                  policy: data.BadImagePolicy,
                  caching: cache.CachePolicy, channels: int = 3,
                  interpolation: str = "bilinear") -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """(uint8 batches with their indices, in file order; the number of batches): from the decode cache when
    the policy allows, so a second probe of the same folder decodes nothing, else decoded on the fly.

    Under torchrun each rank reads its contiguous share of the images (indices stay global)."""
    folder = caching.folder_for(paths, storage, channels)
    if folder is not None:
        with distributed.main_first():  # one process decodes; the others open what it wrote
            decoded = cache.open_or_build(paths, storage, folder, policy, num_workers, channels, interpolation)
        part = distributed.shard(len(decoded.good_indices))
        mine = decoded.good_indices[part.start:part.stop]
        return cache.in_order(decoded, batch_size, mine), -(-len(mine) // batch_size)
    part = distributed.shard(len(paths))
    shard_paths = paths[part.start:part.stop]
    loader = data.make_loader(shard_paths, storage, batch_size, shuffle=False, drop_last=False,
                              num_workers=num_workers, seed=0, pin_memory=device.type == "cuda", channels=channels,
                              interpolation=interpolation)
    batches = ((x, idx + part.start) for x, idx in data.iter_batches(loader, policy, shard_paths))
    return batches, len(loader)


@torch.no_grad()
def extract_features(model: nn.Module, info: EncoderInfo, paths: list[Path], *, batch_size: int, num_workers: int,
                     device: torch.device, policy: data.BadImagePolicy,
                     caching: cache.CachePolicy = cache.CachePolicy(),
                     show_progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every readable image with deterministic eval preprocessing; returns (features, kept indices).

    Images are decoded at the training storage size and centre-cropped to the encoder's input size,
    the same geometry the encoder saw in training.
    """
    batches, total = _eval_batches(paths, data.storage_size_for(info.image_size), batch_size, num_workers, device,
                                   policy, caching, info.channels, info.interpolation)
    model.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    features, kept = [], []
    progress = console.Progress(total, f"features {info.name}", every=10, unit="feature batch",
                                visible=show_progress)
    try:
        for batch, (x, idx) in enumerate(batches, start=1):
            x = eval_view(x.to(device, non_blocking=True), info)
            with autocast:
                features.append(model(x).float().cpu())
            kept.append(idx)
            progress.update(batch, {"images": int(sum(len(k) for k in kept))})
    finally:
        progress.close()
    features_t = torch.cat(features) if features else torch.zeros(0, info.feature_dim)
    kept_t = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    # Under torchrun every rank extracted its share: put the whole split together, in file order.
    features_t, kept_t = distributed.gather_uneven(features_t), distributed.gather_uneven(kept_t)
    if not len(kept_t):
        raise UsageError("no readable images to extract features from")
    return features_t, kept_t
