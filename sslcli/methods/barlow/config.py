"""Barlow: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import AsymmetricViews, MethodConfigBase


class BarlowConfig(AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2103.03230"
    summary: ClassVar[str] = "redundancy reduction: cross-correlation towards identity (Zbontar et al. 2021)"
    family: ClassVar[str] = "redundancy reduction"
    model: ClassVar[str] = "Barlow"
    tiny: ClassVar[dict[str, Any]] = {"proj_dim": 64}
    name: Literal["barlow"] = "barlow"
    proj_dim: int = Field(8192, gt=0, description="projector hidden and output width (paper: 8192; solo-learn "
                          "CIFAR: 2048)")
    proj_layers: int = Field(3, ge=1, description="projector depth (paper: 3)")
    lambd: float = Field(0.0051, ge=0, description="weight of the off-diagonal terms (paper: 0.0051)")
    scale_loss: float = Field(1.0, gt=0, description="multiplies the loss (solo-learn CIFAR: 0.1)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256 for the weights, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}
