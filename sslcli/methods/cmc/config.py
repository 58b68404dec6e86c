"""CMC: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import (
    MemoryBankContrast,
)


class CMCConfig(MemoryBankContrast):
    paper: ClassVar[str] = "https://arxiv.org/abs/1906.05849"
    summary: ClassVar[str] = ("contrastive multiview: an L encoder and an ab encoder of Lab colour contrasted, "
                              "memory banks and NCE or in-batch negatives (Tian et al. 2019)")
    num_views: ClassVar[int] = 1
    model: ClassVar[str] = "CMC"
    rgb_only: ClassVar[bool] = True  # Lab colour of RGB images
    tiny: ClassVar[dict[str, Any]] = {"embedding_dim": 16, "num_negatives": 8}
    encoder_input: ClassVar[str] = ("CMC's L encoder: trained on grey images (the neutral grey of each pixel's Lab "
                                    "lightness, the same in all 3 channels); takes RGB normalised with mean/std "
                                    "like every encoder. The ab encoder is not exported")
    sync_bn: ClassVar[bool] = False  # the official code trains with DataParallel: BN statistics per GPU
    name: Literal["cmc"] = "cmc"
    negatives: Literal["bank", "batch"] = Field("bank", description="bank: each view's embedding against the "
                                                "other view's memory bank, K drawn entries (paper); batch: "
                                                "symmetric InfoNCE against the other view's embeddings of the "
                                                "(global) batch, no bank")
    num_negatives: int = Field(16384, ge=0, description="K entries drawn per image as negatives, uniformly from "
                               "the other images' (paper: 16384, from all N); 0 = every entry, needs "
                               "loss = softmax")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Official train_CMC.py: SGD momentum 0.9, lr 0.03, weight decay 1e-4, no warm-up; the views are a crop
        # (0.2, 1) and a flip, then Lab: no colour augmentation (it would change the ab view's content).
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 1e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}}
