"""Colorization: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class ColorizationConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1603.08511"
    summary: ClassVar[str] = ("pretext: predict the ab colours of the L channel as a distribution over 313 ab bins, "
                              "class-rebalanced (Zhang et al. 2016)")
    family: ClassVar[str] = "pretext"
    rgb_only: ClassVar[bool] = True  # Lab colour of RGB images
    num_views: ClassVar[int] = 1
    model: ClassVar[str] = "Colorization"
    encoder_kind: ClassVar[str] = "convnet"
    tiny: ClassVar[dict[str, Any]] = {"decoder_dim": 16}
    encoder_input: ClassVar[str] = ("trained on grey images (the neutral grey of each pixel's Lab lightness, the same in "
                                    "all 3 channels); takes RGB normalised with mean/std like every encoder")
    name: Literal["colorization"] = "colorization"
    bins: Literal["paper", "gamut"] = Field("paper", description="the quantised ab space (grid 10): 'paper', "
                                            "Zhang et al.'s 313 bins; 'gamut', the 261 of them that sRGB "
                                            "colours fall in (the other 52 are rim bins no pixel is nearest to)")
    neighbours: int = Field(5, gt=0, description="nearest ab bins of a soft-encoded target (paper: 5)")
    sigma: float = Field(5.0, gt=0, description="Gaussian kernel of the soft encoding and of the prior's smoothing, "
                         "in ab units (paper: 5)")
    rebalance_lambda: float = Field(0.5, ge=0, le=1, description="lambda mixing the prior with the uniform "
                                    "distribution in the rebalancing weights (paper: 0.5; 1 = no rebalancing)")
    target_stride: int = Field(4, gt=0, description="predict ab at 1/this resolution (paper: 4, 56 x 56 at 224 px)")
    decoder_dim: int = Field(256, gt=0, description="width of the decoder's first conv (paper: 256 in its last "
                             "blocks before the 313-way 1x1 conv)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: Adam (betas 0.9, 0.99), lr 3e-5 at batch 40 (1.9e-4 x batch / 256), weight decay 1e-3 (as AdamW's
        # decoupled decay here). Colour augmentation would change the targets: crops and flips only.
        return {"optim": {"name": "adamw", "base_lr": 1.9e-4, "weight_decay": 1e-3, "betas": [0.9, 0.99],
                          "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], **GEOMETRIC_VIEW}}
