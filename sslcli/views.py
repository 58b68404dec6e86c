"""What a view is: the augmentation recipe of one view (ViewConfig) and the multi-view recipes built from it.

Plain pydantic, no torch: the spec validates its `augment` section and the methods describe their views
without importing the tensor code, which lives in augment.py.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sslcli import console

_P = {"ge": 0.0, "le": 1.0}  # bounds shared by every probability field


class ViewConfig(BaseModel):
    """How to draw one augmented view. Defaults are SimCLR's recipe at CIFAR size."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    size: int = Field(32, gt=0, description="Output side in pixels.")
    scale: tuple[float, float] = Field((0.08, 1.0), description="Crop area as a fraction of the image.")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="Crop aspect ratio (width/height).")
    hflip_p: float = Field(0.5, **_P, description="Probability of a horizontal flip.")
    jitter_p: float = Field(0.8, **_P, description="Probability colour jitter is applied to a sample.")
    brightness: float = Field(0.8, ge=0.0, description="Brightness factor drawn from [1-s, 1+s].")
    contrast: float = Field(0.8, ge=0.0, description="Contrast factor drawn from [1-s, 1+s].")
    saturation: float = Field(0.8, ge=0.0, description="Saturation factor drawn from [1-s, 1+s].")
    hue: float = Field(0.2, ge=0.0, le=0.5, description="Hue shift drawn from [-h, h].")
    gray_p: float = Field(0.2, **_P, description="Probability of converting to grayscale.")
    blur_p: float = Field(0.5, **_P, description="Probability of a Gaussian blur.")
    blur_sigma: tuple[float, float] = Field((0.1, 2.0), description="Blur sigma range in pixels.")
    blur_kernel_frac: float = Field(0.1, gt=0.0, le=1.0, description="Blur kernel side / output side.")
    solarize_p: float = Field(0.0, **_P, description="Probability of solarization.")
    solarize_threshold: float = Field(0.5, **_P, description="Pixels >= this (on [0,1]) are inverted.")
    randaugment_ops: int = Field(0, ge=0, le=8, description="RandAugment ops per image, after colour jitter and "
                                 "blur, before grayscale (InfoMin's augmentation: 2; 0 = off)")
    randaugment_magnitude: float = Field(10.0, ge=0.0, le=10.0, description="Mean op strength on RandAugment's "
                                         "0-10 scale (InfoMin: 10).")
    randaugment_magnitude_std: float = Field(0.5, ge=0.0, description="Std of the strength drawn per image and op, "
                                             "clipped to [0, 10] (InfoMin, timm 'mstd0.5': 0.5).")
    randaugment_p: float = Field(0.5, **_P, description="Probability each drawn op is applied (timm, InfoMin: 0.5).")

    @model_validator(mode="after")
    def _check_ranges(self) -> ViewConfig:
        for name in ("scale", "ratio", "blur_sigma"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ValueError(f"{name} must satisfy 0 < low <= high, got ({low}, {high})")
        if self.scale[1] > 1:
            raise ValueError(f"scale must not exceed 1, got {self.scale}")
        return self

    @property
    def blur_kernel_size(self) -> int:
        """Nearest odd integer >= 3 to blur_kernel_frac * size (SimCLR: 10% of the side)."""
        k = max(3, 2 * round((self.blur_kernel_frac * self.size - 1) / 2) + 1)
        return min(k, 2 * self.size - 1)  # reflect padding needs k // 2 < size


def asymmetric_views(augment: ViewConfig, blur_p: tuple[float, ...], solarize_p: tuple[float, ...]) -> list[ViewConfig]:
    """BYOL's two-view recipe (arXiv 2006.07733, table 6): the views differ only in blur and solarize odds."""
    if len(blur_p) != len(solarize_p):
        raise ValueError("blur_p and solarize_p need one value per view")
    return [augment.model_copy(update={"blur_p": b, "solarize_p": s}) for b, s in zip(blur_p, solarize_p, strict=True)]


def multi_crop(global_views: list[ViewConfig], num_local: int, local_size: int,
               local_scale: tuple[float, float], local_blur_p: float | None = None) -> list[ViewConfig]:
    """SwAV's multi-crop (arXiv 2006.09882, section 3.2): the global views, then num_local small views.

    Local views share the first global view's colour recipe, cropped from a smaller area (local_scale)
    and resized to local_size. The loop hands every view to the method as its own tensor, so views of
    different sizes live in one batch recipe; ViT encoders take them through timm's dynamic_img_size.
    """
    base = global_views[0]
    update: dict = {"size": local_size, "scale": tuple(local_scale)}
    if local_blur_p is not None:
        update["blur_p"] = local_blur_p
    local = base.model_copy(update=update)
    ViewConfig.model_validate(local.model_dump())  # the scale range must still be valid
    return list(global_views) + [local] * num_local


# The ops that read or change colour as RGB: off for images of other than 3 channels (data.channels).
RGB_ONLY_OPS = {"jitter_p": 0.0, "gray_p": 0.0, "solarize_p": 0.0, "randaugment_ops": 0}


def without_rgb_ops(views: list[ViewConfig], channels: int) -> list[ViewConfig]:
    """The views for `channels`-channel images: as they are for 3, else without colour jitter, random
    grayscale, solarize and RandAugment (saying so on stderr once when one of them was on). Crops, flips and
    blur work on any channels."""
    if channels == 3:
        return list(views)
    if any(getattr(view, key) for view in views for key in RGB_ONLY_OPS):
        console.info(f"data.channels={channels}: colour jitter, random grayscale, solarize and RandAugment are off "
                     "(they assume RGB colour); crops, flips and blur stay")
    return [view.model_copy(update=RGB_ONLY_OPS) for view in views]
