"""DIM: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class DIMConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1808.06670"
    summary: ClassVar[str] = ("contrastive: an image's global feature scored against the local features of its own "
                              "feature map (positives) and of other images' (negatives), InfoNCE or JSD "
                              "(Deep InfoMax, Hjelm et al. 2019)")
    family: ClassVar[str] = "contrastive"
    num_views: ClassVar[int] = 1
    encoder_kind: ClassVar[Literal["any", "vit", "convnet"]] = "convnet"
    model: ClassVar[str] = "DIM"
    tiny: ClassVar[dict[str, Any]] = {"global_dim": 8, "score_dim": 16, "local_stage": -2}
    name: Literal["dim"] = "dim"
    local_stage: int = Field(-3, le=-1, description="the encoder stage whose feature map gives the local features, "
                             "counted from the last (-1: the last map; -3: a ResNet's stride-8 map, 4 x 4 at 32 px "
                             "and 12 x 12 at 96 px; the paper's local map is an intermediate conv layer's, 8 x 8 "
                             "on CIFAR)")
    global_dim: int = Field(64, gt=0, description="size of the global feature y, a linear head on the encoder's "
                            "pooled features (paper: 64)")
    score_dim: int = Field(512, gt=0, description="the space where global and local features meet: T(y, M_p) = "
                           "u(y) . v(M_p), u and v two-layer nets with a linear shortcut (the paper's "
                           "encode-and-dot-product architecture, 1x1 convolutions for v)")
    estimator: Literal["infonce", "jsd"] = Field("infonce", description="the mutual-information bound: infonce "
                                                 "(eq. 5) or jsd, Jensen-Shannon (eq. 4)")
    local_weight: float = Field(1.0, ge=0, description="beta, weight of the local objective (paper's local DIM: 1)")
    global_weight: float = Field(0.0, ge=0, description="alpha, weight of the global objective, y against the whole "
                                 "map (paper's global DIM: 1 with beta 0; local DIM: 0)")
    prior_weight: float = Field(0.0, ge=0, description="gamma, weight of the prior matching term: a discriminator "
                                "tells sigmoid(y) from uniform noise, y learns to fool it (paper: 0.1; 0 = off)")

    @model_validator(mode="after")
    def _some_objective(self) -> DIMConfig:
        if self.local_weight == 0 and self.global_weight == 0:
            raise ValueError("local_weight and global_weight are both 0: DIM would maximise no mutual information")
        return self

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: Adam, lr 1e-4 at batch 64 (4e-4 per 256 images), no weight decay; augmentation a crop and a
        # flip, no colour changes.
        return {"optim": {"name": "adamw", "base_lr": 4e-4, "weight_decay": 0.0, "warmup_epochs": 0},
                "augment": {"scale": [0.5, 1.0], **GEOMETRIC_VIEW}}
