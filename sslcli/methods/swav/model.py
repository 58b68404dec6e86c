"""SwAV: Unsupervised Learning of Visual Features by Contrasting Cluster Assignments.

Caron et al. 2020, https://arxiv.org/abs/2006.09882
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.heads import NormalizedLinear, mlp
from sslcli.losses import sinkhorn, swapped_prediction
from sslcli.methods.base import Budget, MethodDefaults, StepOut, enqueue, views_by_size
from sslcli.methods.swav.config import SwAVConfig


class SwAV(MethodDefaults, nn.Module):
    """Encoder -> projector -> L2-normalised z -> scores against normalised prototypes. The codes of each
    global crop (Sinkhorn-Knopp, no gradient) are predicted from every other crop (swapped prediction).

    Multi-crop: 2 global crops at the image size plus num_local_crops small ones; only the global crops
    get codes (section 3.2). The prototypes are frozen for the first epoch, as in the paper.
    """

    def __init__(self, cfg: SwAVConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, cfg.proj_out_dim)
        self.prototypes = NormalizedLinear(cfg.proj_out_dim, cfg.num_prototypes)
        self.frozen = budget.until(cfg.freeze_prototypes_epochs)
        self.queue_closed = budget.until(cfg.queue_start_epoch)
        self.batch_size: int | None = None
        if cfg.queue_length:
            self.register_buffer("queue", torch.zeros(2, cfg.queue_length, cfg.proj_out_dim))
            self.register_buffer("queue_ptr", torch.zeros(2, dtype=torch.long))

    def queue_ready(self, step: int) -> bool:
        """The queue joins Sinkhorn once it has been filled entirely (a function of the step, so no host sync)."""
        if not self.cfg.queue_length or self.batch_size is None:
            return False
        steps_to_fill = -(-self.cfg.queue_length // self.batch_size)
        return step >= steps_to_fill and self.queue_closed.at(step - steps_to_fill) < 0.5

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        with torch.no_grad():  # the prototypes stay on the unit sphere (the paper normalises them every step)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        self.batch_size = views[0].shape[0]
        h = [self.encoder(torch.cat(group)) for group in views_by_size(views)]
        z = torch.cat([F.normalize(self.projector(hi), dim=1) for hi in h]).chunk(len(views))
        scores = [self.prototypes(zi) for zi in z]
        codes = []
        with torch.no_grad():
            for i in range(2):
                s = scores[i].detach()
                if self.queue_ready(step):
                    s = torch.cat([self.prototypes(self.queue[i]), s])
                # With a queue the codes are computed over queue + batch; the batch's are the last rows.
                codes.append(sinkhorn(s, self.cfg.epsilon, self.cfg.sinkhorn_iterations)[-z[i].shape[0]:])
        loss = swapped_prediction(scores, codes, self.cfg.temperature)
        if self.cfg.queue_length and self.queue_closed.at(step) < 0.5:
            self.stage("queue", partial(self.enqueue, torch.stack([z[0].detach(), z[1].detach()])))
        global_h = h[0].chunk(len(views_by_size(views)[0]))  # the first group holds the two global crops
        return StepOut(loss=loss, logs={"loss": loss.detach()},
                       embeddings={"features": global_h[:2], "projections": z[:2]})

    def cancel_gradients(self, step: int) -> None:
        """Frozen prototypes lose their gradient after backward, so the optimizer leaves them as they are
        (the official code's way; a requires_grad toggle would change the parameter set DDP reduces)."""
        if self.frozen.at(step) > 0.5:
            self.prototypes.weight.grad = None

    def enqueue(self, z: Tensor) -> None:
        """The two global crops' projections [2, B, D] into their queues (after an applied step)."""
        for i in range(2):
            enqueue(self.queue[i], self.queue_ptr[i], z[i])
