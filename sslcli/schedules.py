"""Per-step schedules as arrays: one value per optimisation step, computed once before training."""

from __future__ import annotations

import math

import torch


def warmup_cosine(base: float, total_steps: int, warmup_steps: int = 0, final: float = 0.0,
                  start: float = 0.0) -> torch.Tensor:
    """Linear warm-up from `start` to `base`, then a half-cosine from `base` to `final`.

    Warm-up reaches `base` at the end of its last step (step i uses (i + 1) / warmup_steps) so that
    no step is spent at exactly `start`; the cosine ends at `final` on the last step.
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    i = torch.arange(warmup_steps, dtype=torch.float64)
    warm = start + (base - start) * (i + 1) / max(warmup_steps, 1)
    decay_steps = total_steps - warmup_steps
    progress = torch.arange(decay_steps, dtype=torch.float64) / max(decay_steps - 1, 1)
    decay = final + (base - final) * 0.5 * (1 + torch.cos(math.pi * progress))
    return torch.cat([warm, decay])


def constant(value: float, total_steps: int) -> torch.Tensor:
    return torch.full((total_steps,), float(value), dtype=torch.float64)
