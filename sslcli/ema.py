"""Momentum (EMA) targets: BYOL's target network, MoCo's key encoder, DINO's teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn


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
