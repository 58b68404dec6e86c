"""MoCoV3: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import AsymmetricViews, MethodConfigBase


class MoCoV3Config(AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.02057"
    summary: ClassVar[str] = "contrastive: momentum encoder, predictor, symmetric in-batch InfoNCE (Chen et al. 2021)"
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "MoCoV3"
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64}
    name: Literal["mocov3"] = "mocov3"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (paper: 0.2 for ResNet, 0.2 ViT)")
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="output size (paper: 256)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; solo-learn CIFAR: 2)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="momentum encoder EMA at the start (paper: 0.99)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="EMA at the end, cosine schedule (paper: 1.0)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # The ResNet-50 recipe of the official code (CONFIG.md): LARS, lr 0.6 x batch / 256, weight decay 1e-6.
        return {"optim": {"name": "lars", "base_lr": 0.6, "weight_decay": 1e-6}}
