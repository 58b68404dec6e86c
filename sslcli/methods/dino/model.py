"""DINO: Emerging Properties in Self-Supervised Vision Transformers.

Caron et al. 2021, https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.encoders import without_drop_path
from sslcli.heads import DINOHead
from sslcli.losses import dino_loss
from sslcli.methods.base import (
    Budget,
    MethodDefaults,
    StepOut,
    drop_gradients,
    teacher_temperatures,
    views_by_size,
)
from sslcli.methods.dino.config import DINOConfig


class DINO(MethodDefaults, nn.Module):
    """A student (encoder + DINO head) matches, on every crop, the centred and sharpened output of an
    EMA teacher on the two global crops. The center is an EMA of the teacher's batch means (updated after
    the step, as in the official code's update_center); the teacher's backbone is what gets exported,
    since it is the better encoder (paper section 5.2)."""

    def __init__(self, cfg: DINOConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = DINOHead(feature_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             norm_last_layer=cfg.norm_last_layer, batch_norm=cfg.head_batch_norm)
        self.add_momentum_targets({"teacher_encoder": "encoder", "teacher_head": "head"}, cfg.momentum,
                                  cfg.final_momentum, budget.total_steps)
        # A student built with timm's drop_path_rate drops paths; its teacher does not (the official code
        # gives the rate to the student only), though it stays in train mode like the official one.
        without_drop_path(self.teacher_encoder)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.teacher_temperature = teacher_temperatures(cfg, budget)
        self.frozen = budget.until(cfg.freeze_last_layer_epochs)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        groups = views_by_size(views)
        h = [self.encoder(torch.cat(group)) for group in groups]
        student = torch.cat([self.head(hi) for hi in h]).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(torch.cat(views[:2]))).float()
            probs = F.softmax((teacher - self.center) / self.teacher_temperature.at(step), dim=-1).chunk(2)
            # The center is the global batch's mean (all-reduced under torchrun, as in the official code), an
            # EMA updated after the step (the official update_center).
            total = distributed.all_reduce_(teacher.sum(dim=0, keepdim=True))
            mean = total / (teacher.shape[0] * distributed.world_size())
            self.stage("center", partial(self.update_center, mean))
        loss = dino_loss(list(student), list(probs), self.cfg.student_temperature)
        # Monitors read the student's features of the two global crops (the head's output can be 65k wide).
        return StepOut(loss=loss, logs={"loss": loss.detach()}, embeddings={"features": h[0].chunk(len(groups[0]))[:2]})

    def update_center(self, batch_mean: Tensor) -> None:
        """The center's EMA step towards this batch's teacher mean (after an applied step)."""
        self.center.mul_(self.cfg.center_momentum).add_(batch_mean, alpha=1 - self.cfg.center_momentum)

    def cancel_gradients(self, step: int) -> None:
        """The last layer loses its gradient for the first epoch (the official cancel_gradients_last_layer)."""
        if self.frozen.at(step) > 0.5:
            drop_gradients(self.head.last_layer)

    def export_encoder(self) -> nn.Module:
        return self.teacher_encoder
