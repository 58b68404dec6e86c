"""TCN: its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from sslcli.methods.config_base import GEOMETRIC_VIEW, MethodConfigBase


class TCNConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1704.06888"
    summary: ClassVar[str] = ("contrastive, video: frames close in time embed together, distant frames of the same "
                              "clip apart; triplet or n-pairs loss (Sermanet et al. 2018)")
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "TCN"
    frames_per_sample: ClassVar[int] = 3  # anchor, positive, negative
    num_views: ClassVar[int] = 1  # each frame is augmented once
    tiny: ClassVar[dict[str, Any]] = {"embedding_dim": 16, "head_hidden_dim": 32}
    name: Literal["tcn"] = "tcn"
    pos_window: int = Field(2, ge=1, description="the positive is at most this many frames (at data.fps) from the "
                            "anchor (paper: a small window around the anchor)")
    neg_margin: int = Field(8, ge=1, description="negatives are more than this many frames from the anchor, in the "
                            "same clip (paper: 'distant timesteps'; its margin range)")
    multi_view: bool = Field(False, description="multi-view TCN: DATA is SEQUENCE/VIEW clips (the views of a "
                             "sequence are the clips of one folder, synchronised); the positive is the anchor's moment "
                             "in another view, the negative another moment of the anchor's view (paper's main "
                             "setting); false: single-view, the positive a nearby frame of the anchor's clip")
    loss: Literal["triplet_margin", "n_pairs"] = Field("triplet_margin", description="triplet_margin: the paper's "
                                                       "eq. 1 on L2-normalised embeddings; n_pairs: InfoNCE of each "
                                                       "anchor against the batch's positives and its own negative "
                                                       "(the n-pairs loss of the authors' later multi-view code)")
    margin: float = Field(0.2, gt=0, description="alpha of the triplet loss (paper: 0.2)")
    temperature: float = Field(0.1, gt=0, description="n_pairs: temperature of the cosine similarities")
    embedding_dim: int = Field(32, gt=0, description="the embedding size (paper: 32)")
    head_hidden_dim: int = Field(512, ge=0, description="hidden width of the embedding head on the pooled features; "
                                 "0 = a linear head (paper: two conv layers, a spatial softmax and a fully "
                                 "connected layer on Inception's Mixed_5d)")

    @model_validator(mode="after")
    def _negatives_beyond_positives(self) -> TCNConfig:
        if self.neg_margin < self.pos_window:
            raise ValueError(f"neg_margin ({self.neg_margin}) must be at least pos_window ({self.pos_window}): a "
                             "negative may not be closer than a positive")
        return self

    def frame_sampler(self):
        from sslcli.methods.temporal import MultiViewSampler, TimeContrastiveSampler

        if self.multi_view:
            return MultiViewSampler(self.neg_margin)
        return TimeContrastiveSampler(self.pos_window, self.neg_margin)

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # The paper fine-tunes with SGD/Adam from ImageNet weights and no augmentation named; here a mild crop keeps
        # two nearby frames from being told apart by their pixels alone, and no colour change (a frame's colours are
        # part of what time changes).
        return {"optim": {"name": "adamw", "base_lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 1},
                "augment": {"scale": [0.6, 1.0], **GEOMETRIC_VIEW}}
