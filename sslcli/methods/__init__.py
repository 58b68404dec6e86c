"""The registry of methods. Adding a method is one file in this folder, its config in configs.py and one
line in each table below.

This module and configs.py import no torch: listing methods, validating a spec and `--dry-run` stay fast.
`method_class(name)` imports the chosen method's module (and torch with it) only when a run builds it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from sslcli.methods.configs import (
    BarlowConfig,
    BYOLConfig,
    CMCConfig,
    ColorizationConfig,
    CPCConfig,
    DeepClusterConfig,
    DINOConfig,
    DINOv2Config,
    InpaintingConfig,
    InstDiscConfig,
    JigsawConfig,
    MAEConfig,
    MethodConfigBase,
    MoCoV2Config,
    MoCoV3Config,
    RelPosConfig,
    RotationConfig,
    SimCLRConfig,
    SimSiamConfig,
    SwAVConfig,
    VICRegConfig,
)

if TYPE_CHECKING:
    from sslcli.methods.base import Method

# name -> the method's config (its settings, paper, summary and spec defaults)
CONFIGS: dict[str, type[MethodConfigBase]] = {
    "simclr": SimCLRConfig,
    "mocov2": MoCoV2Config,
    "mocov3": MoCoV3Config,
    "byol": BYOLConfig,
    "simsiam": SimSiamConfig,
    "swav": SwAVConfig,
    "deepcluster": DeepClusterConfig,
    "barlow": BarlowConfig,
    "vicreg": VICRegConfig,
    "dino": DINOConfig,
    "dinov2": DINOv2Config,
    "mae": MAEConfig,
    "rotation": RotationConfig,
    "jigsaw": JigsawConfig,
    "relpos": RelPosConfig,
    "colorization": ColorizationConfig,
    "inpainting": InpaintingConfig,
    "cpc": CPCConfig,
    "instdisc": InstDiscConfig,
    "cmc": CMCConfig,
}

# name -> "module:class" of its nn.Module, imported on first use
_CLASSES: dict[str, str] = {
    "simclr": "simclr:SimCLR",
    "mocov2": "mocov2:MoCoV2",
    "mocov3": "mocov3:MoCoV3",
    "byol": "byol:BYOL",
    "simsiam": "simsiam:SimSiam",
    "swav": "swav:SwAV",
    "deepcluster": "deepcluster:DeepClusterV2",
    "barlow": "barlow:Barlow",
    "vicreg": "vicreg:VICReg",
    "dino": "dino:DINO",
    "dinov2": "dinov2:DINOv2",
    "mae": "mae:MAE",
    "rotation": "rotation:Rotation",
    "jigsaw": "jigsaw:Jigsaw",
    "relpos": "relpos:RelPos",
    "colorization": "colorization:Colorization",
    "inpainting": "inpainting:Inpainting",
    "cpc": "cpc:CPC",
    "instdisc": "instdisc:InstDisc",
    "cmc": "cmc:CMC",
}

DEFAULT_METHOD = "simclr"

# Published methods that are one of the above with their own recipe, offered as presets (<name>-cpu, -cifar10,
# -imagenette): the name -> the method its presets run.
PRESET_FAMILIES: dict[str, str] = {
    "mocov1": "mocov2",  # MoCo v1: a linear head, temperature 0.07, v1's augmentation
    "infomin": "mocov2",  # InfoMin: the InfoMin augmentation (augment.randaugment_ops), temperature 0.15
    "invariantspread": "simclr",  # InvariantSpread: a linear 128-d embedding, method.loss=invariant_spread
    "simclrv2": "simclr",  # SimCLR v2: a 3-layer head; finetune --keep-projection-layers 1
}


def method_class(name: str) -> type[Method]:
    """The method's nn.Module class (imports its module, and torch)."""
    module, cls = _CLASSES[name].split(":")
    return getattr(importlib.import_module(f"sslcli.methods.{module}"), cls)


def _method_name(value: Any) -> str:
    """The `name` that picks the config class; a method section without one is SimCLR's (the default)."""
    name = value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "name", DEFAULT_METHOD)
    return name if isinstance(name, str) else repr(name)  # a non-string name is reported as unknown


# The spec's `method` section: the union of every method's config, told apart by `name`.
MethodConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in CONFIGS.items())],  # noqa: UP007
    Discriminator(_method_name),
]

__all__ = ["CONFIGS", "DEFAULT_METHOD", "PRESET_FAMILIES", "MethodConfig", "MethodConfigBase", "method_class"]
