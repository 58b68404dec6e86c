"""DINO: Emerging Properties in Self-Supervised Vision Transformers.

Caron et al. 2021, https://arxiv.org/abs/2104.14294
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import Tensor, nn

from sslcli import distributed
from sslcli.augment import ViewConfig, asymmetric_views, multi_crop
from sslcli.ema import frozen_copy, update_ema
from sslcli.heads import DINOHead
from sslcli.losses import dino_loss
from sslcli.methods.base import Budget, MethodConfigBase, StepOut, views_by_size
from sslcli.schedules import cosine_increase, linear_warmup_then_constant


class DINOConfig(MethodConfigBase):
    name: Literal["dino"] = "dino"
    out_dim: int = Field(65536, gt=0, description="K, the head's output size (paper: 65536)")
    hidden_dim: int = Field(2048, gt=0, description="head MLP hidden width (paper: 2048)")
    bottleneck_dim: int = Field(256, gt=0, description="head bottleneck before the last layer (paper: 256)")
    head_batch_norm: bool = Field(False, description="BN in the head MLP (the paper's ResNet-50 setting)")
    norm_last_layer: bool = Field(True, description="weight-normalised last layer with its norm fixed at 1")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="last layer gets no update this long (paper: 1)")
    student_temperature: float = Field(0.1, gt=0, description="tau_s (paper: 0.1)")
    teacher_temperature: float = Field(0.07, gt=0, description="tau_t after the warm-up (paper ViT-S/16: 0.07)")
    warmup_teacher_temperature: float = Field(0.04, gt=0, description="tau_t at the start (paper: 0.04)")
    warmup_teacher_temperature_epochs: float = Field(30, ge=0, description="tau_t warm-up length (paper: 30)")
    center_momentum: float = Field(0.9, ge=0, lt=1, description="m of the center's EMA (paper: 0.9)")
    momentum: float = Field(0.996, ge=0, le=1, description="teacher EMA at the start (paper: 0.996)")
    final_momentum: float = Field(1.0, ge=0, le=1, description="teacher EMA at the end, cosine (paper: 1)")
    num_local_crops: int = Field(8, ge=0, description="small crops for the student only (official default: 8)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop (default: 3/7 of the "
                                        "image, as 96/224 in the paper)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.4), description="local crop area range (paper)")
    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of global view 1 / 2 (paper)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of global view 1 / 2")
    local_blur_p: float = Field(0.5, ge=0, le=1, description="blur odds of the local views (paper: 0.5)")


class DINO(nn.Module):
    """A student (encoder + DINO head) matches, on every crop, the centred and sharpened output of an
    EMA teacher on the two global crops. The center is an EMA of the teacher's batch means (updated after
    the step, as in the official code's update_center); the teacher's backbone is what gets exported,
    since it is the better encoder (paper section 5.2)."""

    Config: ClassVar[type[BaseModel]] = DINOConfig
    paper: ClassVar[str] = "https://arxiv.org/abs/2104.14294"
    summary: ClassVar[str] = "self-distillation: EMA teacher, centering, sharpening, multi-crop (Caron et al. 2021)"

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

    @staticmethod
    def spec_defaults(image_size: int) -> dict:
        # Paper (ViT-S/16): AdamW, lr 5e-4 x batch / 256, weight decay 0.04, 10 warm-up epochs; global crops (0.4, 1).
        return {"optim": {"name": "adamw", "base_lr": 5e-4, "weight_decay": 0.04},
                "augment": {"scale": [0.4, 1.0]}}

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
