"""MoCoV2: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase, S4LRotation


class MoCoV2Config(S4LRotation, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2003.04297"
    summary: ClassVar[str] = "contrastive: momentum key encoder and a queue of negatives (Chen et al. 2020)"
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "MoCoV2"
    recipes: ClassVar[dict[str, str]] = {
        "mocov1": "MoCo v1: a linear head, temperature 0.07, v1's augmentation",
        "infomin": "InfoMin: the InfoMin augmentation (augment.randaugment_ops), temperature 0.15",
    }
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "queue_size": 20}
    sync_bn: ClassVar[bool] = False
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (paper: 0.2)")
    queue_size: int = Field(65536, gt=0, description="K negatives kept from past batches (paper: 65536)")
    proj_hidden_dim: int = Field(2048, gt=0, description="MLP projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="key/query size (paper: 128)")
    proj_layers: int = Field(2, ge=1, description="projector depth: 2 = the MLP head of MoCo v2 (Linear, ReLU, "
                             "Linear), 1 = MoCo v1's linear fc to proj_out_dim (arXiv 1911.05722)")
    momentum: float = Field(0.999, ge=0, le=1, description="key encoder EMA momentum at the start (paper: 0.999)")
    final_momentum: float = Field(0.999, ge=0, le=1, description="momentum at the end, cosine schedule "
                                  "(paper: constant 0.999; solo-learn MoCo V2+: 0.99 -> 0.999)")
    symmetric: bool = Field(False, description="also contrast q2 with k1 (MoCo V2+ in solo-learn); costs 2x")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # MoCo v2: SGD lr 0.03 per 256 images, weight decay 1e-4, cosine, no warm-up.
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0}}
