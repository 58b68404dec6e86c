"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen, He 2021, https://arxiv.org/abs/2011.10566
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli.augment import ViewConfig
from sslcli.heads import mlp
from sslcli.losses import negative_cosine
from sslcli.methods.base import Budget, MethodConfigBase, StepOut


class SimSiamConfig(MethodConfigBase):
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, gt=0, description="projector hidden and output width (paper: 2048)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; CIFAR variant: 2)")
    pred_hidden_dim: int = Field(512, gt=0, description="predictor bottleneck width (paper: 512)")
    fixed_predictor_lr: bool = Field(True, description="keep the predictor's lr at the peak instead of decaying "
                                     "it (paper section 4.4: 'fix lr for predictor')")


class SimSiam(nn.Module):
    """Encoder -> projector (BN on every layer, the output's BN without affine) -> bottleneck predictor;
    symmetric negative cosine with a stop-gradient on the projection (eq. 1-2)."""

    Config: ClassVar[type[BaseModel]] = SimSiamConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2011.10566"
    summary: ClassVar[str] = "non-contrastive: stop-gradient and a predictor, no EMA (Chen & He 2021)"

    def __init__(self, cfg: SimSiamConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers, last_batch_norm=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, num_layers=2)
        self.fixed_lr_modules = ("predictor",) if cfg.fixed_predictor_lr else ()

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # Paper: SGD lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine, no warm-up.
        return {"optim": {"name": "sgd", "base_lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0}}

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return [augment, augment]

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h = self.encoder(torch.cat(views[:2]))
        z1, z2 = self.projector(h).chunk(2)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2
        # The std of the normalised z (the paper's collapse indicator, fig. 2) is among the monitors.
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})

    def on_step_end(self, step: int) -> None:
        pass

    def export_encoder(self) -> nn.Module:
        return self.encoder
