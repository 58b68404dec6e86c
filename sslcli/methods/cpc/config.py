"""CPC: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from sslcli.methods.config_base import MethodConfigBase


class CPCConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1905.09272"
    summary: ClassVar[str] = ("contrastive predictive coding: a masked context network over a grid of patch features "
                              "predicts the patches further down, InfoNCE against every patch of the batch "
                              "(CPC v2, Henaff et al. 2019)")
    family: ClassVar[str] = "contrastive"
    num_views: ClassVar[int] = 1  # colour is augmented per patch in forward
    model: ClassVar[str] = "CPC"
    recipes: ClassVar[dict[str, str]] = {
        "cpc-v1": "CPC v1 (van den Oord et al. 2018): top-down only, offsets from 1, each patch cropped at random "
                  "and padded back, none of v2's patch augmentations; batch norm where v1 had no norm",
    }
    tiny: ClassVar[dict[str, Any]] = {"context_blocks": 1, "context_dim": 16, "target_dim": 16}
    encoder_input: ClassVar[str] = ("trained on patches: a grid_size x grid_size grid of half-overlapping patches of "
                                    "side 2 x image_size // (grid_size + 1), each augmented and pooled alone; a whole "
                                    "image is embedded by this encoder applied to the whole image (its pooled "
                                    "features), not by the paper's mean of the patch grid's features")
    name: Literal["cpc"] = "cpc"
    grid_size: int = Field(7, ge=2, description="patches per side of the grid cut from each view (paper: 7 x 7). "
                           "Patches overlap by half, as the paper's 64 px patches at a 32 px stride: stride = "
                           "image_size // (grid_size + 1), side = 2 x stride, the grid centred in the view "
                           "(8 px patches at 32 px, 16 at 64, 56 at 224)")
    min_offset: int = Field(2, ge=1, description="the nearest row predicted below the context's row (the paper "
                            "predicts rows below the context; sslcli starts at 2 because the next row's patches share "
                            "half their pixels with the context's, a shortcut; 1 adds it)")
    max_offset: int = Field(5, ge=1, description="the farthest row predicted below the context's row, k = "
                            "min_offset..max_offset, one linear prediction W_k per k (CPC v1, arXiv 1807.03748: up "
                            "to 5 rows on the 7 x 7 grid); rows beyond the grid are not predicted")
    directions: Literal[1, 2, 4] = Field(4, description="prediction directions, each with its own context network "
                                         "and predictions over the grid rotated: 1 top-down (CPC v1), 2 adds "
                                         "bottom-up, 4 adds left-to-right and right-to-left (CPC v2's bottom-up and "
                                         "horizontal predictions, its final model)")
    context_blocks: int = Field(5, ge=1, description="residual blocks of the context network, each a 1x1 conv, a "
                                "masked 3x3 conv (rows above and the row itself) and a 1x1 conv (PixelCNN-style; "
                                "pl_bolts' CPC v2 PixelCNN: 5)")
    context_dim: int = Field(256, gt=0, description="hidden width of the context blocks (pl_bolts: 256)")
    target_dim: int = Field(0, ge=0, description="0: scores are W_k c . z on the encoder's pooled patch features "
                            "(paper); N > 0: targets and predictions in a shared linear projection of size N "
                            "(pl_bolts CPCTask: 64), a cheaper score")
    patch_flip_p: float = Field(0.5, ge=0, le=1, description="probability each patch is flipped left-right on its own "
                                "(paper: random horizontal flips of each patch)")
    color_drop_p: float = Field(0.5, ge=0, le=1, description="probability each patch keeps only one random colour "
                                "channel, the other two replaced by noise of 1/100 its std (paper: 'colour dropping' "
                                "of two of the three channels per patch; below 1 the encoder also sees colour, which "
                                "the probe's whole images have)")
    patch_jitter_p: float = Field(0.8, ge=0, le=1, description="probability of colour jitter per patch (the paper's "
                                  "further patch augmentations include colour transforms; pl_bolts: 0.8 per image)")
    patch_jitter: tuple[float, float, float, float] = Field((0.4, 0.4, 0.4, 0.1), description="brightness, "
                                                            "contrast, saturation, hue strengths of that jitter "
                                                            "(pl_bolts: 0.4, 0.4, 0.4, 0.1)")
    patch_affine_p: float = Field(0.0, ge=0, le=1, description="probability of a random rotation and shear per patch "
                                  "(the paper's further patch augmentations take rotation and shearing from "
                                  "AutoAugment; 0 = off)")
    patch_crop: float = Field(1.0, gt=0, le=1, description="side of a random square crop of each patch, as a "
                              "fraction of the patch's side (rounded down), padded back to the patch's size with "
                              "zeros (the normalised mean) around it: the patch's content moves by up to the "
                              "difference (CPC v1: a random 60 x 60 crop of each 64 x 64 patch, 0.9375; 1 = off)")
    patch_rotation: float = Field(30.0, ge=0, le=180, description="largest rotation in degrees (AutoAugment: 30)")
    patch_shear: float = Field(0.3, ge=0, le=1, description="largest horizontal shear factor (AutoAugment: 0.3)")

    @model_validator(mode="after")
    def _check_offsets(self) -> CPCConfig:
        if self.min_offset > self.max_offset:
            raise ValueError(f"min_offset {self.min_offset} is above max_offset {self.max_offset}")
        if self.min_offset >= self.grid_size:
            raise ValueError(f"min_offset {self.min_offset} leaves nothing to predict on a grid of {self.grid_size} "
                             "rows: lower it or raise grid_size")
        if any(s < 0 for s in self.patch_jitter) or self.patch_jitter[3] > 0.5:
            raise ValueError(f"patch_jitter strengths must be >= 0 and the hue's <= 0.5, got {self.patch_jitter}")
        return self

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: layer norm instead of batch norm in the encoder (batch statistics leak between the patches of
        # an image); timm's groupnorm1 normalises each sample over channels and space, as pl_bolts' CPC-ResNet's
        # LayerNorm([C, H, W]) does (per-channel affine instead of per-element). Optimizer: pl_bolts' Adam 2e-4 at
        # batch 128 (4e-4 per 256 images), weight decay 1e-6. The view is a crop and a flip: colour is augmented
        # per patch in forward.
        return {"encoder": {"kwargs": {"norm_layer": "groupnorm1"}},
                "optim": {"name": "adamw", "base_lr": 4e-4, "weight_decay": 1e-6},
                "augment": {"scale": [0.3, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}}
