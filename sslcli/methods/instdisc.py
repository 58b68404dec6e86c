"""InstDisc: Unsupervised Feature Learning via Non-Parametric Instance Discrimination.

Wu, Xiong, Yu & Lin 2018, https://arxiv.org/abs/1805.01978 (reference: zhirongw/lemniscate.pytorch)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.configs import InstDiscConfig
from sslcli.methods.memory_bank import MemoryBank, bank_loss
from sslcli.views import ViewConfig


class InstDisc(MethodDefaults, nn.Module):
    """Every training image is its own class. One augmented view per image goes through the encoder and a
    linear head (the paper's fc, 128-d) to a unit embedding v, which is contrasted with the image's entry in
    a memory bank (the positive) and K = 4096 entries drawn uniformly from the other images' (the negatives)
    by NCE, then
    written back into the bank with the proximal update (momentum 0.5) after the step; see memory_bank.py.

    The exported encoder is the backbone (the head's 128-d embedding is the training target, not exported).
    Deviation: the learning rate follows sslcli's cosine schedule, not the paper's steps (x 0.1 at epochs
    120 and 160 of 200).
    """

    def __init__(self, cfg: InstDiscConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, cfg.embedding_dim)
        self.bank = MemoryBank(budget.num_images, cfg.embedding_dim, cfg.bank_momentum, "instdisc")

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return [augment]

    def draw(self, n: int, device: torch.device) -> tuple[Tensor | None]:
        """The negatives' draws [n, K] (MemoryBank.draw; None: every entry), from torch's generator of the device."""
        return (self.bank.draw(n, self.cfg.num_negatives, device),)

    def forward(self, views: list[Tensor], step: int, indices: Tensor) -> StepOut:
        x = views[0]
        h = self.encoder(x)
        v = F.normalize(self.head(h).float(), dim=1)
        (draws,) = self.draw(x.shape[0], x.device)
        loss = bank_loss(self.bank, v, indices, draws, self.cfg.temperature, self.cfg.loss)
        self.bank.stage(v, indices)
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": (h,), "projections": (v,)})

    def on_step_end(self, step: int) -> None:
        self.bank.commit()
