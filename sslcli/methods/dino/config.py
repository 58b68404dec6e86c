"""DINO: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import (
    AsymmetricViews,
    MethodConfigBase,
    MultiCrop,
)


class DINOConfig(MultiCrop, AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.14294"
    summary: ClassVar[str] = "self-distillation: EMA teacher, centering, sharpening, multi-crop (Caron et al. 2021)"
    family: ClassVar[str] = "distillation"
    model: ClassVar[str] = "DINO"
    recipes: ClassVar[dict[str, str]] = {
        "dino-vit": "DINO on a ViT, as its paper: AdamW with weight decay 0.04 -> 0.4, last layer frozen for the "
                    "first epoch, patches sized for the images",
    }
    tiny: ClassVar[dict[str, Any]] = {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "num_local_crops": 2}
    name: Literal["dino"] = "dino"
    out_dim: int = Field(65536, gt=0, description="K, the head's output size (paper: 65536)")
    hidden_dim: int = Field(2048, gt=0, description="head MLP hidden width (paper: 2048)")
    bottleneck_dim: int = Field(256, gt=0, description="head bottleneck before the last layer (paper: 256)")
    head_batch_norm: bool = Field(False, description="BN in the head MLP (the paper's ResNet-50 setting)")
    norm_last_layer: bool = Field(True, description="weight-normalised last layer with its norm fixed at 1")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="last layer gets no update this long (paper: 1)")
    student_temperature: float = Field(0.1, gt=0, description="tau_s (paper: 0.1)")
    teacher_temperature: float = Field(0.07, gt=0, description="tau_t after the warm-up (paper ViT-S/16: 0.07)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, description="tau_t at the start (paper: 0.04)")
    warmup_teacher_temperature_epochs: float = Field(30, ge=0, description="tau_t warm-up length (paper: 30)")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="m of the center's EMA (paper: 0.9)")
    momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA at the start (paper: 0.996)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="teacher EMA at the end, cosine (paper: 1)")
    num_local_crops: int = Field(8, ge=0, description="small crops for the student only (official default: 8)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="local crop area range (paper)")
    local_blur_p: float = Field(0.5, ge=0, le=1, description="blur odds of the local views (paper: 0.5)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (ViT-S/16): AdamW, lr 5e-4 x batch / 256, weight decay 0.04 -> 0.4 by a cosine (the official
        # main_dino.py's weight_decay / weight_decay_end), 10 warm-up epochs; global crops (0.4, 1). Its ResNet-50
        # command keeps the decay constant (--weight_decay 1e-6 --weight_decay_end 1e-6): the ResNet presets say so.
        return {"optim": {"name": "adamw", "base_lr": 5e-4, "weight_decay": 0.04, "final_weight_decay": 0.4},
                "augment": {"scale": [0.4, 1.0]}}
