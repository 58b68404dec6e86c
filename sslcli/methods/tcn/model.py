"""Time-Contrastive Networks: Self-Supervised Learning from Video (single-view).

Sermanet et al. 2018, https://arxiv.org/abs/1704.06888
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import n_pairs_info_nce, triplet_margin
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.tcn.config import TCNConfig
from sslcli.methods.temporal import encode_frames


class TCN(MethodDefaults, nn.Module):
    """Each sample is (anchor, positive, negative) frames of one clip (methods/temporal.py
    TimeContrastiveSampler); the encoder's pooled features go through an embedding head and are L2-normalised;
    the triplet loss pulls the positive within `margin` of the anchor closer than the negative (paper eq. 1), or
    the n-pairs InfoNCE contrasts each anchor with every positive of the batch and its own negative."""

    def __init__(self, cfg: TCNConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = (mlp(feature_dim, cfg.head_hidden_dim, cfg.embedding_dim, batch_norm=False)
                     if cfg.head_hidden_dim else nn.Linear(feature_dim, cfg.embedding_dim))

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        h = encode_frames(self.encoder, views[0])  # [B, 3, D]: anchor, positive, negative
        z = F.normalize(self.head(h), dim=-1)
        anchor, positive, negative = z.unbind(1)
        if self.cfg.loss == "triplet_margin":
            loss = triplet_margin(anchor, positive, negative, self.cfg.margin)
        else:  # the batch's positives are the negatives of every other anchor: the global batch's under torchrun
            loss = n_pairs_info_nce(anchor, distributed.gather(positive), self.cfg.temperature, negative,
                                    offset=distributed.rank() * anchor.shape[0])
        logs = {"loss": loss.detach(),
                "pos_distance": (anchor - positive).detach().pow(2).sum(1).mean(),
                "neg_distance": (anchor - negative).detach().pow(2).sum(1).mean()}
        return StepOut(loss=loss, logs=logs, embeddings={"features": (h[:, 0], h[:, 1]), "embeddings": (anchor, positive)})
