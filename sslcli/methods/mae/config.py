"""MAE: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase, default_patch_size


class MAEConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2111.06377"
    summary: ClassVar[str] = "masked image modelling: ViT encodes 25 % of patches, decoder rebuilds pixels (He et al. 2021)"
    family: ClassVar[str] = "masked"
    num_views: ClassVar[int] = 1
    model: ClassVar[str] = "MAE"
    encoder_kind: ClassVar[str] = "vit"
    tiny: ClassVar[dict[str, Any]] = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, gt=0, lt=1, description="fraction of patches removed per image (paper: 0.75)")
    decoder_dim: int = Field(512, gt=0, description="decoder width (paper: 512)")
    decoder_depth: int = Field(8, gt=0, description="decoder blocks (paper: 8)")
    decoder_heads: int = Field(16, gt=0, description="decoder attention heads (paper: 16)")
    norm_pix_loss: bool = Field(True, description="normalise each target patch by its mean and std (paper)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: AdamW (betas 0.9, 0.95), lr 1.5e-4 x batch / 256, weight decay 0.05, 40 warm-up epochs;
        # augmentation is only a random resized crop (0.2, 1) and a flip.
        return {
            "encoder": {"name": "vit_tiny_patch16_224", "kwargs": {"patch_size": default_patch_size(image_size)}},
            "optim": {"name": "adamw", "base_lr": 1.5e-4, "weight_decay": 0.05, "betas": [0.9, 0.95],
                      "warmup_epochs": 40},
            "augment": {"scale": [0.2, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0},
        }
