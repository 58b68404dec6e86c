"""What one forward pass of a training step gives the loop: the contract between the methods (and fine-tuning)
and train.fit, kept apart from both so neither imports the other for it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepOut:
    """The loss to minimise and tensors worth logging."""

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    # Embeddings the label-free monitors read on logged steps: {"features": (h1, h2), "projections": (z1, z2)}
    # (one tensor per view; one view is enough for std and rank, two also give alignment). No copies are made.
    embeddings: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)
