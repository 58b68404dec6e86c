"""SimSiam: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase


class SimSiamConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2011.10566"
    summary: ClassVar[str] = "non-contrastive: stop-gradient and a predictor, no EMA (Chen & He 2021)"
    family: ClassVar[str] = "distillation"
    model: ClassVar[str] = "SimSiam"
    tiny: ClassVar[dict[str, Any]] = {"proj_dim": 64, "pred_hidden_dim": 16}
    name: Literal["simsiam"] = "simsiam"
    proj_dim: int = Field(2048, gt=0, description="projector hidden and output width (paper: 2048)")
    proj_layers: int = Field(3, ge=2, description="projector depth (paper: 3; CIFAR variant: 2)")
    pred_hidden_dim: int = Field(512, gt=0, description="predictor bottleneck width (paper: 512)")
    fixed_predictor_lr: bool = Field(True, description="keep the predictor's lr at the peak instead of decaying "
                                     "it (paper section 4.4: 'fix lr for predictor')")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD lr 0.05 x batch / 256, momentum 0.9, weight decay 1e-4, cosine, no warm-up.
        return {"optim": {"name": "sgd", "base_lr": 0.05, "weight_decay": 1e-4, "warmup_epochs": 0}}
