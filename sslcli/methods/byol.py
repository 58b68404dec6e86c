"""BYOL: Bootstrap Your Own Latent.

Grill et al. 2020, https://arxiv.org/abs/2006.07733
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli.augment import ViewConfig, asymmetric_views
from sslcli.ema import frozen_copy, update_ema
from sslcli.heads import mlp
from sslcli.losses import negative_cosine
from sslcli.methods.base import Budget, MethodConfigBase, StepOut
from sslcli.schedules import cosine_increase


class BYOLConfig(MethodConfigBase):
    name: Literal["byol"] = "byol"
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="projection size (paper: 256)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="target EMA at the start (paper: 0.996 at batch 4096; "
                            "0.99 suits smaller batches, solo-learn)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="target EMA at the end, cosine schedule (paper: 1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (paper table 6)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")


class BYOL(nn.Module):
    """Online encoder -> projector -> predictor regresses the target (EMA) encoder -> projector of the
    other view; the loss is symmetrised (L + L~, eq. 2) as 2 - 2 cos per pair."""

    Config: ClassVar[type[BaseModel]] = BYOLConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.07733"
    summary: ClassVar[str] = "non-contrastive: online predictor regresses an EMA target network (Grill et al. 2020)"

    def __init__(self, cfg: BYOLConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim)
        self.target_encoder = frozen_copy(encoder)
        self.target_projector = frozen_copy(self.projector)
        self.momentum = cosine_increase(cfg.momentum, cfg.final_momentum, budget.total_steps).tolist()

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # Paper: LARS, lr 0.2 x batch / 256, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return asymmetric_views(augment, self.cfg.view_blur_p, self.cfg.view_solarize_p)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = torch.cat(views[:2])
        h = self.encoder(x)
        online = self.projector(h)
        p1, p2 = self.predictor(online).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(x)).chunk(2)
        loss = (2 + 2 * negative_cosine(p1, z2)) + (2 + 2 * negative_cosine(p2, z1))
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": online.chunk(2)})

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = self.momentum[min(step, len(self.momentum) - 1)]
        update_ema(self.target_encoder, self.encoder, m)
        update_ema(self.target_projector, self.projector, m)

    def export_encoder(self) -> nn.Module:
        return self.encoder
