"""Relative position: Unsupervised Visual Representation Learning by Context Prediction.

Doersch, Gupta, Efros 2015, https://arxiv.org/abs/1505.05192
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.configs import RelPosConfig
from sslcli.methods.pretext import (
    classification_loss,
    crop_patches,
    drop_colors,
    patch_side,
    size_multiple,
)
from sslcli.views import ViewConfig

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
    random channel kept per patch, the others noise) stops it from reading chromatic aberration.
    Not done: the paper's random downsampling of some patches to 100 pixels.
    """

    def __init__(self, cfg: RelPosConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.patch_layer = nn.Sequential(nn.Linear(feature_dim, cfg.patch_dim, bias=False),
                                         nn.BatchNorm1d(cfg.patch_dim), nn.ReLU())
        self.classifier = mlp(2 * cfg.patch_dim, cfg.hidden_dim, len(NEIGHBOURS))

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        # One view: the paper only rescales the image before sampling; spec defaults give a mild crop
        # and a flip with no colour changes (the patches' colours are handled by colour dropping).
        return [augment]

    def draw(self, n: int, shift: int, shape: tuple[int, int], device: torch.device
             ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Neighbour labels [n], jitters [n,2,2] in [-shift, shift], and with colour dropping the kept channel
        [n,2] and the noise [n,2,C,p,p] (shape = (C, p)): drawn on the device with the global RNG (restored on
        resume), one row per image (the distributed test substitutes rows of one global draw)."""
        label = torch.randint(0, len(NEIGHBOURS), (n,), device=device)
        jitter = torch.randint(-shift, shift + 1, (n, 2, 2), device=device)
        if not self.cfg.color_drop:
            return label, jitter, None, None
        channels, patch = shape
        keep = torch.randint(0, channels, (n, 2), device=device)
        return label, jitter, keep, torch.randn(n, 2, channels, patch, patch, device=device)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = views[0]
        b, size = x.shape[0], x.shape[-1]
        patch = patch_side(size, self.cfg.patch_fraction, size_multiple(self.encoder))
        shift = int(size // GRID * self.cfg.jitter_fraction)
        label, jitter, keep, noise = self.draw(b, shift, (x.shape[1], patch), x.device)
        top, left = pair_positions(size, patch, label, jitter)
        patches = crop_patches(x, top, left, patch)  # [B,2,C,p,p]: centre, neighbour
        if self.cfg.color_drop:
            patches = drop_colors(patches, keep, noise.to(patches.dtype))
        h = self.encoder(patches.flatten(0, 1))  # [B*2, D]
        logits = self.classifier(self.patch_layer(h).view(b, -1))
        loss = classification_loss(logits, label)
        accuracy = (logits.detach().argmax(dim=1) == label).float().mean()
        centre, neighbour = h.view(b, 2, -1).unbind(1)
        return StepOut(loss=loss, logs={"loss": loss.detach(), "accuracy": accuracy},
                       embeddings={"features": (centre, neighbour)})
