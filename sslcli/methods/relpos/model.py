"""Relative position: Unsupervised Visual Representation Learning by Context Prediction.

Doersch, Gupta, Efros 2015, https://arxiv.org/abs/1505.05192
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.pretext import (
    classification_loss,
    crop_patches,
    drop_colors,
    patch_side,
    resample_patches,
    resampling_table,
    size_multiple,
)
from sslcli.methods.relpos.config import RelPosConfig

GRID = 3
# The 8 neighbours of the centre cell as (row, column) offsets, in the row-major order of the paper's
# figure 2: label k is the position of the second patch relative to the first.
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def pair_positions(image_size: int, patch: int, neighbour: Tensor, jitter: Tensor) -> tuple[Tensor, Tensor]:
    """Top-left corners [B,2] (rows, columns) of the centre patch (index 0) and of neighbour `neighbour` [B]
    (index 1) on a 3x3 grid of pitch image_size // 3, each patch centred in its cell, shifted by
    jitter [B,2,2] (dy, dx) and kept inside the image."""
    pitch = image_size // GRID
    offsets = torch.tensor(NEIGHBOURS, device=neighbour.device)[neighbour]  # [B,2]
    cells = torch.stack([torch.ones_like(offsets), 1 + offsets], dim=1)  # [B,2 patches,(row, col)]
    corner = cells * pitch + (pitch - patch) // 2 + jitter
    corner = corner.clamp(0, image_size - patch)
    return corner[..., 0], corner[..., 1]


class RelPos(MethodDefaults, nn.Module):
    """A centre patch and one of its 8 neighbours (gap and jitter between them), each through the shared
    encoder and a shared per-patch layer (the paper's fc6); the two outputs concatenated go through an MLP
    (fc7) to the 8-way neighbour index (fc8), trained with cross-entropy.

    Trivial shortcuts closed as in section 3: the gap (patches take 2/3 of their cell) and a jitter of
    each patch stop the net from continuing lines and textures across the border; colour dropping (one
    random channel kept per patch, the others noise) stops it from reading chromatic aberration. With
    `downsample_p` > 0 a patch is shrunk to a random side (as little as `downsample_min_side` of its own) and
    enlarged back, the paper's robustness to pixelation (off by default: the paper does not say how often).
    """

    def __init__(self, cfg: RelPosConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.patch_layer = nn.Sequential(nn.Linear(feature_dim, cfg.patch_dim, bias=False),
                                         nn.BatchNorm1d(cfg.patch_dim), nn.ReLU())
        self.classifier = mlp(2 * cfg.patch_dim, cfg.hidden_dim, len(NEIGHBOURS))
        self._tables: dict[tuple[int, str], Tensor] = {}

    def _resampling(self, patch: int, device: torch.device) -> Tensor:
        """The shrink-and-enlarge maps for this patch side, built once per side and device (not state)."""
        key = (patch, str(device))
        if key not in self._tables:
            self._tables[key] = resampling_table(patch, device)
        return self._tables[key]

    def draw(self, n: int, shift: int, shape: tuple[int, int], device: torch.device
             ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
        """Neighbour labels [n], jitters [n,2,2] in [-shift, shift]; with colour dropping the kept channel
        [n,2] and the noise [n,2,C,p,p] (shape = (C, p)); with downsampling each patch's side [n,2] (p for a
        patch left alone). Drawn on the device with the global RNG (restored on resume), one row per image
        (the distributed test substitutes rows of one global draw)."""
        channels, patch = shape
        label = torch.randint(0, len(NEIGHBOURS), (n,), device=device)
        jitter = torch.randint(-shift, shift + 1, (n, 2, 2), device=device)
        keep = noise = sides = None
        if self.cfg.color_drop:
            keep = torch.randint(0, channels, (n, 2), device=device)
            noise = torch.randn(n, 2, channels, patch, patch, device=device)
        if self.cfg.downsample_p > 0:
            smallest = min(patch, max(1, math.ceil(patch * self.cfg.downsample_min_side)))
            shrunk = torch.randint(smallest, patch + 1, (n, 2), device=device)
            chosen = torch.rand(n, 2, device=device) < self.cfg.downsample_p
            sides = torch.where(chosen, shrunk, patch)
        return label, jitter, keep, noise, sides

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        b, size = x.shape[0], x.shape[-1]
        patch = patch_side(size, self.cfg.patch_fraction, size_multiple(self.encoder))
        shift = int(size // GRID * self.cfg.jitter_fraction)
        label, jitter, keep, noise, sides = self.draw(b, shift, (x.shape[1], patch), x.device)
        top, left = pair_positions(size, patch, label, jitter)
        patches = crop_patches(x, top, left, patch)  # [B,2,C,p,p]: centre, neighbour
        if sides is not None:
            patches = resample_patches(patches, sides, self._resampling(patch, x.device))
        if self.cfg.color_drop:
            patches = drop_colors(patches, keep, noise.to(patches.dtype))
        h = self.encoder(patches.flatten(0, 1))  # [B*2, D]
        logits = self.classifier(self.patch_layer(h).view(b, -1))
        loss = classification_loss(logits, label)
        accuracy = (logits.detach().argmax(dim=1) == label).float().mean()
        centre, neighbour = h.view(b, 2, -1).unbind(1)
        return StepOut(loss=loss, logs={"loss": loss.detach(), "accuracy": accuracy},
                       embeddings={"features": (centre, neighbour)})
