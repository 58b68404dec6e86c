"""Encoders: any timm model as a feature extractor (num_classes=0), plus the small-image stem.

The exported encoder must rebuild from its metadata alone, so everything that shapes the model is
returned in EncoderInfo and written next to the weights.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from sslcli.errors import UsageError

SMALL_STEM_MAX_SIZE = 64  # inputs this small lose too much to a stride-4 stem (the CIFAR ResNet convention)


@dataclass
class EncoderInfo:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    small_stem: bool = False
    feature_dim: int = 0
    image_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    channels: int = 3  # input channels (data.channels): timm's in_chans; mean and std hold one value each
    interpolation: str = "bilinear"  # the resampling filter images are resized with (data.interpolation)
    # Where the starting weights came from (weights.py WeightsSource.record()): kind, ref, file, sha256.
    init: dict[str, Any] | None = None


# Normalisation of inputs that are not RGB (data.channels != 3): ImageNet's statistics describe RGB photos only.
# 0.5 / 0.25 per channel maps 0..1 to -2..2; with 16-bit images stretched to their own range (pixels.py) it
# fits any data set without a pass over it first, and every command reads it back from the encoder's metadata.
OTHER_CHANNELS_MEAN, OTHER_CHANNELS_STD = 0.5, 0.25


def is_resnet(model: nn.Module) -> bool:
    from timm.models.resnet import ResNet

    return isinstance(model, ResNet)


def apply_small_stem(model: nn.Module) -> nn.Module:
    """The CIFAR variant of a ResNet stem: stride-1 first conv and no max-pool (solo-learn, SimCLR paper B.9).

    A plain 7x7 stem becomes a 3x3 stride-1 conv, as in the papers. A timm deep stem (resnet*d, *t)
    keeps its convs and only loses the first stride, so its weights keep their shapes.
    """
    if not is_resnet(model):
        raise UsageError(f"the small-image stem applies to ResNet-family encoders, not {type(model).__name__}; "
                         "use --set encoder.small_stem=false")
    if isinstance(model.conv1, nn.Conv2d):
        model.conv1 = nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
    else:
        first = next(m for m in model.conv1.modules() if isinstance(m, nn.Conv2d))
        first.stride = (1, 1)
    model.maxpool = nn.Identity()
    return model


def create(name: str, kwargs: dict[str, Any], channels: int = 3) -> nn.Module:
    """timm's architecture `name` as a feature extractor (no head), randomly initialised; one line for a bad name."""
    import timm

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
        raise UsageError(f"unknown encoder '{name}'{hint}")
    given = kwargs.get("in_chans", channels)
    if given != channels:
        raise UsageError(f"encoder kwargs in_chans={given!r} but the images have {channels} channels: set "
                         "data.channels instead (--set data.channels=N)")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0, **{**kwargs, "in_chans": channels})
    except (TypeError, ValueError, AssertionError, RuntimeError, ZeroDivisionError, OverflowError) as exc:
        # kwargs come from specs and file metadata: a bad value is the user's input, not a crash.
        raise UsageError(f"encoder '{name}' cannot be built with kwargs {kwargs}: {exc}") from None
    if channels != 3:
        # timm keeps the RGB pretrained_cfg whatever in_chans is; normalisation() reads the statistics from here.
        model.pretrained_cfg = {**(getattr(model, "pretrained_cfg", None) or {}),
                                "mean": (OTHER_CHANNELS_MEAN,) * channels, "std": (OTHER_CHANNELS_STD,) * channels}
    return model


def accepts_dynamic_size(model: nn.Module) -> bool:
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


def is_vit(model: nn.Module) -> bool:
    """A timm VisionTransformer (the encoder family whose methods' defaults differ from a ConvNet's: MoCo v3)."""
    return accepts_dynamic_size(model)


