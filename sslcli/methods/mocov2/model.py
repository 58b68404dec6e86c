"""MoCo v2: Improved Baselines with Momentum Contrastive Learning.

Chen, Fan, Girshick, He 2020, https://arxiv.org/abs/2003.04297 (MoCo v1: https://arxiv.org/abs/1911.05722)
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from sslcli import distributed
from sslcli.heads import mlp
from sslcli.losses import info_nce
from sslcli.methods.base import Budget, MethodDefaults, StepOut, enqueue
from sslcli.methods.mocov2.config import MoCoV2Config
from sslcli.methods.pretext import add_rotation_loss, s4l_rotation


class MoCoV2(MethodDefaults, nn.Module):
    """A query encoder + MLP projector trained with InfoNCE against a momentum key encoder and a queue.

    MoCo v1 is the same method with a linear projector (proj_layers=1), temperature 0.07 and v1's augmentation
    (no blur, colour jitter 0.4 always applied): the mocov1-* presets. InfoMin (arXiv 2005.10243) is MoCo v2
    with the InfoMin augmentation (augment.randaugment_ops) and temperature 0.15: the infomin-* presets.

    Deviation: no shuffled BN on one process (the paper shuffles the key batch across GPUs so BN cannot
    leak which key is the positive). The query and key batches pass through BN in separate forwards,
    so there is no shared statistic to exploit within one process; solo-learn does the same. Under
    torchrun BN stays per rank (sync_bn off by default) and keys are not shuffled across ranks either.
    """

    # The paper shuffles BN across GPUs instead of synchronising it; sslcli keeps BN per rank (see above).

    def __init__(self, cfg: MoCoV2Config, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        # MoCo v2's MLP head has no batch norm; with proj_layers=1 it is MoCo v1's linear fc (with its bias).
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim, num_layers=cfg.proj_layers,
                             batch_norm=False)
        self.rotation = s4l_rotation(feature_dim, cfg.rotation_weight)  # S4L, off by default
        self.add_momentum_targets({"key_encoder": "encoder", "key_projector": "projector"}, cfg.momentum,
                                  cfg.final_momentum, budget.total_steps)
        self.register_buffer("queue", nn.functional.normalize(torch.randn(cfg.queue_size, cfg.proj_out_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x1, x2 = views
        queries = torch.cat([x1, x2]) if self.cfg.symmetric else x1
        h = self.encoder(queries)
        q = self.projector(h)
        with torch.no_grad():
            keys = torch.cat([x2, x1]) if self.cfg.symmetric else x2
            k = self.key_projector(self.key_encoder(keys))
        # The queue buffer is only written after the step (staged), once backward has used it: no copy needed.
        queue = self.queue
        if self.cfg.symmetric:
            (q1, q2), (k2, k1) = q.chunk(2), k.chunk(2)
            loss = (info_nce(q1, k2, self.cfg.temperature, queue) + info_nce(q2, k1, self.cfg.temperature, queue)) / 2
        else:
            loss = info_nce(q, k, self.cfg.temperature, queue)
        # Under torchrun the queue takes every rank's keys, so it stays the same on all of them. It takes them
        # only after the update was applied, so a skipped step leaves it as it was.
        keys = distributed.gather(nn.functional.normalize(k.float(), dim=1))
        self.stage("queue", partial(enqueue, self.queue, self.queue_ptr, keys))
        logs: dict[str, Tensor] = {}
        loss = add_rotation_loss(self.rotation, self.cfg.rotation_weight, self.encoder, x1, loss, logs)
        n = x1.shape[0]  # query of view 1 against the key of view 2: the pair alignment is about
        return StepOut(loss=loss, logs={"loss": loss.detach(), **logs},
                       embeddings={"features": (h[:n],), "projections": (q[:n], k[:n])})
