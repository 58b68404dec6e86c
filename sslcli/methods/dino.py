"""DINO: Emerging Properties in Self-Supervised Vision Transformers.

Caron et al. 2021, https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli import distributed
from sslcli.ema import frozen_copy, update_ema
from sslcli.heads import DINOHead
from sslcli.losses import dino_loss
from sslcli.methods.base import Budget, MethodDefaults, StepOut, views_by_size
from sslcli.methods.configs import DINOConfig
from sslcli.schedules import cosine_increase, linear_warmup_then_constant
from sslcli.views import ViewConfig, asymmetric_views, multi_crop


class DINO(MethodDefaults, nn.Module):
    """A student (encoder + DINO head) matches, on every crop, the centred and sharpened output of an
    EMA teacher on the two global crops. The center is an EMA of the teacher's batch means (updated after
    the step, as in the official code's update_center); the teacher's backbone is what gets exported,
    since it is the better encoder (paper section 5.2)."""

    step_schedules = ("momentum", "teacher_temperature")

    def __init__(self, cfg: DINOConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder
        self.head = DINOHead(feature_dim, cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim,
                             norm_last_layer=cfg.norm_last_layer, batch_norm=cfg.head_batch_norm)
        self.teacher_encoder = frozen_copy(encoder)
        self.teacher_head = frozen_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.momentum = cosine_increase(cfg.momentum, cfg.final_momentum, budget.total_steps).tolist()
        warmup = budget.epochs_to_steps(cfg.warmup_teacher_temperature_epochs)
        self.teacher_temperature = linear_warmup_then_constant(
            cfg.warmup_teacher_temperature, cfg.teacher_temperature, warmup, budget.total_steps).tolist()
        self.freeze_steps = budget.epochs_to_steps(cfg.freeze_last_layer_epochs)
        self._pending_center: Tensor | None = None

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        global_views = asymmetric_views(augment, self.cfg.view_blur_p, self.cfg.view_solarize_p)
        size = self.cfg.local_crop_size or max(8, round(augment.size * 3 / 7))
        return multi_crop(global_views, self.cfg.num_local_crops, size, self.cfg.local_crop_scale,
                          local_blur_p=self.cfg.local_blur_p)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        groups = views_by_size(views)
        h = [self.encoder(torch.cat(group)) for group in groups]
        student = torch.cat([self.head(hi) for hi in h]).chunk(len(views))
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_encoder(torch.cat(views[:2]))).float()
            temperature = self.teacher_temperature[min(step, len(self.teacher_temperature) - 1)]
            probs = F.softmax((teacher - self.center) / temperature, dim=-1).chunk(2)
            # The center is the global batch's mean (all-reduced under torchrun, as in the official code).
            total = distributed.all_reduce_(teacher.sum(dim=0, keepdim=True))
            self._pending_center = total / (teacher.shape[0] * distributed.world_size())
        loss = dino_loss(list(student), list(probs), self.cfg.student_temperature)
        # Monitors read the student's features of the two global crops (the head's output can be 65k wide).
        return StepOut(loss=loss, logs={"loss": loss.detach()}, embeddings={"features": h[0].chunk(len(groups[0]))[:2]})

    def cancel_gradients(self, step: int) -> None:
        """The last layer loses its gradient for the first epoch (the official cancel_gradients_last_layer)."""
        if step < self.freeze_steps:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        if self._pending_center is not None:
            self.center.mul_(self.cfg.center_momentum).add_(self._pending_center, alpha=1 - self.cfg.center_momentum)
            self._pending_center = None
        m = self.momentum[min(step, len(self.momentum) - 1)]
        update_ema(self.teacher_encoder, self.encoder, m)
        update_ema(self.teacher_head, self.head, m)

    def export_encoder(self) -> nn.Module:
        return self.teacher_encoder
