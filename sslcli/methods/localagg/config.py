"""LocalAgg: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase

# The reference's ResNet runs (neuroailab/LocalAggregation exp_configs/la_final.json, res18_LA and res50_LA):
# 10 k-means of 30,000 clusters each on ImageNet's training images, about 43 images a cluster.
REFERENCE_IMAGES = 1_281_167
REFERENCE_CLUSTERS = 30_000


class LocalAggConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1903.12355"
    summary: ClassVar[str] = ("clustering: a memory bank of 128-d embeddings; each image's close neighbours (its "
                              "clusters in repeated k-means) drawn together within its background neighbours (its "
                              "k nearest entries) (Local Aggregation, Zhuang et al. 2019)")
    family: ClassVar[str] = "clustering"
    num_views: ClassVar[int] = 1
    uses_indices: ClassVar[bool] = True
    model: ClassVar[str] = "LocalAgg"
    tiny: ClassVar[dict[str, Any]] = {"embedding_dim": 16, "num_clusters": 3, "num_background": 8,
                                      "instance_negatives": 8}
    name: Literal["localagg"] = "localagg"
    embedding_dim: int = Field(128, gt=0, description="size of the L2-normalised embedding a linear head gives "
                               "the encoder's features, and of each memory-bank entry (paper: 128)")
    temperature: float = Field(0.07, gt=0, description="tau of exp(v_j . v / tau) (paper: 0.07)")
    bank_momentum: float = Field(0.5, ge=0, lt=1, description="m of an image's bank entry update after each step, "
                                 "v <- normalise(m v + (1 - m) f) (paper: 0.5)")
    num_background: int = Field(4096, gt=0, description="k, the background neighbours B_i: the k bank entries "
                                "nearest v_i (paper: 4096; at most the number of images). A count, not a share "
                                "of the images: with the clusters' share kept, B_i stays about 10x C_i as in the "
                                "reference")
    num_clusters: int | None = Field(None, gt=0, description="clusters of each k-means of the bank; default: the "
                                     "reference's 30,000 for ImageNet's 1,281,167 images in proportion to the "
                                     "training images (one per ~43 images: 468 for 20,000); at most one per image")
    num_clusterings: int = Field(10, gt=0, description="H, the k-means runs from different starts whose clusters "
                                 "together give the close neighbours C_i (reference, ResNet-18 and -50: 10)")
    kmeans_iterations: int = Field(10, gt=0, description="rounds of each spherical k-means, rerun at every epoch's "
                                   "end (DeepCluster v2's clustering; the reference's faiss k-means: 20)")
    bank_fill_epochs: int = Field(0, ge=0, description="epochs at the start that train nothing and write the "
                                  "untrained network's embeddings into the bank in place of its random initial "
                                  "vectors (InstDisc's bank_fill_epochs; paper: 0; ours, for runs of a few epochs)")
    instance_epochs: int = Field(0, ge=0, description="epochs after those trained with instance recognition "
                                 "(InstDisc's softmax against the bank), the warm start the paper initialises "
                                 "from; 0 = Local Aggregation from the first trained step")
    instance_negatives: int = Field(4096, gt=0, description="bank entries drawn as negatives in those epochs "
                                    "(InstDisc: 4096)")

    def background_count(self, num_images: int) -> int:
        """The background neighbours on `num_images` training images: num_background, at most every image."""
        return min(self.num_background, num_images)

    def cluster_count(self, num_images: int) -> int:
        """The clusters of each k-means on `num_images` training images: num_clusters, or by default the
        reference's share (30,000 of ImageNet's images); between 1 and one per image."""
        wanted = self.num_clusters or round(REFERENCE_CLUSTERS * num_images / REFERENCE_IMAGES)
        return max(1, min(wanted, num_images))

    def untrained_epochs(self) -> int:
        return self.bank_fill_epochs

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD momentum 0.9, lr 0.03 at batch 128 (0.06 per 256 images), wd 1e-4, InstDisc's augmentation
        # (crop (0.2, 1), grayscale 0.2, colour jitter 0.4 always, flip).
        return {"optim": {"name": "sgd", "base_lr": 0.06, "weight_decay": 1e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                            "hue": 0.4, "jitter_p": 1.0, "gray_p": 0.2, "blur_p": 0.0, "solarize_p": 0.0}}
