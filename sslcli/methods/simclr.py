"""SimCLR: A Simple Framework for Contrastive Learning of Visual Representations.

Chen et al. 2020, https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import ViewConfig
from sslcli.heads import mlp
from sslcli.losses import nt_xent
from sslcli.methods.base import Budget, MethodConfigBase, StepOut


class SimCLRConfig(MethodConfigBase):
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.2, gt=0, description="NT-Xent temperature (paper: 0.1-0.5; solo-learn CIFAR: 0.2)")
    proj_hidden_dim: int = Field(2048, gt=0, description="projector hidden width")
    proj_out_dim: int = Field(128, gt=0, description="projection size z (paper: 128)")
    proj_layers: int = Field(2, ge=1, description="projector depth (paper: 2; SimCLR v2: 3)")


class SimCLR(nn.Module):
    """Two views of each image; an MLP projector with BN; NT-Xent over the 2N projections.

    Deviation: the projector has batch norm in its hidden layer, as in SimCLR's released code and
    solo-learn (the paper's eq. 2 shows none); it trains more stably at small batch sizes.
    """

    Config: ClassVar[type[BaseModel]] = SimCLRConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2002.05709"
    summary: ClassVar[str] = "contrastive: two views, in-batch negatives, NT-Xent (Chen et al. 2020)"

    def __init__(self, cfg: SimCLRConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers)

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        return [augment, augment]

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x1, x2 = views
        # One encoder pass over both views: BN sees the 2N batch, as in the paper's implementation.
        h = self.encoder(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).chunk(2)
        # Under torchrun the negatives are the global batch's, with gradients reaching every rank.
        loss = nt_xent(distributed.gather(z1), distributed.gather(z2), self.cfg.temperature)
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": (z1, z2)})

    def on_step_end(self, step: int) -> None:
        pass

    def export_encoder(self) -> nn.Module:
        return self.encoder
