"""Rotation: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class RotationConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1803.07728"
    summary: ClassVar[str] = "pretext: predict which of 0/90/180/270 degrees each image was rotated by (Gidaris et al. 2018)"
    family: ClassVar[str] = "pretext"
    num_views: ClassVar[int] = 1  # rotated four ways in forward
    model: ClassVar[str] = "Rotation"
    recipes: ClassVar[dict[str, str]] = {
        "s4l-rotation": "S4L-Rotation: the rotation loss plus a supervised head on 10 % of the labels "
                        "(data.label_fraction)",
    }
    tiny: ClassVar[dict[str, Any]] = {}
    name: Literal["rotation"] = "rotation"
    head_hidden_dim: int = Field(0, ge=0, description="hidden width of the 4-way head; 0 = a linear head on the "
                                 "pooled features (paper: the NIN's last blocks + global pooling + linear; a linear "
                                 "head on ResNet pre-logits in Kolesnikov et al. 2019 and S4L)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (CIFAR-10, NIN): SGD momentum 0.9, lr 0.1 at batch 128 (x4 rotations), weight decay 5e-4, no
        # warm-up; augmentation is a random crop and a horizontal flip only (gidariss/FeatureLearningRotNet).
        return {"optim": {"name": "sgd", "base_lr": 0.2, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.35, 1.0], **GEOMETRIC_VIEW}}
