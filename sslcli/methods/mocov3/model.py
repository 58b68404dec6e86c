"""MoCo v3: An Empirical Study of Training Self-Supervised Vision Transformers.

Chen, Xie, He 2021, https://arxiv.org/abs/2104.02057
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sslcli import console, distributed
from sslcli.encoders import fix_sincos_position_embedding, freeze_patch_projection, is_vit
from sslcli.heads import mlp
from sslcli.losses import info_nce
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.mocov3.config import CONVNET_DEFAULTS, VIT_DEFAULTS, MoCoV3Config


class MoCoV3(MethodDefaults, nn.Module):
    """Encoder -> projector -> predictor for queries; momentum encoder -> projector for keys.

    Symmetric in-batch InfoNCE, each term scaled by 2 tau as in the paper's Algorithm 1 (it keeps the
    gradient scale independent of the temperature). Works with ResNets and ViTs (any timm model), each with
    the official code's own defaults (config.py): the temperature, the projector's depth and the predictor's
    last BN. With a ViT, the patch projection stays random and frozen and the position embedding is the fixed
    2-D sin-cos one (vits.py), unless the config turns them off. The projector and predictor have BN in every
    hidden layer and the projector's output has an affine-free BN, as in the official code.
    """

    def __init__(self, cfg: MoCoV3Config, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        vit = is_vit(encoder)
        family = VIT_DEFAULTS if vit else CONVNET_DEFAULTS
        self.temperature = cfg.temperature if cfg.temperature is not None else family.temperature
        proj_layers = cfg.proj_layers if cfg.proj_layers is not None else family.proj_layers
        # What ran, for spec.json and the encoder's metadata (pretraining.with_resolved_settings).
        self.resolved_settings = {"temperature": self.temperature, "proj_layers": proj_layers}
        if cfg.temperature is None or cfg.proj_layers is None:
            console.info(f"mocov3 with a {'ViT' if vit else 'ConvNet'} encoder: temperature {self.temperature:g}, "
                         f"{proj_layers}-layer projector (the official code's defaults for it; "
                         "--set method.temperature=T / method.proj_layers=N to choose)")
        if vit and cfg.sincos_pos_embed:
            fix_sincos_position_embedding(encoder)
        if vit and cfg.freeze_patch_embed:
            freeze_patch_projection(encoder)
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=proj_layers,
                             last_batch_norm=True)
        self.predictor = mlp(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim, num_layers=2,
                             last_batch_norm=family.pred_last_batch_norm)
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
        tau = self.temperature
        loss = 2 * tau * (info_nce(q1, k2, tau) + info_nce(q2, k1, tau))
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": h.chunk(2), "projections": z.chunk(2)})