def fix_sincos_position_embedding(model: nn.Module) -> None:
    """MoCo v3's position embedding (official vits.py build_2d_sincos_position_embedding): the fixed 2-D sin-cos
    embedding of the patch grid (timm's build_sincos2d_pos_embed, temperature 10000), zeros at the class (and
    register) tokens, and no longer learned. It stays an ordinary parameter, so the exported encoder carries
    its values and rebuilds as a plain timm ViT."""
    import torch
    from timm.layers import build_sincos2d_pos_embed

    pos = getattr(model, "pos_embed", None)
    if not is_vit(model) or not isinstance(pos, nn.Parameter):
        raise UsageError(f"a fixed sin-cos position embedding needs a timm ViT with a position embedding, not "
                         f"{type(model).__name__}")
    dim = int(pos.shape[-1])
    if dim % 4:
        raise UsageError(f"a 2-D sin-cos position embedding needs an embedding width divisible by 4, not {dim}")
    sincos = build_sincos2d_pos_embed(list(model.patch_embed.grid_size), dim=dim)
    prefix = pos.shape[1] - sincos.shape[0]  # class and register tokens, when they carry a position
    with torch.no_grad():
        pos.copy_(torch.cat([sincos.new_zeros(prefix, dim), sincos]).unsqueeze(0))
    pos.requires_grad_(False)


def without_drop_path(model: nn.Module) -> None:
    """Turn off the stochastic depth (timm's DropPath, from the `drop_path_rate` kwarg) of every block of
    `model`, in place: DINO's teacher is built without it while its student drops paths (official main_dino.py
    gives drop_path_rate to the student only). The modules stay, so the state dict is unchanged."""
    from timm.layers import DropPath

    for module in model.modules():
        if isinstance(module, DropPath):
            module.drop_prob = 0.0


def freeze_patch_projection(model: nn.Module) -> None:
    """MoCo v3's random patch projection (paper section 4.2, official --stop-grad-conv1): the ViT's patch
    embedding keeps its random init, drawn as the official vits.py draws it (uniform, Xavier's bound over
    in_chans x patch area + width), and gets no gradient, so no optimizer holds it."""
    import math

    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not is_vit(model) or not isinstance(proj, nn.Conv2d):
        raise UsageError(f"a frozen patch projection needs a timm ViT with a convolutional patch embedding, not "
                         f"{type(model).__name__}")
    bound = math.sqrt(6.0 / (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1] + proj.out_channels))
    nn.init.uniform_(proj.weight, -bound, bound)
    if proj.bias is not None:
        nn.init.zeros_(proj.bias)
    for p in proj.parameters():
        p.requires_grad_(False)


def build_encoder(name: str, image_size: int, small_stem: bool | str = "auto",
                  kwargs: dict[str, Any] | None = None, channels: int = 3) -> tuple[nn.Module, EncoderInfo]:
    """A randomly initialised timm encoder for `image_size` inputs of `channels` channels and what it takes to
    rebuild it (the channels are EncoderInfo.channels, not a kwarg: every file records them the same way)."""
    kwargs = dict(kwargs or {})
    if kwargs.get("in_chans") == channels:
        del kwargs["in_chans"]  # recorded once, as EncoderInfo.channels
    model = create(name, kwargs, channels)
    # ViT-family models fix their position embeddings to an input size; build them for ours.
    built_for = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if built_for is not None and "img_size" not in kwargs and tuple(built_for) != (image_size, image_size):
        kwargs["img_size"] = image_size
        model = create(name, kwargs, channels)
    # ViTs take views of any size (multi-crop's local views) by interpolating their position embeddings.
    if accepts_dynamic_size(model) and "dynamic_img_size" not in kwargs:
        kwargs["dynamic_img_size"] = True
        model = create(name, kwargs, channels)
    use_stem = (is_resnet(model) and image_size <= SMALL_STEM_MAX_SIZE) if small_stem == "auto" else bool(small_stem)
    if use_stem:
        apply_small_stem(model)
    mean, std = normalisation(model)
    info = EncoderInfo(
        name=name,
        kwargs=kwargs,
        small_stem=use_stem,
        feature_dim=int(model.num_features),
        image_size=image_size,
        mean=mean,
        std=std,
        channels=channels,
    )
    return model, info


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the encoder's inputs are normalised with (timm's pretrained_cfg, else ImageNet's).

    The one source of both EncoderInfo's values (which the Augmenter normalises the views with) and of what a
    method that needs the pixels back reads from its encoder (colorization, inpainting)."""
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return (tuple(float(v) for v in cfg.get("mean", EncoderInfo.mean)),
            tuple(float(v) for v in cfg.get("std", EncoderInfo.std)))


def rebuild_encoder(info: EncoderInfo) -> nn.Module:
    """The same architecture again, from saved metadata (weights are loaded by the caller)."""
    model = create(info.name, dict(info.kwargs), info.channels)
    if info.small_stem:
        apply_small_stem(model)
    return model
