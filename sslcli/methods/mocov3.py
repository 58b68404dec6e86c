"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import ViewConfig, asymmetric_views
from sslcli.ema import frozen_copy, update_ema
from sslcli.heads import mlp
from sslcli.losses import info_nce
from sslcli.methods.base import Budget, MethodConfigBase, StepOut
from sslcli.schedules import cosine_increase


class MoCoV3Config(MethodConfigBase):
    name: Literal["mocov3"] = "mocov3"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (paper: 0.2 for ResNet, 0.2 ViT)")
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="output size (paper: 256)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; solo-learn CIFAR: 2)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="momentum encoder EMA at the start (paper: 0.99)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="EMA at the end, cosine schedule (paper: 1.0)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (BYOL recipe)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2")


class MoCoV3(nn.Module):
    """Encoder -> projector -> predictor for queries; momentum encoder -> projector for keys.

    Symmetric in-batch InfoNCE, each term scaled by 2 tau as in the paper's Algorithm 1 (it keeps the
    gradient scale independent of the temperature). Works with ResNets and ViTs: the encoder is any timm
    model. The projector and predictor have BN in every hidden layer and the projector's output has an
    affine-free BN, as in the official code.
    """

    Config: ClassVar[type[BaseModel]] = MoCoV3Config
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.02057"
    summary: ClassVar[str] = "contrastive: momentum encoder, predictor, symmetric in-batch InfoNCE (Chen et al. 2021)"

    def __init__(self, cfg: MoCoV3Config, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers,
                             last_batch_norm=True)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2)
        self.momentum_encoder = frozen_copy(encoder)
        self.momentum_projector = frozen_copy(self.projector)
        self.momentum = cosine_increase(cfg.momentum, cfg.final_momentum, budget.total_steps).tolist()

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # The ResNet-50 recipe of the official code (CONFIG.md): LARS, lr 0.6 x batch / 256, weight decay 1e-6.
        return {"optim": {"name": "lars", "base_lr": 0.6, "weight_decay": 1e-6}}

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return asymmetric_views(augment, self.cfg.view_blur_p, self.cfg.view_solarize_p)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = torch.cat(views[:2])
        h = self.encoder(x)
        z = self.projector(h)
        q1, q2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_encoder(x)).chunk(2)
        # Under torchrun the in-batch negatives are the global batch's (queries with gradients, keys without).
        q1, q2, k1, k2 = (distributed.gather(t) for t in (q1, q2, k1, k2))
        tau = self.cfg.temperature
        loss = 2 * tau * (info_nce(q1, k2, tau) + info_nce(q2, k1, tau))
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": z.chunk(2)})

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        m = self.momentum[min(step, len(self.momentum) - 1)]
        update_ema(self.momentum_encoder, self.encoder, m)
        update_ema(self.momentum_projector, self.projector, m)

    def export_encoder(self) -> nn.Module:
        return self.encoder
