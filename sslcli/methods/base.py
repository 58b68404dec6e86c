"""The method contract that the training loop relies on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from pydantic import BaseModel
from torch import Tensor, nn

if TYPE_CHECKING:
    from sslcli.augment import ViewConfig


@dataclass
class StepOut:
    """What one forward pass gives the loop: the loss to minimise and tensors worth logging."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


class Method(Protocol):
    """A method is an nn.Module holding the encoder and its own heads."""

    Config: ClassVar[type[BaseModel]]
    paper: ClassVar[str]

    def __init__(self, cfg: BaseModel, encoder: nn.Module, feature_dim: int, total_steps: int) -> None: ...

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
