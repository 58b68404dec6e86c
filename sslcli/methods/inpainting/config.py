"""Inpainting: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class InpaintingConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1604.07379"
    summary: ClassVar[str] = ("pretext: rebuild a masked region from its context, weighted L2 (+ optional "
                              "adversarial term) (Pathak et al. 2016)")
    family: ClassVar[str] = "pretext"
    num_views: ClassVar[int] = 1
    model: ClassVar[str] = "Inpainting"
    encoder_kind: ClassVar[str] = "convnet"
    tiny: ClassVar[dict[str, Any]] = {"decoder_dim": 16}
    name: Literal["inpainting"] = "inpainting"
    region: Literal["center", "blocks", "shapes"] = Field("center", description="the hole: a central square "
                                                          "(paper's main setting), random blocks (paper section "
                                                          "3.3), or random smooth shapes covering hole_fraction^2 "
                                                          "of the image (a stand-in for the paper's random "
                                                          "regions, PASCAL VOC object outlines)")
    hole_fraction: float = Field(0.5, gt=0, lt=1, description="side of the central square / image side (paper: "
                                 "0.5, a quarter of the area)")
    num_blocks: int = Field(4, gt=0, description="random blocks, each a square of side hole_fraction / 2, so 4 "
                            "cover at most 1/4 of the image (paper: 'up to 1/4')")
    shape_cells: int = Field(4, ge=2, description="region=shapes: the side of the noise grid the shapes come from "
                             "(larger: more, smaller blobs)")
    overlap: int | None = Field(None, ge=0, description="px of context around the hole the decoder also predicts "
                                "(paper: 7 at 128 px; default 7/128 of the side, at least 1)")
    overlap_weight: float = Field(10.0, ge=0, description="loss weight of that overlap band over the hole's (paper: 10)")
    decoder_dim: int = Field(256, gt=0, description="width of the decoder's first conv, halving per x2 stage "
                             "(paper: 512 -> 64 up-convolutions)")
    adversarial_weight: float = Field(0.0, ge=0, description="weight of the adversarial term, the L2 term weighing "
                                      "1 - this (paper: 0.001; 0 = off, no discriminator)")
    discriminator_dim: int = Field(64, gt=0, description="width of the discriminator's first conv (paper: 64)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper (released code): Adam lr 2e-4 at batch 64 (8e-4 x batch / 256), beta1 0.5, no weight decay.
        return {"optim": {"name": "adamw", "base_lr": 8e-4, "weight_decay": 0.0, "betas": [0.5, 0.999],
                          "warmup_epochs": 0},
                "augment": {"scale": [0.2, 1.0], **GEOMETRIC_VIEW}}
