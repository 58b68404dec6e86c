"""The registry of methods. Adding a method is one file in this folder and one line below."""

from __future__ import annotations

from sslcli.methods.base import Method, StepOut
from sslcli.methods.simclr import SimCLR, SimCLRConfig

METHODS: dict[str, type] = {
    "simclr": SimCLR,
}

# The spec's `method` section: the union of every method's config, told apart by `name`.
MethodConfig = SimCLRConfig

__all__ = ["METHODS", "Method", "MethodConfig", "StepOut"]
