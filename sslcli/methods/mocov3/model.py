"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import info_nce
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.mocov3.config import MoCoV3Config


class MoCoV3(MethodDefaults, nn.Module):
    """Encoder -> projector -> predictor for queries; momentum encoder -> projector for keys.

    Symmetric in-batch InfoNCE, each term scaled by 2 tau as in the paper's Algorithm 1 (it keeps the
    gradient scale independent of the temperature). Works with ResNets and ViTs: the encoder is any timm
    model. The projector and predictor have BN in every hidden layer and the projector's output has an
    affine-free BN, as in the official code.
    """

    def __init__(self, cfg: MoCoV3Config, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers,
                             last_batch_norm=True)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2)
        self.add_momentum_targets({"momentum_encoder": "encoder", "momentum_projector": "projector"}, cfg.momentum,
                                  cfg.final_momentum, budget.total_steps)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = torch.cat(views[:2])
        h = self.encoder(x)
        z = self.projector(h)
        q1, q2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            k1, k2 = self.momentum_projector(self.momentum_encoder(x)).chunk(2)
        # Under torchrun the in-batch negatives are the global batch's (queries with gradients, keys without).
        q1, q2, k1, k2 = (distributed.gather(t) for t in (q1, q2, k1, k2))
        tau = self.cfg.temperature
        loss = 2 * tau * (info_nce(q1, k2, tau) + info_nce(q2, k1, tau))
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": z.chunk(2)})
