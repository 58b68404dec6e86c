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


def cosine_increase(base: float, final: float, total_steps: int) -> torch.Tensor:
    """BYOL's momentum schedule: tau_k = final - (final - base) * (cos(pi k / K) + 1) / 2, from base to final.

    Used for EMA momentum (BYOL 0.99 -> 1, DINO 0.996 -> 1, MoCo v3 0.99 -> 1).
    """
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    k = torch.arange(total_steps, dtype=torch.float64) / max(total_steps - 1, 1)
    return final - (final - base) * (torch.cos(math.pi * k) + 1) / 2


def linear_warmup_then_constant(start: float, end: float, warmup_steps: int, total_steps: int) -> torch.Tensor:
    """Linear from start to end over warmup_steps, then end (DINO's teacher temperature)."""
    if total_steps <= 0:
        raise ValueError("total_steps must be positive")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    ramp = torch.linspace(start, end, warmup_steps, dtype=torch.float64) if warmup_steps > 1 else \
        torch.full((warmup_steps,), float(end), dtype=torch.float64)
    return torch.cat([ramp, torch.full((total_steps - warmup_steps,), float(end), dtype=torch.float64)])


def stretch(values: torch.Tensor, at_step: int, total_steps: int) -> torch.Tensor:
    """A per-step schedule re-laid over a run that now ends after `total_steps`, from `at_step` on (--budget's
    re-plan): the steps before `at_step` keep their values, and the rest of the schedule (values[at_step:],
    its end included) is spread evenly over steps at_step .. total_steps - 1, by linear interpolation. So
    the schedule is continuous at the re-plan and still ends at its final value (the cosine reaches its
    minimum, an EMA momentum 1) on the run's new last step."""
    old_last, new_last = len(values) - 1, total_steps - 1
    if not 0 <= at_step <= min(old_last, new_last):
        raise ValueError(f"cannot re-plan a {len(values)}-step schedule to {total_steps} steps at step {at_step}")
    i = torch.arange(at_step, total_steps, dtype=torch.float64)
    position = at_step + (i - at_step) * (old_last - at_step) / max(new_last - at_step, 1)
    position = position.clamp(max=old_last)
    low = position.floor().long()
    high = (low + 1).clamp(max=old_last)
    rest = torch.lerp(values[low], values[high], (position - low).to(values.dtype))
    return torch.cat([values[:at_step], rest])


class StepSchedule(list):
    """A value per step of the run (an EMA momentum, a teacher temperature), read with at(step): a run that
    goes past the schedule's end (a resumed run with more steps) keeps its last value. A method's
    StepSchedule attributes are stretched when a --budget run is re-planned (MethodDefaults.replan)."""

    def at(self, step: int) -> float:
        return self[min(step, len(self) - 1)]

    def stretched(self, at_step: int, total_steps: int) -> StepSchedule:
        return StepSchedule(stretch(torch.tensor(self, dtype=torch.float64), at_step, total_steps).tolist())
