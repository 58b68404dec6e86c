"""Momentum (EMA) targets: BYOL's target network, MoCo's key encoder, DINO's teacher.

A method with targets calls `add_momentum_targets` once its online modules exist: each named target becomes a
frozen copy of its online module (no gradient, not in the optimizer), and the momentum follows BYOL's cosine
schedule from `start` to `final` over the run (solo-learn's `momentum_pairs` with its scheduler).
MethodDefaults.on_step_end then moves every target towards its online module after each applied step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sslcli.schedules import StepSchedule, cosine_increase


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy that receives no gradients and is left out of the optimizer; it changes only by update_ema."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def update_ema(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """target = momentum * target + (1 - momentum) * online, for every parameter, in two foreach kernels.

    Only parameters follow the online network; buffers (BN running statistics) are the target's own, as in
    BYOL, MoCo and DINO, whose targets compute their statistics from the batches they see.
    """
    target_params = list(target.parameters())
    online_params = list(online.parameters())
    if len(target_params) != len(online_params):
        raise ValueError("target and online networks differ in their parameters")
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)


class MomentumTargets:
    """The mixin of a method (an nn.Module) with momentum targets; see the module docstring."""

    momentum_pairs: tuple[tuple[str, str], ...] = ()  # (target, online) submodule names
    momentum: StepSchedule

    def add_momentum_targets(self, pairs: dict[str, str], start: float, final: float, total_steps: int) -> None:
        """Register target = frozen copy of online for each pair (None for an online module that is None) and
        lay the momentum schedule over the run's steps."""
        for target, online in pairs.items():
            source = getattr(self, online)
            setattr(self, target, frozen_copy(source) if source is not None else None)
        self.momentum_pairs = tuple(pairs.items())
        self.momentum = StepSchedule(cosine_increase(start, final, total_steps).tolist())

    @torch.no_grad()
    def update_momentum_targets(self, step: int) -> None:
        if not self.momentum_pairs:
            return
        m = self.momentum.at(step)
        for target, online in self.momentum_pairs:
            if getattr(self, target) is not None:
                update_ema(getattr(self, target), getattr(self, online), m)
