"""SwAV: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase, MultiCrop


class SwAVConfig(MultiCrop, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.09882"
    summary: ClassVar[str] = "clustering: Sinkhorn codes, swapped prediction, multi-crop (Caron et al. 2020)"
    family: ClassVar[str] = "clustering"
    model: ClassVar[str] = "SwAV"
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "num_prototypes": 20, "num_local_crops": 2, "queue_length": 16, "queue_start_epoch": 0}
    name: Literal["swav"] = "swav"
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the predictions (paper: 0.1)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="feature size compared with the prototypes (paper: 128)")
    num_prototypes: int = Field(3000, gt=0, description="K prototypes (paper: 3000 on ImageNet)")
    sinkhorn_iterations: int = Field(3, gt=0, description="Sinkhorn-Knopp iterations (paper: 3)")
    epsilon: float = Field(0.05, gt=0, description="entropy regularisation of the codes (paper: 0.05)")
    freeze_prototypes_epochs: float = Field(1, ge=0, description="prototypes get no update this long (paper: 1)")
    queue_length: int = Field(0, ge=0, description="past features added to Sinkhorn for small batches "
                              "(paper: 3840 below batch 256; 0 = off)")
    queue_start_epoch: float = Field(15, ge=0, description="epoch from which the queue is filled (paper: 15)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: LARS, lr 4.8 at batch 4096 (0.3 per 256 images), weight decay 1e-6; global crops (0.14, 1).
        return {"optim": {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6},
                "augment": {"scale": [0.14, 1.0]}}
