"""Exemplar: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase
from sslcli.views import ViewConfig


class ExemplarConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1905.03670"
    summary: ClassVar[str] = ("contrastive: 8 augmented copies of every image, a triplet loss with batch-hard mining "
                              "(copies of one image positive, others negative) (S4L-Exemplar, Zhai et al. 2019)")
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "Exemplar"
    recipes: ClassVar[dict[str, str]] = {
        "s4l-exemplar": "S4L-Exemplar: the Exemplar loss plus a supervised head on 10 % of the labels "
                        "(data.label_fraction)",
    }
    tiny: ClassVar[dict[str, Any]] = {"copies": 3, "embedding_dim": 16}
    name: Literal["exemplar"] = "exemplar"
    copies: int = Field(8, ge=2, description="augmented copies of every image in the batch, each drawn with the "
                        "spec's augmentation (S4L and Kolesnikov et al.: 8)")
    embedding_dim: int = Field(1000, gt=0, description="size of the L2-normalised embedding a linear head gives "
                               "the encoder's pooled features, the triplet loss's space (reference code: "
                               "embed_dim 1000, the ResNet's last layer)")
    margin: float = Field(0.5, gt=0, description="triplet margin on Euclidean distances between unit embeddings "
                          "(reference code: 0.5)")
    mining: Literal["batch_hard", "semi_hard"] = Field("batch_hard", description="batch_hard: per anchor its "
                                                       "farthest copy and nearest other image (Hermans et al. "
                                                       "2017, as the S4L paper); semi_hard: per (anchor, copy) "
                                                       "pair the nearest other image farther than the copy "
                                                       "(Schroff et al. 2015, the reference code's "
                                                       "triplet_semihard_loss)")

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """`copies` views alike, each drawn independently."""
        return [augment] * self.copies

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Reference code (config/exemplar/imagenet.sh): SGD momentum 0.9, lr 0.1 per 256 images, weight decay
        # 1e-4, 5 warm-up epochs of 35; augmentation: an Inception crop, a flip and grayscale with p 0.66, no
        # colour jitter, no blur.
        return {"optim": {"name": "sgd", "base_lr": 0.1, "weight_decay": 1e-4, "warmup_epochs": 5},
                "augment": {"scale": [0.08, 1.0], "jitter_p": 0.0, "gray_p": 0.66, "blur_p": 0.0,
                            "solarize_p": 0.0}}
