"""Distillation: a student encoder + projection head regresses a frozen teacher's normalised embeddings.

Chen et al. 2020 (SimCLR v2), https://arxiv.org/abs/2006.10029; the same view for teacher and student
(Beyer et al. 2022, arXiv 2106.05237), as LightlyTrain's distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslcli.encoders import EncoderInfo, build_encoder, normalisation
from sslcli.errors import UsageError
from sslcli.heads import mlp
from sslcli.methods.base import Budget, MethodDefaults, StepOut
from sslcli.methods.distill.config import RANDOM_TEACHER, DistillConfig


def load_teacher(reference: str, channels: int = 3) -> tuple[nn.Module, EncoderInfo]:
    """The teacher and how its inputs are prepared (size, mean, std, resampling filter): an sslcli encoder or
    weights sslcli did not train (weights.py), or random:NAME, a random init (seeded by the run's seed).

    Images of other than 3 channels (data.channels): the teacher takes them too, its RGB input conv adapted
    by timm's adapt_input_conv (weights.build_from), normalised with 0.5/0.25 per channel."""
    from sslcli import weights

    if reference.startswith(RANDOM_TEACHER):
        model, info = build_encoder(reference[len(RANDOM_TEACHER):], 224, small_stem=False, channels=channels)
        info.image_size = 0  # no size of its own: it sees the student's views as they are
        return model, info
    model, info, _ = weights.load_encoder_ref(reference, channels if channels != 3 else None)
    return model, info


class Distill(MethodDefaults, nn.Module):
    """student(view) -> projector -> normalised, against teacher(view) normalised; the teacher is frozen and
    stays in eval mode (no gradient, batch norm statistics untouched)."""

    def __init__(self, cfg: DistillConfig, encoder: nn.Module, feature_dim: int, budget: Budget):
        super().__init__()
        if cfg.teacher is None:
            raise UsageError("--method distill needs a teacher: --set method.teacher=FILE (an sslcli encoder), "
                             "local-dir:DIR, hf-hub:ORG/NAME or pretrained:NAME")
        self.cfg = cfg
        self.encoder = encoder
        channels = len(normalisation(encoder)[0])  # the student's input channels (data.channels)
        teacher, info = load_teacher(cfg.teacher, channels)
        self.teacher_info = info
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.projector = mlp(feature_dim, cfg.proj_hidden_dim, info.feature_dim)
        self.register_buffer("teacher_mean", torch.tensor(info.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("teacher_std", torch.tensor(info.std).view(1, -1, 1, 1), persistent=False)
        mean, std = normalisation(encoder)  # what the views were normalised with (the Augmenter's)
        self.register_buffer("student_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("student_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # frozen: its batch norm keeps its statistics, its dropout stays off
        return self

    def teacher_input(self, x: Tensor) -> Tensor:
        """The student's normalised view, as the teacher's own preprocessing would give it."""
        info = self.teacher_info
        if not self.cfg.teacher_resize:
            return x
        pixels = x.float() * self.student_std + self.student_mean
        if info.image_size and pixels.shape[-1] != info.image_size:
            pixels = F.interpolate(pixels, size=(info.image_size, info.image_size), mode=info.interpolation,
                                   **({} if info.interpolation == "nearest" else
                                      {"align_corners": False, "antialias": True}))
        return ((pixels - self.teacher_mean) / self.teacher_std).to(x.dtype)

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        x = torch.cat(views[:2])
        with torch.no_grad():
            target = F.normalize(self.teacher(self.teacher_input(x)).float(), dim=1)
        h = self.encoder(x)
        z = self.projector(h)
        p = F.normalize(z.float(), dim=1)
        if self.cfg.loss == "cosine":
            loss = 2 - 2 * (p * target).sum(dim=1).mean()
        else:
            loss = F.smooth_l1_loss(p, target, beta=0.5) * p.shape[1]  # per-dimension mean, scaled to a sum
        cosine = (p.detach() * target).sum(dim=1).mean()
        return StepOut(loss=loss, logs={"loss": loss.detach(), "teacher_cos": cosine},
                       embeddings={"features": h.chunk(2), "projections": z.chunk(2)})
