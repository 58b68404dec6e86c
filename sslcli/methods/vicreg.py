"""VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning.

Bardes, Ponce, LeCun 2022, https://arxiv.org/abs/2105.04906
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import ViewConfig, asymmetric_views
from sslcli.heads import mlp
from sslcli.losses import vicreg_terms
from sslcli.methods.base import Budget, MethodConfigBase, StepOut


class VICRegConfig(MethodConfigBase):
    name: Literal["vicreg"] = "vicreg"
    proj_dim: int = Field(8192, gt=0, description="expander hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="expander depth (paper: 3)")
    sim_weight: float = Field(25.0, ge=0, description="lambda, invariance weight (paper: 25)")
    var_weight: float = Field(25.0, ge=0, description="mu, variance weight (paper: 25)")
    cov_weight: float = Field(1.0, ge=0, description="nu, covariance weight (paper: 1)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (paper: BYOL's)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")


class VICReg(nn.Module):
    """Encoder -> 3-layer expander; invariance (MSE between views), variance (each dimension's std kept
    at 1 or above) and covariance (off-diagonal covariances pushed to 0) terms, weighted 25/25/1."""

    Config: ClassVar[type[BaseModel]] = VICRegConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2105.04906"
    summary: ClassVar[str] = "regularised: variance, invariance, covariance terms (Bardes et al. 2022)"

    def __init__(self, cfg: VICRegConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_dim, cfg.proj_dim, num_layers=cfg.proj_layers)

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # Paper: LARS, lr 0.2 x batch / 256 (base 0.2), weight decay 1e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1e-6}}

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return asymmetric_views(augment, self.cfg.view_blur_p, self.cfg.view_solarize_p)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h = self.encoder(torch.cat(views[:2]))
        z1, z2 = self.projector(h).chunk(2)
        # Under torchrun variance and covariance are the global batch's, as in the official code.
        invariance, variance, covariance = vicreg_terms(distributed.gather(z1), distributed.gather(z2))
        loss = self.cfg.sim_weight * invariance + self.cfg.var_weight * variance + self.cfg.cov_weight * covariance
        logs = {"loss": loss.detach(), "invariance": invariance.detach(), "variance": variance.detach(),
                "covariance": covariance.detach()}
        return StepOut(loss=loss, logs=logs, embeddings={"features": h.chunk(2), "projections": (z1, z2)})

    def on_step_end(self, step: int) -> None:
        pass

    def export_encoder(self) -> nn.Module:
        return self.encoder
