"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.

Bardes, Ponce, LeCun 2022, https://arxiv.org/abs/2105.04906
"""

from __future__ import annotations

from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import vicreg_terms
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.vicreg.config import VICRegConfig


class VICReg(MethodDefaults, nn.Module):
    """Encoder -> 3-layer expander; invariance (MSE between views), variance (each dimension's std kept
    at 1 or above) and covariance (off-diagonal covariances pushed to 0) terms, weighted 25/25/1."""

    def __init__(self, cfg: VICRegConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h, (z1, z2) = self.project_views(views)
        # Under torchrun variance and covariance are the global batch's, as in the official code.
        invariance, variance, covariance = vicreg_terms(distributed.gather(z1), distributed.gather(z2))
        loss = self.cfg.sim_weight * invariance + self.cfg.var_weight * variance + self.cfg.cov_weight * covariance
        logs = {"loss": loss.detach(), "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach()}
        return StepOut(loss=loss, logs=logs, embeddings={"features": h.chunk(2), "projections": (z1, z2)})
