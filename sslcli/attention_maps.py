"""The last block's CLS attention of a ViT encoder on a few eval images: what report/attention.png draws (the
DINO paper's figure 1, one map per head and their mean).

timm's AttentionExtract hooks the last block's attention dropout, whose output is the softmaxed attention
matrix; timm computes that matrix only on its unfused path, so the block runs unfused for this one pass.
This module computes the maps; report.py draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sslcli import data
from sslcli.encoders import EncoderInfo
from sslcli.features import eval_view

DEFAULT_IMAGES = 6


@dataclass
class AttentionMaps:
    images: Tensor  # uint8 [N, C, S, S]: the eval crops the encoder saw
    maps: Tensor  # [N, heads, grid, grid] float: the class token's attention to each patch (its
    # softmax row without the part that goes to the class token itself, as the DINO paper draws it)
    titles: list[str]  # one per image (its class, or its file name)
    patch_size: int


def cls_attention(encoder: nn.Module, x: Tensor) -> Tensor:
    """[N, heads, grid_h, grid_w]: the last block's attention of the class token to every patch token (the mean
    over the query tokens for a ViT without a class token), for normalised inputs x [N, C, H, W]."""
    from timm.utils import AttentionExtract

    last = len(encoder.blocks) - 1
    attention = encoder.blocks[last].attn
    fused, extractor = attention.fused_attn, None
    attention.fused_attn = False  # the attention matrix exists only on the unfused path
    try:
        extractor = AttentionExtract(encoder, names=[f"blocks.{last}.attn.attn_drop"], method="hook")
        with torch.no_grad():
            probs = next(iter(extractor(x).values())).float()  # [N, heads, tokens, tokens]
    finally:
        attention.fused_attn = fused
        for handle in getattr(getattr(extractor, "hooks", None), "_handles", []):
            handle.remove()  # the encoder goes on as it was
    prefix = encoder.num_prefix_tokens
    if getattr(encoder, "cls_token", None) is not None:
        rows = probs[:, :, 0, prefix:]
    else:
        rows = probs[:, :, prefix:, prefix:].mean(2)
    patch = encoder.patch_embed.patch_size
    return rows.reshape(x.shape[0], probs.shape[1], x.shape[-2] // patch[0], x.shape[-1] // patch[1])


def pick_images(paths: list[Path], labels: list[int] | None, count: int = DEFAULT_IMAGES) -> list[int]:
    """Up to `count` positions: the first image of each class in turn when labelled (so the rows differ), else
    images spread evenly over the list."""
    if not paths:
        return []
    if labels is None:
        step = max(1, len(paths) // count)
        return list(range(0, len(paths), step))[:count]
    first: dict[int, int] = {}
    for i, label in enumerate(labels):
        first.setdefault(label, i)
    picked = sorted(first.values())[:count]
    taken = set(picked)
    return picked + [i for i in range(len(paths)) if i not in taken][:max(0, count - len(picked))]


def compute(encoder: nn.Module, info: EncoderInfo, images: data.ImageSet, device: torch.device,
            count: int = DEFAULT_IMAGES) -> AttentionMaps:
    """The CLS attention maps of `count` of `images`, decoded and centre-cropped as every eval pass does."""
    storage = data.storage_size_for(info.image_size)
    crops, titles = [], []
    for i in pick_images(images.paths, images.labels, count * 2):
        if len(crops) == count:
            break
        try:
            decoded = data.decode_image(images.paths[i], storage, info.channels)
        except data.BadImageError:
            continue  # an unreadable file is left out of the figure, as every eval pass skips it
        offset = (storage - info.image_size) // 2
        crops.append(decoded[:, offset:offset + info.image_size, offset:offset + info.image_size])
        titles.append(images.classes[images.labels[i]] if images.labels is not None and images.classes
                      else images.paths[i].name)
    if not crops:
        raise ValueError("no readable image to draw attention maps on")
    batch = torch.stack(crops)
    encoder = encoder.to(device).eval()
    x = eval_view(batch.to(device), info)
    maps = cls_attention(encoder, x).cpu()
    return AttentionMaps(images=batch, maps=maps, titles=titles, patch_size=int(encoder.patch_embed.patch_size[0]))
