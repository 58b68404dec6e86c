"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen et al. 2020, https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import nt_xent
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.configs import SimCLRConfig
from sslcli.methods.pretext import add_rotation_loss, s4l_rotation
from sslcli.views import ViewConfig


class SimCLR(MethodDefaults, nn.Module):
    """Two views of each image; an MLP projector with BN; NT-Xent over the 2N projections.

    Deviation: the projector has batch norm in its hidden layer, as in SimCLR's released code and
    solo-learn (the paper's eq. 2 shows none); it trains more stably at small batch sizes.
    """

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers)
        self.rotation = s4l_rotation(feature_dim, cfg.rotation_weight)  # S4L, off by default

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return [augment, augment]

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x1, x2 = views
        # One encoder pass over both views: BN sees the 2N batch, as in the paper's implementation.
        h = self.encoder(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).chunk(2)
        # Under torchrun the negatives are the global batch's, with gradients reaching every rank.
        loss = nt_xent(distributed.gather(z1), distributed.gather(z2), self.cfg.temperature)
        logs: dict[str, Tensor] = {}
        loss = add_rotation_loss(self.rotation, self.cfg.rotation_weight, self.encoder, x1, loss, logs)
        return StepOut(loss=loss, logs={"loss": loss.detach(), **logs},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})
