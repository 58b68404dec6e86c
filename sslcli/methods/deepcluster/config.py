"""DeepCluster: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from sslcli.methods.config_base import MethodConfigBase, MultiCrop


class DeepClusterConfig(MultiCrop, MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.09882"
    summary: ClassVar[str] = ("clustering: k-means of a memory of projections each epoch, prototypes = centroids, "
                              "multi-crop (DeepCluster v2, Caron et al. 2020)")
    family: ClassVar[str] = "clustering"
    model: ClassVar[str] = "DeepClusterV2"
    tiny: ClassVar[dict[str, Any]] = {"proj_hidden_dim": 64, "proj_out_dim": 32, "num_prototypes": [4, 3], "num_local_crops": 2}
    uses_indices: ClassVar[bool] = True
    memory_pass_epochs: ClassVar[int] = 1
    name: Literal["deepcluster"] = "deepcluster"
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype scores (paper: 0.1)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width (paper: 2048)")
    proj_out_dim: int = Field(128, gt=0, description="size of the projections kept in memory and clustered "
                              "(paper: 128)")
    num_prototypes: tuple[int, ...] = Field((3000, 3000, 3000), min_length=1, description="K of each k-means "
                                            "head, one clustering per head each epoch (paper: 3 x 3000 on ImageNet)")
    kmeans_iterations: int = Field(10, gt=0, description="k-means rounds per clustering (paper's code: 10)")

    @field_validator("num_prototypes")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in value):
            raise ValueError(f"every head needs at least one prototype, got {list(value)}")
        return value

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper's code (scripts/deepclusterv2_800ep_pretrain.sh): LARS, lr 4.8 at batch 4096 (0.3 per 256
        # images) down to 4.8e-3, weight decay 1e-6, 10 warm-up epochs; global crops (0.14, 1).
        return {"optim": {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6, "min_lr_ratio": 0.001},
                "augment": {"scale": [0.14, 1.0]}}
