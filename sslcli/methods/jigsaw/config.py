"""Jigsaw: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class JigsawConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1603.09246"
    summary: ClassVar[str] = "pretext: reorder 9 shuffled tiles, classify which of N permutations (Noroozi & Favaro 2016)"
    family: ClassVar[str] = "pretext"
    num_views: ClassVar[int] = 1  # a crop and a flip: the tiles carry the task
    model: ClassVar[str] = "Jigsaw"
    tiny: ClassVar[dict[str, Any]] = {"num_permutations": 10, "tile_dim": 16, "hidden_dim": 32}
    name: Literal["jigsaw"] = "jigsaw"
    num_permutations: int = Field(100, ge=2, le=5000, description="size of the permutation set, the classes "
                                  "(paper: 1000, its best; 100 learns faster on small data)")
    permutation_seed: int = Field(0, ge=0, description="seed of the permutation set's first, random member; the "
                                  "set is a buffer of the model, so it is in every checkpoint (paper: one fixed set)")
    tile_fraction: float = Field(64 / 75, gt=0, le=1, description="tile side / grid cell side: each tile is a "
                                 "random crop inside its cell, the rest a random gap (paper: 64 px tiles in 75 px "
                                 "cells of a 225 px crop). Tiles are fed at their own size, not resized: "
                                 "floor(image_size // 3 * tile_fraction) px, e.g. 17 px at 64 px, 27 px at 96 px "
                                 "(rounded down to the patch size for a ViT)")
    tile_dim: int = Field(512, gt=0, description="per-tile layer after the shared encoder (paper: fc6, 512)")
    hidden_dim: int = Field(4096, gt=0, description="hidden layer over the 9 concatenated tiles (paper: fc7, 4096)")
    normalize_tiles: bool = Field(True, description="normalise each tile by its own per-channel mean and std, "
                                  "against low-level shortcuts (paper section 3.3)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD, lr 0.01, batch 256, AlexNet without batch norm; with BN in the ResNet sslcli takes the
        # lr of the SGD recipes above (0.1) and the era's weight decay 5e-4. Crop (paper: 225 of 256) + flip.
        return {"optim": {"name": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.5, 1.0], **GEOMETRIC_VIEW}}
