"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar et al. 2021, https://arxiv.org/abs/2103.03230
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import ViewConfig, asymmetric_views
from sslcli.heads import mlp
from sslcli.losses import barlow_twins
from sslcli.methods.base import Budget, MethodConfigBase, StepOut


class BarlowConfig(MethodConfigBase):
    name: Literal["barlow"] = "barlow"
    proj_dim: int = Field(8192, gt=0, description="projector hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="projector depth (paper: 3)")
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal terms (paper: 0.0051)")
    scale_loss: float = Field(1.0, gt=0, description="multiplies the loss (solo-learn CIFAR: 0.1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (BYOL recipe)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")


class Barlow(nn.Module):
    """Encoder -> 3-layer projector (BN + ReLU in the hidden layers); the cross-correlation of the two
    views' batch-normalised projections is pushed towards the identity."""

    Config: ClassVar[type[BaseModel]] = BarlowConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2103.03230"
    summary: ClassVar[str] = "redundancy reduction: cross-correlation towards identity (Zbontar et al. 2021)"

    def __init__(self, cfg: BarlowConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # Paper: LARS, lr 0.2 x batch / 256 for the weights, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return asymmetric_views(augment, self.cfg.view_blur_p, self.cfg.view_solarize_p)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h = self.encoder(torch.cat(views[:2]))
        z1, z2 = self.projector(h).chunk(2)
        # Under torchrun the cross-correlation (and its batch normalisation) covers the global batch.
        loss = self.cfg.scale_loss * barlow_twins(distributed.gather(z1), distributed.gather(z2), self.cfg.lambd)
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})

    def on_step_end(self, step: int) -> None:
        pass

    def export_encoder(self) -> nn.Module:
        return self.encoder
