"""The method contract that the training loop relies on, and what the methods share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

if TYPE_CHECKING:
    from sslcli.augment import ViewConfig


@dataclass
class StepOut:
    """What one forward pass gives the loop: the loss to minimise and tensors worth logging."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)
    # Embeddings the label-free monitors read on logged steps: {"features": (h1, h2), "projections": (z1, z2)}
    # (one tensor per view; one view is enough for std and rank, two also give alignment). No copies are made.
    embeddings: dict[str, tuple[Tensor, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Budget:
    """How long the run is, for methods whose schedules or freezes are counted in steps or epochs."""

    total_steps: int
    steps_per_epoch: int

    def epochs_to_steps(self, epochs: float) -> int:
        return min(self.total_steps, round(epochs * self.steps_per_epoch))


class MethodConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method(Protocol):
    """A method is an nn.Module holding the encoder and its own heads.

    Optional class attributes: `summary` (one line for `sslcli methods`), `fixed_lr_modules` (names of
    submodules whose lr stays at the peak value, SimSiam's predictor), `spec_defaults(image_size)`
    (spec values that suit the method better than the global defaults; a preset or option overrides them),
    `sync_bn` (whether the paper's BN layers see the global batch under torchrun; default True) and
    `cancel_gradients(step)` (drop the gradients of parameters frozen at this step, after backward).
    """

    Config: ClassVar[type[BaseModel]]
    paper: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, cfg: BaseModel, encoder: nn.Module, feature_dim: int, budget: Budget) -> None: ...

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The augmentation recipe: one ViewConfig per view, built from the spec's augment section."""
        ...

    def forward(self, views: list[Tensor], step: int) -> StepOut: ...

    def on_step_end(self, step: int) -> None:
        """After the optimiser step: EMA updates, queues, centers."""
        ...

    def export_encoder(self) -> nn.Module:
        """The backbone to save (DINO exports its teacher)."""
        ...


def sync_bn_default(method_cls: type) -> bool:
    return bool(getattr(method_cls, "sync_bn", True))


def spec_defaults_of(method_cls: type, image_size: int) -> dict[str, Any]:
    fn = getattr(method_cls, "spec_defaults", None)
    return fn(image_size) if fn is not None else {}


def views_by_size(views: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive views of the same size, so each size goes through the encoder in one batch (as SwAV and DINO do)."""
    groups: list[list[Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups
