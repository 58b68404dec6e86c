"""What every method's config shares, without torch: the base class, and mixins for the settings that several
methods have (S4L's rotation term, BYOL's asymmetric views, SwAV's multi-crop, a memory bank's contrast).

A method's config names its method (`name`), cites its paper, gives a one-line summary for `sslcli methods`,
says whether the paper's batch norm sees the global batch under torchrun (`sync_bn`) and which spec values
suit the method better than the global defaults (`spec_defaults`, a layer under presets and options).
Configs are torch-free so that `sslcli presets`, `methods`, `--help` and `--dry-run` validate a spec
without importing torch. Every field's description gives the paper's value.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sslcli.views import ViewConfig, asymmetric_views, multi_crop

# The families `sslcli methods` groups the methods by, in this order.
FAMILIES = ("contrastive", "clustering", "distillation", "redundancy reduction", "masked", "pretext")

# The pretext tasks learn from the image's own geometry or colours and read colour augmentation as a shortcut
# or a change of their targets: their views are a crop and a flip, no colour jitter, grayscale, blur or
# solarize (spec defaults, so a preset can change them).
GEOMETRIC_VIEW = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0}


MAX_WIDTH = 131072  # the widest head layer (DINOv2 ViT-L/g: 131,072 prototypes, the widest published)


class MethodConfigBase(BaseModel):
    """A method's settings (the spec's `method` section) and its description."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    paper: ClassVar[str]
    summary: ClassVar[str]
    family: ClassVar[str]  # one of FAMILIES
    model: ClassVar[str]  # the nn.Module class in the method package's model.py
    sync_bn: ClassVar[bool] = True  # under torchrun, BN over the global batch (the paper's choice)
    # What the encoder saw in training when it was not the augmented RGB views (written into its metadata).
    encoder_input: ClassVar[str | None] = None
    # The encoders the method can train: any timm model, a ViT only (MAE's masking), a ConvNet only (a decoder
    # on the spatial feature map).
    encoder_kind: ClassVar[Literal["any", "vit", "convnet"]] = "any"
    # The method keeps one entry per training image (a memory bank): its forward also takes the batch's
    # dataset indices, and its Budget carries the number of training images.
    uses_indices: ClassVar[bool] = False
    # The method works on colour itself (CIE Lab: colorization, CMC's L and ab views): RGB images only,
    # data.channels = 3.
    rgb_only: ClassVar[bool] = False
    # Epochs at the start that train nothing (DeepCluster v2 fills its memory first): a shorter run learns nothing.
    memory_pass_epochs: ClassVar[int] = 0
    # Published methods that are this one with their own recipe, offered as presets (<name>-cpu, -cifar10,
    # -imagenette): name -> what makes the recipe.
    recipes: ClassVar[dict[str, str]] = {}
    # Settings that make the method test-sized (small heads, few prototypes): the contract tests build every
    # discovered method with them, so a new method is tested without editing the tests.
    tiny: ClassVar[dict[str, Any]] = {}
    num_views: ClassVar[int] = 2  # views drawn per image, each with the spec's augmentation
    # A temporal method learns from K frames of one clip per sample (video input): its batches are uint8
    # [B, K, 3, S, S] tuples that frame_sampler() picks from the frame cache; 0 for the image methods.
    frames_per_sample: ClassVar[int] = 0

    @model_validator(mode="after")
    def _widths_are_buildable(self) -> MethodConfigBase:
        # A head's width (any *_dim setting) beyond MAX_WIDTH would allocate gigabytes per layer: refused here,
        # one line, rather than failing with an allocator error when the model is built.
        for name, value in self:
            if name.endswith("_dim") and isinstance(value, int) and value > MAX_WIDTH:
                raise ValueError(f"method.{name}={value} is wider than {MAX_WIDTH}, the widest head sslcli builds")
        return self

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The augmentation recipe of each view, from the spec's augment section: num_views alike by default;
        the mixins below give BYOL's asymmetric views and multi-crop's local views."""
        return [augment] * self.num_views

    def frame_sampler(self) -> Any:
        """A temporal method's sampler (video_data.Sampler, with `min_frames`): which K frames of a clip each
        sample of a batch takes. None for the image methods."""
        return None

    def untrained_epochs(self) -> int:
        """The epochs at the start of a run that train nothing with these settings (memory_pass_epochs, or a
        setting's own count)."""
        return self.memory_pass_epochs

    @staticmethod
    def spec_defaults(image_size: int) -> dict[str, Any]:
        """Spec values the paper uses where they differ from the global defaults (optimizer, encoder, crops)."""
        return {}


class S4LRotation(BaseModel):
    """S4L (Zhai et al. 2019, arXiv 1905.03670): the rotation pretext loss added to the method's own."""

    rotation_weight: float = Field(0.0, ge=0, description="S4L: weight of the rotation pretext loss added to this "
                                   "method's (4 rotated copies of view 1, a 4-way head; Zhai et al. 2019 use 1; 0 = off)")


class AsymmetricViews(BaseModel):
    """BYOL's two views (arXiv 2006.07733, table 6), which differ only in their blur and solarize odds."""

    view_blur_p: tuple[float, float] = Field((1.0, 0.1), description="blur odds of view 1 / view 2 (BYOL: 1.0 / 0.1)")
    view_solarize_p: tuple[float, float] = Field((0.0, 0.2), description="solarize odds of view 1 / view 2 "
                                                 "(BYOL: 0 / 0.2)")

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The two views: the spec's augmentation with each view's blur and solarize odds."""
        return asymmetric_views(augment, self.view_blur_p, self.view_solarize_p)


class MultiCrop(BaseModel):
    """SwAV's multi-crop (arXiv 2006.09882, section 3.2): small local crops besides the two global ones.
    Methods whose paper differs set their own defaults (DINO: 8 local crops of (0.05, 0.4))."""

    num_local_crops: int = Field(6, ge=0, description="small crops besides the 2 global ones (SwAV: 6)")
    local_crop_size: int | None = Field(None, gt=0, description="side of a local crop (default: 3/7 of the image, "
                                        "as 96/224 in the paper; a multiple of a ViT's patch)")
    local_crop_scale: tuple[float, float] = Field((0.05, 0.14), description="local crop area range (SwAV: "
                                                  "(0.05, 0.14))")

    def local_side(self, image_size: int, patch: int | None = None) -> int:
        """local_crop_size, else 3/7 of the image side (96/224 in the papers): at least 8 px, or for a ViT
        (its `patch` given) the nearest multiple of its patch, at least one patch."""
        if self.local_crop_size:
            return self.local_crop_size
        if patch is None:
            return max(8, round(image_size * 3 / 7))
        return patch * max(1, round(image_size * 3 / 7 / patch))

    def with_local_crops(self, global_views: list[ViewConfig], side: int) -> list[ViewConfig]:
        """The global views, then num_local_crops local ones of `side` px (views.multi_crop), blurred with
        local_blur_p where the method has one (DINO)."""
        return multi_crop(global_views, self.num_local_crops, side, self.local_crop_scale,
                          local_blur_p=getattr(self, "local_blur_p", None))

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The global views of the classes after this one in the method's bases (two alike, or BYOL's
        asymmetric pair), then the local crops."""
        return self.with_local_crops(super().views(augment), self.local_side(augment.size))  # type: ignore[misc]


class MemoryBankContrast(MethodConfigBase):
    """What InstDisc and CMC share: a memory bank of one embedding per training image, contrasted with NCE."""

    family: ClassVar[str] = "contrastive"
    uses_indices: ClassVar[bool] = True
    embedding_dim: int = Field(128, gt=0, description="size of the L2-normalised embedding a linear head gives "
                               "the encoder's features, and of each bank entry (paper: 128)")
    temperature: float = Field(0.07, gt=0, description="tau of exp(v . f / tau) (paper: 0.07)")
    bank_momentum: float = Field(0.5, ge=0, lt=1, description="m of the proximal update of an image's entry "
                                 "after each step, f <- normalise(m f + (1 - m) v) (paper: 0.5)")
    loss: Literal["nce", "softmax"] = Field("nce", description="nce: noise-contrastive estimation with the "
                                            "normalisation constant Z estimated on the first batch (paper); "
                                            "softmax: cross entropy over the positive and the drawn negatives, "
                                            "or over every entry when num_negatives = 0")

    @model_validator(mode="after")
    def _full_softmax_needs_softmax(self) -> MemoryBankContrast:
        if self.num_negatives == 0 and self.loss == "nce":  # type: ignore[attr-defined]
            raise ValueError("num_negatives = 0 contrasts with every bank entry: it needs loss = 'softmax' "
                             "(NCE needs sampled negatives)")
        return self


def default_patch_size(image_size: int) -> int:
    """A ViT patch giving 8x8 patches at CIFAR and Imagenette sizes, 14x14 at 224 px (ViT-*/16)."""
    return 4 if image_size <= 64 else 12 if image_size <= 128 else 16
