"""--budget DURATION: fit a pretraining run's schedule to wall-clock time instead of a number of epochs.

A short calibration (a few warm-up steps, then timed steps, on a throwaway copy of the method, with the
RNG states forked so the run itself draws what it would have drawn) measures the time of a step and of
one online-kNN evaluation. The timed steps are steps that train (after a memory-filling first epoch, whose
steps skip the update and cost less) and last at least a share of the budget: on a shared 2-core VM the
speed drifts by +-15 % from one half-minute to the next, and 4 steps (5 s) sampled one moment of it. The
run then gets the number of steps that, with its evaluations, checkpoints and the closing linear probe,
ends within the budget counted from the start of the command; warm-up, cosine, EMA and temperature
schedules and freezes are laid out over those steps as for any run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sslcli import console, distributed
from sslcli.durations import parse_duration  # noqa: F401 - the CLI's duration rule lives there
from sslcli.errors import UsageError
from sslcli.train import Batches, Events, LoopConfig, Step, fit

# What the end of a run costs besides its last evaluation: the final checkpoint, report/ and the closing
# linear probe (measured: 2-4 s on 2 CPU cores for the quickstart, under 1 s on a GPU).
CLOSING_S = 4.0
# The timed part of a calibration: at least this share of the budget, within these bounds (seconds).
TIMED_SHARE, TIMED_MIN_S, TIMED_MAX_S = 0.03, 5.0, 60.0


def timed_seconds(budget_s: float) -> float:
    """How long a calibration times steps for a budget: 3 % of it, 5 s to 60 s (14 s for 8 minutes)."""
    return min(TIMED_MAX_S, max(TIMED_MIN_S, TIMED_SHARE * budget_s))


@dataclass
class Calibration:
    step_s: float  # one training step
    eval_s: float  # one online-kNN evaluation (0 when there is none)


def calibrate(make_step: Callable[[], tuple[Step, torch.optim.Optimizer]], batches: Batches, cfg: LoopConfig,
              device: torch.device, evaluate: Callable[[], None] | None, warmup_steps: int,
              timed_steps: int, *, min_timed_s: float = 0.0, first_step: int = 0) -> Calibration:
    """Time at least `timed_steps` steps, and more until `min_timed_s` seconds are timed, after
    `warmup_steps` (cuDNN autotuning, worker start-up, caches) on the fresh model `make_step` builds, and one
    evaluation. The method sees the steps as steps `first_step` on (the first that trains: a memory-filling
    epoch's steps are cheaper). The global and CUDA RNG states are restored after, so the run that follows
    is the run that would have run without a budget."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), console.hushed():
        step, optimizer = make_step()
        if first_step:
            base = step
            step = dataclasses.replace(base, loss=lambda batch, i: base.loss(batch, i + first_step),
                                       cancel_gradients=lambda i: base.cancel_gradients(i + first_step))
        quiet = dict(log_every=10**9, checkpoint_every=0, checkpoint_every_steps=0, description="calibration")

        def run(steps: int) -> float:
            loop = LoopConfig(**{**cfg.__dict__, **quiet, "epochs": 1, "steps_per_epoch": steps, "max_steps": None})
            schedule = torch.full((steps,), optimizer.param_groups[0]["lr"], dtype=torch.float64)
            _sync(device)
            start = time.perf_counter()
            fit(step, batches, optimizer, schedule, loop, device, Events())
            _sync(device)
            return time.perf_counter() - start

        run(warmup_steps)
        timed, elapsed = timed_steps, run(timed_steps)
        more = max(0, math.ceil((min_timed_s - elapsed) / (elapsed / timed)))
        # Under torchrun every rank must run the same steps (each all-reduces): the most any rank wants.
        more = int(distributed.all_reduce_(torch.tensor(float(more), device=device), op="max").item())
        if more:
            timed, elapsed = timed + more, elapsed + run(more)
        step_s = elapsed / timed
        eval_s = 0.0
        if evaluate is not None:
            start = time.perf_counter()
            evaluate()
            eval_s = time.perf_counter() - start
    # Under torchrun every rank measured its own: the slowest decides, so every rank plans the same steps.
    measured = distributed.all_reduce_(torch.tensor([step_s, eval_s], device=device), op="max").tolist()
    return Calibration(step_s=measured[0], eval_s=measured[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plan_steps(budget_s: float, elapsed_s: float, calibration: Calibration, steps_per_epoch: int,
               evaluations: Callable[[int], int], fixed_s: float) -> int:
    """The most steps whose training, evaluations (`evaluations(steps)` of them) and fixed costs (checkpoints,
    the closing probe) fit in what is left of the budget; at least one step."""
    left = budget_s - elapsed_s - fixed_s
    steps = max(1, int(left / calibration.step_s))
    for _ in range(3):  # the number of evaluations depends on the steps: converge in a few rounds
        steps = max(1, int((left - evaluations(steps) * calibration.eval_s) / calibration.step_s))
    if left <= calibration.step_s:
        raise UsageError(f"the budget of {budget_s:.0f} s is used up before training starts ({elapsed_s:.0f} s "
                         "of set-up and calibration); give a longer --budget")
    return steps


