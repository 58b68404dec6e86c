"""Barlow Twins: Self-Supervised Learning via Redundancy Reduction.

Zbontar et al. 2021, https://arxiv.org/abs/2103.03230
"""

from __future__ import annotations

from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import barlow_twins
from sslcli.methods.barlow.config import BarlowConfig
from sslcli.methods.base import Budget, MethodDefaults, StepOut


class Barlow(MethodDefaults, nn.Module):
    """Encoder -> 3-layer projector (BN + ReLU in the hidden layers); the cross-correlation of the two
    views' batch-normalised projections is pushed towards the identity."""

    def __init__(self, cfg: BarlowConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h, (z1, z2) = self.project_views(views)
        # Under torchrun the cross-correlation (and its batch normalisation) covers the global batch.
        loss = self.cfg.scale_loss * barlow_twins(distributed.gather(z1), distributed.gather(z2), self.cfg.lambd)
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})
