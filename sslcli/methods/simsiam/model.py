"""SimSiam: Exploring Simple Siamese Representation Learning.

Chen, He 2021, https://arxiv.org/abs/2011.10566
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.losses import negative_cosine
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.simsiam.config import SimSiamConfig


class SimSiam(MethodDefaults, nn.Module):
    """Encoder -> projector (BN on every layer, the output's BN without affine) -> bottleneck predictor;
    symmetric negative cosine with a stop-gradient on the projection (eq. 1-2)."""

    def __init__(self, cfg: SimSiamConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers, last_batch_norm=True)
        self.predictor = mlp(cfg.proj_dim, cfg.pred_hidden_dim, cfg.proj_dim, num_layers=2)
        self.fixed_lr_modules = ("predictor",) if cfg.fixed_predictor_lr else ()

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h, (z1, z2) = self.project_views(views)
        p1, p2 = self.predictor(torch.cat([z1, z2])).chunk(2)
        loss = negative_cosine(p1, z2.detach()) / 2 + negative_cosine(p2, z1.detach()) / 2
        # The std of the normalised z (the paper's collapse indicator, fig. 2) is among the monitors.
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})
