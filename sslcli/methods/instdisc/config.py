"""InstDisc: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import (
    MemoryBankContrast,
)


class InstDiscConfig(MemoryBankContrast):
    paper: ClassVar[str] = "https://arxiv.org/abs/1805.01978"
    summary: ClassVar[str] = ("contrastive: each image its own class, a memory bank of 128-d embeddings, NCE "
                              "against 4096 drawn entries (Wu et al. 2018)")
    num_views: ClassVar[int] = 1
    model: ClassVar[str] = "InstDisc"
    tiny: ClassVar[dict[str, Any]] = {"embedding_dim": 16, "num_negatives": 8}
    sync_bn: ClassVar[bool] = False  # lemniscate trains with DataParallel: BN statistics per GPU
    name: Literal["instdisc"] = "instdisc"
    num_negatives: int = Field(4096, ge=0, description="K entries drawn per image as negatives, uniformly from "
                               "the other images' (paper: 4096, from all N); 0 = every entry, the full "
                               "non-parametric softmax (paper eq. 2, needs loss = softmax)")
    bank_fill_epochs: int = Field(0, ge=0, description="epochs at the start that train nothing and write the "
                                  "untrained network's embeddings into the bank in place of its random initial "
                                  "vectors, so that the first positives are images' embeddings, not noise (paper: "
                                  "0; ours, for runs of a few epochs)")

    def untrained_epochs(self) -> int:
        return self.bank_fill_epochs

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper / lemniscate main.py: SGD momentum 0.9, lr 0.03 at batch 256, weight decay 5e-4 in the paper
        # (1e-4 in main.py), no warm-up. Augmentation: crop (0.2, 1), grayscale 0.2, colour jitter 0.4 on
        # brightness, contrast, saturation and hue always applied, flip; no blur.
        return {"optim": {"name": "sgd", "base_lr": 0.03, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], "brightness": 0.4, "contrast": 0.4, "saturation": 0.4,
                            "hue": 0.4, "jitter_p": 1.0, "gray_p": 0.2, "blur_p": 0.0, "solarize_p": 0.0}}
