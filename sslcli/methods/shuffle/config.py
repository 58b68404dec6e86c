"""Shuffle and Learn: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class ShuffleConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1603.08561"
    summary: ClassVar[str] = ("pretext, video: is a tuple of three frames in temporal order or shuffled; "
                              "motion-weighted tuples (Misra et al. 2016)")
    family: ClassVar[str] = "pretext"
    model: ClassVar[str] = "ShuffleAndLearn"
    frames_per_sample: ClassVar[int] = 5  # a < b < c < d < e: (b, c, d) in order, (b, a, d) or (b, e, d) not
    num_views: ClassVar[int] = 1  # each frame is augmented once
    tiny: ClassVar[dict[str, Any]] = {"head_hidden_dim": 0}
    name: Literal["shuffle"] = "shuffle"
    max_span: int = Field(8, ge=2, description="frames b and d of a tuple are at most this far apart, at data.fps "
                          "(paper: tau_max = 60 frames of 30 fps video)")
    min_gap: int = Field(2, ge=1, description="the frames a and e swapped in for a negative lie at least this far "
                         "outside (b, d) (paper: tau_min = 15 frames)")
    positive_fraction: float = Field(0.25, gt=0, lt=1, description="the share of in-order tuples in a batch (the "
                                     "paper trains with more negatives than positives)")
    motion_weighted: bool = Field(True, description="draw tuples where frames move (paper: windows of high optical "
                                  "flow; here the mean absolute frame difference stands in for the flow)")
    head_hidden_dim: int = Field(0, ge=0, description="hidden width of the classifier on the three frames' "
                                 "concatenated features; 0 = linear (paper: fc8 on the concatenated fc7 features)")

    def frame_sampler(self):
        from sslcli.methods.temporal import OrderSampler

        return OrderSampler(self.max_span, self.min_gap, self.motion_weighted)

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: SGD, lr 1e-2, momentum 0.9, weight decay 5e-4 (CaffeNet). A mild crop and no flip or colour change:
        # the order is read from how things move between frames.
        return {"optim": {"name": "sgd", "base_lr": 0.05, "weight_decay": 5e-4, "warmup_epochs": 1},
                "augment": {"scale": [0.7, 1.0], "hflip_p": 0.0, **GEOMETRIC_VIEW}}
