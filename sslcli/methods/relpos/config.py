"""RelPos: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class RelPosConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1505.05192"
    summary: ClassVar[str] = "pretext: where is the second patch, which of the centre's 8 neighbours (Doersch et al. 2015)"
    family: ClassVar[str] = "pretext"
    num_views: ClassVar[int] = 1  # the paper only rescales the image
    model: ClassVar[str] = "RelPos"
    tiny: ClassVar[dict[str, Any]] = {"patch_dim": 16, "hidden_dim": 32}
    name: Literal["relpos"] = "relpos"
    patch_fraction: float = Field(2 / 3, gt=0, le=1, description="patch side / grid pitch, the rest is the gap "
                                  "(paper: 96 px patches, 48 px gap, pitch 144). Patches are fed at their own size: "
                                  "floor(image_size // 3 * patch_fraction) px, e.g. 14 px at 64 px, 21 px at 96 px "
                                  "(rounded down to the patch size for a ViT)")
    jitter_fraction: float = Field(0.05, ge=0, lt=0.5, description="largest shift of each patch in each axis, "
                                   "as a fraction of the pitch (paper: up to 7 px of 144)")
    color_drop: bool = Field(True, description="per patch, keep one random colour channel and replace the other "
                             "two by Gaussian noise of 1/100 its std, against chromatic aberration (paper: 'color "
                             "dropping'; its alternative, projection, is not implemented)")
    downsample_p: float = Field(0.0, ge=0, le=1, description="probability that a patch is shrunk (area) to a "
                                "random side and enlarged back (bilinear), for robustness to pixelation (paper: "
                                "'some patches', fraction not given; 0 = off)")
    downsample_min_side: float = Field(10 / 96, gt=0, le=1, description="smallest side a shrunk patch gets, as a "
                                       "fraction of the patch side (paper: as little as 100 pixels of 96 x 96)")
    patch_dim: int = Field(4096, gt=0, description="per-patch layer after the shared encoder (paper: fc6, 4096)")
    hidden_dim: int = Field(4096, gt=0, description="hidden layer over the 2 concatenated patches (paper: fc7, 4096)")

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD with batch norm (Caffe, batch 128 pairs, weight decay 5e-4); the image is only resized
        # (150k-450k pixels) before sampling patches, so the view is a mild crop and a flip.
        return {"optim": {"name": "sgd", "base_lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0},
                "augment": {"scale": [0.5, 1.0], **GEOMETRIC_VIEW}}
