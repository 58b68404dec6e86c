"""Monodepth (Monodepth2's monocular training): its settings, papers and spec defaults (torch-free)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sslcli.methods.config_base import MethodConfigBase
from sslcli.views import ViewConfig


class MonodepthConfig(MethodConfigBase):
    paper: ClassVar[str] = "https://arxiv.org/abs/1806.01260"
    summary: ClassVar[str] = ("pretext, video: depth and ego-motion networks trained so that neighbouring frames "
                              "reproject onto each other (Monodepth2, Godard et al. 2017, 2019)")
    family: ClassVar[str] = "pretext"
    model: ClassVar[str] = "Monodepth"
    encoder_kind: ClassVar[Literal["any", "vit", "convnet"]] = "convnet"
    rgb_only: ClassVar[bool] = True  # the colour jitter and the pose network's 6 input channels are two RGB frames
    # t - gap, t (the target), t + gap, and the other view's t (stereo; the target again when monocular)
    frames_per_sample: ClassVar[int] = 4
    num_views: ClassVar[int] = 1
    tiny: ClassVar[dict[str, Any]] = {"decoder_channels": (4, 4, 8, 8, 8), "pose_encoder": "resnet10t",
                                      "pose_width": 8}
    name: Literal["monodepth"] = "monodepth"
    frame_gap: int = Field(1, ge=1, description="the source frames are t - gap and t + gap, at data.fps (paper: "
                           "the adjacent frames of 10 fps KITTI)")
    sources: Literal["mono", "stereo", "mono+stereo"] = Field("mono", description="the frames warped into the "
                                                             "target: mono, its neighbours t - gap and t + gap with "
                                                             "the pose network's motion (Monodepth2's M); stereo, "
                                                             "the other view of a rectified stereo pair with the "
                                                             "known baseline (S; Monodepth's setting, DATA is "
                                                             "SEQUENCE/VIEW clips, the first view in name order "
                                                             "the left camera); mono+stereo, all three (MS)")
    stereo_baseline: float = Field(0.1, gt=0, description="stereo: the distance between the two cameras, in the "
                                   "depth's units, the right camera to the left one's +x (Monodepth2: 0.1, KITTI's "
                                   "0.54 m scaled by 1/5.4)")
    num_scales: int = Field(4, ge=1, le=4, description="disparity outputs whose losses are averaged, each "
                            "upsampled to the input size (paper: 4)")
    ssim_weight: float = Field(0.85, ge=0, le=1, description="alpha of the photometric error alpha (1 - SSIM) / 2 + "
                               "(1 - alpha) L1 (paper: 0.85)")
    smoothness_weight: float = Field(1e-3, ge=0, description="weight of the edge-aware smoothness of the "
                                     "mean-normalised disparity, divided by 2^scale (paper: 1e-3)")
    automask: bool = Field(True, description="auto-masking: pixels where an unwarped source frame matches the "
                           "target better than any warped one (static camera, objects moving with it) are left "
                           "out (paper)")
    min_depth: float = Field(0.1, gt=0, description="depth of disparity 1 (paper: 0.1)")
    max_depth: float = Field(100.0, gt=0, description="depth of disparity 0 (paper: 100)")
    fov_degrees: float = Field(60.0, gt=1, lt=179, description="the assumed horizontal field of view of the frames "
                               "(square crops of the clips), which sets the default intrinsics (the clips carry "
                               "none); method.intrinsics overrides it")
    intrinsics: tuple[float, float, float, float] | None = Field(None, description="[fx, fy, cx, cy] as fractions "
                                                                "of the frame's width and height, the known camera "
                                                                "(Monodepth2's KITTI: [0.58, 1.92, 0.5, 0.5]); "
                                                                "null: from fov_degrees")
    decoder_channels: tuple[int, ...] = Field((16, 32, 64, 128, 256), min_length=1, description="the depth "
                                              "decoder's width at each encoder level, finest first (paper: 16, "
                                              "32, 64, 128, 256)")
    pose_encoder: str = Field("resnet18", description="timm ConvNet of the pose network, on two frames stacked "
                              "(6 channels) (paper: ResNet18)")
    pose_width: int = Field(256, gt=0, description="width of the pose decoder's convs (paper: 256)")
    augment: bool = Field(True, description="Monodepth2's augmentation, the same for the three frames of a sample: "
                          "a horizontal flip and colour jitter (brightness, contrast, saturation +-0.2), each with "
                          "probability 0.5, colour on the networks' inputs only (the losses see the frames as "
                          "they are)")

    @field_validator("decoder_channels")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if min(value) <= 0:
            raise ValueError(f"decoder_channels must be positive, got {list(value)}")
        return value

    @field_validator("intrinsics")
    @classmethod
    def _focal_positive(cls, value: tuple[float, float, float, float] | None):
        if value is not None and (value[0] <= 0 or value[1] <= 0):
            raise ValueError(f"intrinsics fx and fy must be positive, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _depth_range(self) -> MonodepthConfig:
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth ({self.min_depth}) must be below max_depth ({self.max_depth})")
        return self

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The frames as they are (the whole frame at the training size): a crop, flip or colour change drawn per
        frame would break the geometry between them. The method draws its own augmentation, one per sample."""
        return [augment.model_copy(update={"scale": (1.0, 1.0), "ratio": (1.0, 1.0), "hflip_p": 0.0,
                                           "jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0,
                                           "randaugment_ops": 0})]

    def frame_sampler(self):
        from sslcli.methods.temporal import NeighbourSampler, StereoSampler

        if self.sources == "mono":
            return NeighbourSampler(self.frame_gap)
        return StereoSampler(0 if self.sources == "stereo" else self.frame_gap)

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        # Paper: Adam, lr 1e-4 at batch 12 (base_lr 2e-3 per 256), no weight decay.
        return {"optim": {"name": "adamw", "base_lr": 2e-3, "weight_decay": 0.0, "warmup_epochs": 0}}
