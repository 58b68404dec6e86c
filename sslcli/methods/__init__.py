"""The registry of methods, found by discovery: every sub-package of this folder with a config.py is a method.

A method is one package, `sslcli/methods/<name>/`: `config.py` holds its pydantic config (torch-free: settings,
paper, summary, spec defaults, test-size settings) and `model.py` its nn.Module (torch, imported only when a
run builds it). Adding a method is adding its package and its presets; nothing here, in the CLI or in the
tests names it.

The configs import no torch: listing methods, validating a spec and `--dry-run` stay fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Discriminator, Tag

from sslcli.methods.config_base import FAMILIES, MethodConfigBase

if TYPE_CHECKING:
    from sslcli.methods.base import Method

DEFAULT_METHOD = "simclr"


def method_packages() -> list[str]:
    """The method packages' names, found without importing them (what `--help` lists)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg)


def _config_of(package: str) -> type[MethodConfigBase]:
    """The one MethodConfigBase subclass that a package's config.py defines, checked against its folder."""
    module = importlib.import_module(f"{__name__}.{package}.config")
    found = [value for value in vars(module).values()
             if isinstance(value, type) and issubclass(value, MethodConfigBase)
             and value.__module__ == module.__name__ and "name" in value.model_fields]
    if len(found) != 1:
        raise ImportError(f"{module.__name__} must define exactly one method config (a MethodConfigBase subclass "
                          f"with a `name` field); found {[c.__name__ for c in found]}")
    config = found[0]
    if config.model_fields["name"].default != package:
        raise ImportError(f"{config.__name__}.name is {config.model_fields['name'].default!r}, but its package is "
                          f"{package!r}: a method's name is its folder's")
    if getattr(config, "family", None) not in FAMILIES:
        raise ImportError(f"{config.__name__}.family must be one of {FAMILIES}")
    return config


def _discover() -> dict[str, type[MethodConfigBase]]:
    configs = {package: _config_of(package) for package in method_packages()}
    return dict(sorted(configs.items(), key=lambda item: (FAMILIES.index(item[1].family), item[0])))


# name -> the method's config (its settings, paper and summary), grouped by family, by name within one.
CONFIGS: dict[str, type[MethodConfigBase]] = _discover()

# Published methods that are one of the above with their own recipe, offered as presets (<name>-cpu, -cifar10,
# -imagenette): the name -> the method its presets run.
PRESET_FAMILIES: dict[str, str] = {recipe: name for name, config in CONFIGS.items() for recipe in config.recipes}


def method_class(name: str) -> type[Method]:
    """The method's nn.Module class (imports its model.py, and torch)."""
    return getattr(importlib.import_module(f"{__name__}.{name}.model"), CONFIGS[name].model)


def _method_name(value: Any) -> str:
    """The `name` that picks the config class; a method section without one is SimCLR's (the default)."""
    name = value.get("name", DEFAULT_METHOD) if isinstance(value, dict) else getattr(value, "name", DEFAULT_METHOD)
    return name if isinstance(name, str) else repr(name)  # a non-string name is reported as unknown


# The spec's `method` section: the union of every method's config, told apart by `name`.
MethodConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in CONFIGS.items())],  # noqa: UP007
    Discriminator(_method_name),
]

__all__ = ["CONFIGS", "DEFAULT_METHOD", "PRESET_FAMILIES", "MethodConfig", "MethodConfigBase", "method_class",
           "method_packages"]
