"""InstDisc: Unsupervised Feature Learning via Non-Parametric Instance Discrimination.

Wu, Xiong, Yu & Lin 2018, https://arxiv.org/abs/1805.01978 (reference: zhirongw/lemniscate.pytorch)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.instdisc.config import InstDiscConfig
from sslcli.methods.memory_bank import MemoryBank, bank_loss


class InstDisc(MethodDefaults, nn.Module):
    """Every training image is its own class. One augmented view per image goes through the encoder and a
    linear head (the paper's fc, 128-d) to a unit embedding v, which is contrasted with the image's entry in
    a memory bank (the positive) and K = 4096 entries drawn uniformly from the other images' (the negatives)
    by NCE, then
    written back into the bank with the proximal update (momentum 0.5) after the step; see memory_bank.py.

    The exported encoder is the backbone (the head's 128-d embedding is the training target, not exported).
    Deviation: the learning rate follows sslcli's cosine schedule, not the paper's steps (x 0.1 at epochs
    120 and 160 of 200).

    With method.bank_fill_epochs (ours, 0 by default as the paper), the first epochs train nothing: their
    steps write the untrained network's embeddings into the bank in place of its random initial vectors
    (loss 0, every gradient dropped, as DeepCluster v2's memory pass), so that training starts against
    positives that are embeddings of the images. Without it, an entry keeps half of its random vector after
    the first epoch and a quarter after the second (momentum 0.5), and a run of a few epochs spends them
    fitting noise. NCE's Z is estimated on the first step that trains.
    """

    def __init__(self, cfg: InstDiscConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, cfg.embedding_dim)
        self.bank = MemoryBank(budget.num_images, cfg.embedding_dim, cfg.bank_momentum, "instdisc")
        self.fill_steps = budget.data_epochs_to_steps(cfg.bank_fill_epochs)  # passes over the data, not a schedule

    def draw(self, n: int, device: torch.device) -> tuple[Tensor | None]:
        """The negatives' draws [n, K] (MemoryBank.draw; None: every entry), from torch's generator of the device."""
        return (self.bank.draw(n, self.cfg.num_negatives, device),)

    def forward(self, views: list[Tensor], step: int, indices: Tensor) -> StepOut:
        x = views[0]
        h = self.encoder(x)
        v = F.normalize(self.head(h).float(), dim=1)
        filling = step < self.fill_steps
        if filling:  # a zero loss on the graph: backward runs as usual and cancel_gradients drops the gradients
            loss = (v * 0.0).sum()
        else:
            (draws,) = self.draw(x.shape[0], x.device)
            loss = bank_loss(self.bank, v, indices, draws, self.cfg.temperature, self.cfg.loss)
        self.bank.write(v, indices, replace=filling)
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": (h,), "projections": (v,)})

    def cancel_gradients(self, step: int) -> None:
        """The bank-filling epochs train nothing: no gradient reaches the optimizer (the loop skips its step)."""
        if step < self.fill_steps:
            for p in self.parameters():
                p.grad = None
