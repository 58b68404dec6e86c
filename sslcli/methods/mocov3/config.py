"""MoCoV3: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import AsymmetricViews, MethodConfigBase


@dataclass(frozen=True)
class FamilyDefaults:
    """The official code's values for one encoder family (facebookresearch/moco-v3 main_moco.py, builder.py)."""

    temperature: float
    proj_layers: int
    pred_last_batch_norm: bool


CONVNET_DEFAULTS = FamilyDefaults(temperature=1.0, proj_layers=2, pred_last_batch_norm=False)
VIT_DEFAULTS = FamilyDefaults(temperature=0.2, proj_layers=3, pred_last_batch_norm=True)


class MoCoV3Config(AsymmetricViews, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.02057"
    summary: ClassVar[str] = "contrastive: momentum encoder, predictor, symmetric in-batch InfoNCE (Chen et al. 2021)"
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "MoCoV3"
    recipes: ClassVar[dict[str, str]] = {
        "mocov3-vit": "MoCo v3 on a ViT, as its paper: random frozen patch projection, fixed 2-D sin-cos positions, "
                      "temperature 0.2, 3-layer projector, AdamW",
    }
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64}
    name: Literal["mocov3"] = "mocov3"
    # The official code (facebookresearch/moco-v3) differs by encoder family: main_moco.py's --moco-t defaults
    # to 1.0 (the ResNet-50 commands of CONFIG.md keep it) and its ViT commands set 0.2; builder.py gives
    # MoCo_ResNet a 2-layer projector and a predictor without a last BN, MoCo_ViT a 3-layer projector and a
    # predictor ending in an affine-free BN. Unset (None), a value follows the encoder (MoCoV3 resolves it).
    temperature: float | None = Field(None, gt=0, description="InfoNCE temperature (default: per encoder, as the "
                                      "official code: 1.0 for a ConvNet, 0.2 for a ViT)")
    proj_hidden_dim: int = Field(4096, gt=0, description="projector hidden width (paper: 4096)")
    proj_out_dim: int = Field(256, gt=0, description="output size (paper: 256)")
    proj_layers: int | None = Field(None, ge=2, description="projector depth (default: per encoder, as the "
                                    "official code: 2 for a ConvNet, 3 for a ViT)")
    pred_hidden_dim: int = Field(4096, gt=0, description="predictor hidden width (paper: 4096)")
    freeze_patch_embed: bool = Field(True, description="ViT: the patch projection stays at its random init "
                                     "(paper section 4.2, official --stop-grad-conv1)")
    sincos_pos_embed: bool = Field(True, description="ViT: a fixed 2-D sin-cos position embedding, not learned "
                                   "(official vits.py)")
    momentum: float = Field(0.99, ge=0, le=1, description="momentum encoder EMA at the start (paper: 0.99)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="EMA at the end, cosine schedule (paper: 1.0)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # The ResNet-50 recipe of the official code (CONFIG.md): LARS, lr 0.6 x batch / 256, weight decay 1e-6.
        # (Its ViT recipe, AdamW lr 1.5e-4 wd 0.1, is what the mocov3-vit presets set.)
        return {"optim": {"name": "lars", "base_lr": 0.6, "weight_decay": 1e-6}}
