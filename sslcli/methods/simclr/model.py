"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen et al. 2020, https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import MLPLayout
from sslcli.losses import invariant_spread, nt_xent
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.pretext import add_rotation_loss, s4l_rotation
from sslcli.methods.simclr.config import SimCLRConfig


class SimCLR(MethodDefaults, nn.Module):
    """Two views of each image; an MLP projector with BN; NT-Xent over the 2N projections.

    Its presets also cover two relatives: SimCLR v2 (arXiv 2006.10029, a 3-layer projector whose first layer
    `sslcli finetune --keep-projection-layers 1` keeps: the simclrv2-* presets) and InvariantSpread (Ye et
    al. 2019, arXiv 1904.03436: a linear 128-d embedding and its own loss, method.loss=invariant_spread: the
    invariantspread-* presets). The projector is written beside the encoder (projector.safetensors).

    Deviation: the projector has batch norm in its hidden layer, as in SimCLR's released code and
    solo-learn (the paper's eq. 2 shows none); it trains more stably at small batch sizes.
    """

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector_layout = MLPLayout(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers)
        self.projector = self.projector_layout.build()
        self.rotation = s4l_rotation(feature_dim, cfg.rotation_weight)  # S4L, off by default

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x1, x2 = views
        h, (z1, z2) = self.project_views(views)
        # Under torchrun the negatives are the global batch's, with gradients reaching every rank.
        z1_all, z2_all = distributed.gather(z1), distributed.gather(z2)
        if self.cfg.loss == "invariant_spread":
            z = torch.cat([z1_all, z2_all])
            loss = invariant_spread(z, z.detach(), self.cfg.temperature)  # the released code detaches the keys
        else:
            loss = nt_xent(z1_all, z2_all, self.cfg.temperature)
        logs: dict[str, Tensor] = {}
        loss = add_rotation_loss(self.rotation, self.cfg.rotation_weight, self.encoder, x1, loss, logs)
        return StepOut(loss=loss, logs={"loss": loss.detach(), **logs},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})

    def export_projector(self) -> tuple[nn.Module, MLPLayout]:
        """The projection head, saved beside the encoder for SimCLR v2's fine-tuning from its first layer."""
        return self.projector, self.projector_layout
