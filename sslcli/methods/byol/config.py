"""BYOL: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import (
    AsymmetricViews,
    MethodConfigBase,
    S4LRotation,
)


class BYOLConfig(S4LRotation, AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.07733"
    summary: ClassVar[str] = "non-contrastive: online predictor regresses an EMA target network (Grill et al. 2020)"
    family: ClassVar[str] = "distillation"
    model: ClassVar[str] = "BYOL"
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64}
    name: Literal["byol"] = "byol"
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="projection size (paper: 256)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    momentum: float = Field(0.99, ge=0, le=1, description="target EMA at the start (paper: 0.996 at batch 4096; "
                            "0.99 suits smaller batches, solo-learn)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="target EMA at the end, cosine schedule (paper: 1)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 0.2 x batch / 256, weight decay 1.5e-6, 10 warm-up epochs.
        return {"optim": {"name": "lars", "base_lr": 0.2, "weight_decay": 1.5e-6}}
