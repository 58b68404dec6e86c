"""Exemplar (S4L-Exemplar): every image its own class, its augmented copies pulled together by a triplet loss.

Zhai et al. 2019, https://arxiv.org/abs/1905.03670; Kolesnikov et al. 2019, https://arxiv.org/abs/1901.09005
(reference code: google/revisiting-self-supervised self_supervision/exemplar.py)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.losses import triplet_loss
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.exemplar.config import ExemplarConfig


class Exemplar(MethodDefaults, nn.Module):
    """`copies` augmented copies of every image go through the encoder in one batch (batch norm sees all of
    them, as the reference's reshaped batch), a linear head gives each a unit embedding, and the triplet loss
    mines its triplets in the batch: the copies of an image are its positives, every copy of every other image
    a negative (batch-hard by default, semi-hard on request). With `--label-fraction` the run is S4L-Exemplar:
    the step adds the supervised head's cross entropy on the first copy's features (semi_supervised.py), as for
    any method.

    Deviations: the reference L2-normalises its embeddings over the batch axis (`tf.nn.l2_normalize(logits,
    axis=0)`), here each embedding is normalised, the usual reading of the triplet loss on the unit sphere;
    distances are Euclidean (TensorFlow's semi-hard loss uses squared ones); the head is a linear layer on the
    pooled features (the reference's ResNet ends in a 1000-way layer that serves as the embedding).
    Under torchrun every rank's embeddings are gathered (with gradients), so the triplets are mined in the
    global batch.
    """

    def __init__(self, cfg: ExemplarConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = nn.Linear(feature_dim, cfg.embedding_dim)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h = self.encoder(torch.cat(views))  # copy-major: rows c*B .. (c+1)*B are copy c of the batch
        z = F.normalize(self.head(h).float(), dim=1)
        copies = [distributed.gather(part) for part in z.chunk(len(views))]  # each [global batch, D]
        labels = torch.arange(copies[0].shape[0], device=z.device).repeat(len(views))
        loss = triplet_loss(torch.cat(copies), labels, self.cfg.margin, self.cfg.mining)
        # Monitors and S4L's supervised head see the first two copies (the head reads the first).
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(len(views))[:2], "projections": z.chunk(len(views))[:2]})
