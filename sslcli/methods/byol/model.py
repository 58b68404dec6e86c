"""BYOL: Bootstrap Your Own Latent.

Grill et al. 2020, https://arxiv.org/abs/2006.07733
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.losses import negative_cosine
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.byol.config import BYOLConfig
from sslcli.methods.pretext import add_rotation_loss, s4l_rotation


class BYOL(MethodDefaults, nn.Module):
    """Online encoder -> projector -> predictor regresses the target (EMA) encoder -> projector of the
    other view; the loss is symmetrised (L + L~, eq. 2) as 2 - 2 cos per pair."""

    def __init__(self, cfg: BYOLConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim)
        self.rotation = s4l_rotation(feature_dim, cfg.rotation_weight)  # S4L, off by default
        self.add_momentum_targets({"target_encoder": "encoder", "target_projector": "projector"}, cfg.momentum,
                                  cfg.final_momentum, budget.total_steps)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = torch.cat(views[:2])
        h = self.encoder(x)
        online = self.projector(h)
        p1, p2 = self.predictor(online).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(x)).chunk(2)
        loss = (2 + 2 * negative_cosine(p1, z2)) + (2 + 2 * negative_cosine(p2, z1))
        logs: dict[str, Tensor] = {}
        loss = add_rotation_loss(self.rotation, self.cfg.rotation_weight, self.encoder, views[0], loss, logs)
        return StepOut(loss=loss, logs={"loss": loss.detach(), **logs},
                       embeddings={"features": h.chunk(2), "projections": online.chunk(2)})
