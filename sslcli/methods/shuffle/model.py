"""Shuffle and Learn: Unsupervised Learning using Temporal Order Verification.

Misra, Zitnick, Hebert 2016, https://arxiv.org/abs/1603.08561
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.heads import mlp
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.shuffle.config import ShuffleConfig
from sslcli.methods.temporal import encode_frames

# Rows of the five frames (a, b, c, d, e) that make each kind of tuple (paper, figure 2).
IN_ORDER, A_IN_MIDDLE, E_IN_MIDDLE = (1, 2, 3), (1, 0, 3), (1, 4, 3)


def tuple_kinds(batch: int, positive_fraction: float, device: torch.device) -> Tensor:
    """0 in order, 1 frame a swapped in, 2 frame e swapped in, for each position of the batch: a fixed pattern
    (the sampler already drew the tuples at random), so the same batch gets the same labels on a resume and on
    every rank. positive_fraction of the positions are in order, the others alternate a and e."""
    i = torch.arange(batch, device=device, dtype=torch.float64)
    positive = (i * positive_fraction).floor() != ((i + 1) * positive_fraction).floor()
    return torch.where(positive, 0, 1 + (i.long() % 2))


class ShuffleAndLearn(MethodDefaults, nn.Module):
    """Each sample is five frames a < b < c < d < e of one clip (methods/temporal.py OrderSampler); the tuple is
    (b, c, d), in order, or (b, a, d) / (b, e, d), shuffled. The three frames go through the one encoder, their
    pooled features are concatenated in tuple order and a classifier says in order or not (cross entropy)."""

    def __init__(self, cfg: ShuffleConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.classifier = (mlp(3 * feature_dim, cfg.head_hidden_dim, 2, batch_norm=False)
                           if cfg.head_hidden_dim else nn.Linear(3 * feature_dim, 2))
        self.register_buffer("rows", torch.tensor([IN_ORDER, A_IN_MIDDLE, E_IN_MIDDLE]), persistent=False)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        frames = views[0]  # [B, 5, 3, H, W]
        b = frames.shape[0]
        kinds = tuple_kinds(b, self.cfg.positive_fraction, frames.device)
        picked = frames[torch.arange(b, device=frames.device)[:, None], self.rows[kinds]]  # [B, 3, 3, H, W]
        h = encode_frames(self.encoder, picked)  # [B, 3, D]
        logits = self.classifier(h.flatten(1))
        target = (kinds == 0).long()  # 1: in order
        loss = F.cross_entropy(logits.float(), target)
        accuracy = (logits.detach().argmax(1) == target).float().mean()
        return StepOut(loss=loss, logs={"loss": loss.detach(), "accuracy": accuracy},
                       embeddings={"features": (h[:, 0], h[:, 1])})
