"""Tracking (Wang and Gupta): its settings, paper and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from sslcli.methods.config_base import MethodConfigBase
from sslcli.views import ViewConfig

DEFAULT_TRACK_FRAMES = 8


class TrackingConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1505.00687"
    summary: ClassVar[str] = ("contrastive, video: a moving patch tracked through a window of frames; its first and "
                              "last patch embed together, patches of other tracks apart; ranking loss with hard "
                              "negatives from the batch (Wang and Gupta 2015)")
    family: ClassVar[str] = "contrastive"
    model: ClassVar[str] = "Tracking"
    # The default window; the model reads the window's length from the batch, so method.track_frames may differ.
    frames_per_sample: ClassVar[int] = DEFAULT_TRACK_FRAMES
    num_views: ClassVar[int] = 1  # the frames reach the tracker whole (views() below)
    encoder_input: ClassVar[str] = ("trained on patches: squares of patch_fraction of the frame's side where the "
                                    "frames move, tracked through clips, at their own pixels (patch_size 0) or "
                                    "resized to patch_size; a whole frame is embedded by this encoder applied to the "
                                    "whole frame")
    # Random test frames hold nothing to track (their correlation is near 0): the tiny settings keep every track.
    tiny: ClassVar[dict[str, Any]] = {"embedding_dim": 16, "head_hidden_dim": 32, "min_correlation": -1.0}
    name: Literal["tracking"] = "tracking"
    track_frames: int = Field(DEFAULT_TRACK_FRAMES, ge=2, description="frames in a row, at data.fps, that a patch is "
                              "tracked through: its first and last patch are the positive pair (paper: 30 frames of "
                              "30 fps video)")
    motion_weighted: bool = Field(True, description="draw windows where frames move: a window's start with "
                                  "probability proportional to the mean absolute difference of its first two frames "
                                  "(paper: videos and frames with moving SURF points under IDT)")
    patch_fraction: float = Field(0.5, gt=0, le=1, description="a patch's side as a fraction of the frame's "
                                  "(paper: 227 px boxes in the video frames)")
    patch_size: int = Field(0, ge=0, description="side the encoder sees a patch at; 0 = its own pixels, no resizing")
    min_motion: float = Field(0.1, ge=0, description="a window is tracked only where its first patch moves: the "
                              "patch's mean absolute difference between the first two frames, over the first "
                              "frame's standard deviation, at least this (0.1: a tenth of the frame's contrast)")
    max_shift: float = Field(0.25, gt=0, le=1, description="the search window: a patch moves at most this fraction "
                             "of its side between two frames (0.25 of a 32 px patch: 8 px each way)")
    min_correlation: float = Field(0.5, ge=-1, le=1, description="a track whose best normalised cross-correlation "
                                   "falls below this at any frame is lost and gives no pair")
    margin: float = Field(0.5, gt=0, description="M of the ranking loss on 1 - cosine distances (paper: 0.5)")
    hard_negatives: int = Field(4, ge=1, description="the negatives with the highest loss kept per pair, of every "
                                "other patch of the (global) batch (paper: K = 4)")
    embedding_dim: int = Field(128, gt=0, description="the embedding size (paper: 1024, AlexNet's fc7 size)")
    head_hidden_dim: int = Field(512, ge=0, description="hidden width of the embedding head on the pooled features; "
                                 "0 = a linear head (paper: AlexNet's two fully connected layers)")

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        # The tracker needs the frames as they are: crops, flips or colour changes drawn per frame would move or
        # change a patch between frames. Only the size is kept; the pair's difference is the video's own.
        whole = augment.model_copy(update={"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip_p": 0.0, "jitter_p": 0.0,
                                           "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0, "randaugment_ops": 0})
        return [whole]

    def frame_sampler(self):
        from sslcli.methods.temporal import WindowSampler

        return WindowSampler(self.track_frames, self.motion_weighted)

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # The paper trains AlexNet with SGD in Caffe; here AdamW as TCN's presets (a triplet-style loss from
        # scratch). No augmentation: views() hands the tracker whole frames.
        return {"optim": {"name": "adamw", "base_lr": 1e-3, "weight_decay": 1e-4, "warmup_epochs": 1}}
