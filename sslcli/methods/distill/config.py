"""Distillation: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from sslcli.encoder_args import split_init
from sslcli.methods.config_base import MethodConfigBase

RANDOM_TEACHER = "random:"  # random:NAME, a seeded random-init timm model: the negative control, and the tests'


class DistillConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/2006.10029"
    summary: ClassVar[str] = ("a student regresses a frozen pretrained teacher's normalised embeddings of the same "
                              "view (SimCLR v2's distillation; LightlyTrain's default)")
    family: ClassVar[str] = "distillation"
    model: ClassVar[str] = "Distill"
    sync_bn: ClassVar[bool] = False  # no contrast between the samples of a batch: nothing to gain from global BN
    tiny: ClassVar[dict[str, Any]] = {"teacher": "random:resnet10t", "proj_hidden_dim": 64}
    name: Literal["distill"] = "distill"
    teacher: str | None = Field(None, description="the frozen teacher: an sslcli encoder FILE (or run folder), "
                                "local-dir:DIR, hf-hub:ORG/NAME, pretrained:NAME (timm's weights from the Hugging "
                                "Face Hub cache) or random:NAME (a random init: a control, not a teacher)")
    loss: Literal["cosine", "smooth_l1"] = Field("cosine", description="between the student's projected and the "
                                                 "teacher's L2-normalised embeddings: 2 - 2 cos, or smooth L1")
    proj_hidden_dim: int = Field(2048, gt=0, description="the student's projection head (Linear-BN-ReLU-Linear) "
                                 "to the teacher's width: hidden width")
    teacher_resize: bool = Field(True, description="feed the teacher each view resized to its own input size "
                                 "(pretrained_cfg) and normalised with its own mean and std; off: the student's "
                                 "view size")

    @field_validator("teacher")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and value.startswith(RANDOM_TEACHER):
            if not value[len(RANDOM_TEACHER):]:
                raise ValueError("random:NAME needs a timm model name")
            return value
        if value is not None:
            kind, _ = split_init(value)
            if kind == "pretrained" and value == "pretrained":
                raise ValueError("a teacher of its own architecture: pretrained:NAME (e.g. pretrained:resnet50.a1_in1k)")
        return value

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # A regression onto fixed targets: AdamW at a moderate lr, as LightlyTrain's distillation.
        return {"optim": {"name": "adamw", "base_lr": 1e-3, "weight_decay": 0.05}}
