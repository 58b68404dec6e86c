"""The registry of methods. Adding a method is one file in this folder and one line below."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Discriminator, Tag

from sslcli.methods.barlow import Barlow
from sslcli.methods.base import Budget, Method, StepOut, spec_defaults_of
from sslcli.methods.byol import BYOL
from sslcli.methods.dino import DINO
from sslcli.methods.mae import MAE
from sslcli.methods.mocov2 import MoCoV2
from sslcli.methods.mocov3 import MoCoV3
from sslcli.methods.simclr import SimCLR
from sslcli.methods.simsiam import SimSiam
from sslcli.methods.swav import SwAV
from sslcli.methods.vicreg import VICReg

METHODS: dict[str, type] = {
    "simclr": SimCLR,
    "mocov2": MoCoV2,
    "mocov3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "swav": SwAV,
    "barlow": Barlow,
    "vicreg": VICReg,
    "dino": DINO,
    "mae": MAE,
}

DEFAULT_METHOD = "simclr"


def _method_name(value: Any) -> str:
    """The `name` that picks the config class; a method section without one is SimCLR's (the default)."""
    name = value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "name", DEFAULT_METHOD)
    return name if isinstance(name, str) else repr(name)  # a non-string name is reported as unknown


# The spec's `method` section: the union of every method's config, told apart by `name`.
MethodConfig = Annotated[
    Union[tuple(Annotated[cls.Config, Tag(name)] for name, cls in METHODS.items())],  # noqa: UP007
    Discriminator(_method_name),
]

__all__ = ["DEFAULT_METHOD", "METHODS", "Budget", "Method", "MethodConfig", "StepOut", "spec_defaults_of"]
