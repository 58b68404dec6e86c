"""--budget DURATION: fit a pretraining run's schedule to wall-clock time instead of a number of epochs.

A short calibration (a few warm-up steps, then timed steps, on a throwaway copy of the method, with the
RNG states forked so the run itself draws what it would have drawn) measures the time of a step and of
one online-kNN evaluation. The timed steps are steps that train (after a memory-filling first epoch, whose
steps skip the update and cost less) and last at least a share of the budget: on a shared 2-core VM the
speed drifts by +-15 % from one half-minute to the next, and 4 steps (5 s) sampled one moment of it. The
run then gets the number of steps that, with its evaluations, checkpoints and the closing linear probe,
ends within the budget counted from the start of the command; warm-up, cosine, EMA and temperature
schedules and freezes are laid out over those steps as for any run.

A calibration measures one moment, and the speed of a shared machine drifts (a third between runs of the
same command on the 2-core VM). So the run also keeps its pace (`Pacer`): at a quarter, half, three
quarters and nine tenths of its plan it times the steps since the last such point and plans its total
steps again for what is left of the budget; the schedules' remainders are then spread over the new
total (schedules.stretch), continuous at the re-plan and ending at their final values on the new last
step. The re-plans are recorded in the checkpoints, so a resume lays the schedules out the same way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from sslcli import checkpoint, console, distributed, online_knn, pretraining
from sslcli.device import sync
from sslcli.errors import UsageError
from sslcli.methods.base import Method
from sslcli.spec import MonitorConfig, PretrainSpec
from sslcli.train import Batches, Events, LoopConfig, Step, fit, follow_replan, stretch_plan
from sslcli.training_data import cache_policy

# The points of its plan at which a --budget run times its recent steps and plans its total again.
REPLAN_AT = (0.25, 0.5, 0.75, 0.9)
REPLAN_MIN_STEPS = 4  # a window of fewer steps is too noisy to re-plan on

# What the end of a run costs besides its last evaluation (2 CPU cores, the quickstart, 2026-11-30; well under
# these on a GPU machine): the closing linear probe (2.3-4.0 s), the final checkpoint (0.4 s) and, with
# monitor.report on, drawing report/ (4.1-4.4 s). While the run goes, its pacer replaces the last two with
# what its latest save took.
PROBE_S, SAVE_S, REPORT_S = 4.0, 0.5, 4.5


def closing_seconds(report: bool, probe: bool) -> float:
    """The end of a run, with or without report/ and the closing probe (which needs the online kNN)."""
    return (PROBE_S if probe else 0.0) + SAVE_S + (REPORT_S if report else 0.0)


# The timed part of a calibration: at least this share of the budget, within these bounds (seconds).
TIMED_SHARE, TIMED_MIN_S, TIMED_MAX_S = 0.03, 5.0, 60.0


def timed_seconds(budget_s: float) -> float:
    """How long a calibration times steps for a budget: 3 % of it, 5 s to 60 s (14 s for 8 minutes)."""
    return min(TIMED_MAX_S, max(TIMED_MIN_S, TIMED_SHARE * budget_s))


@dataclass
class Calibration:
    step_s: float  # one training step
    eval_s: float  # one online-kNN evaluation (0 when there is none)


@dataclass
class Timing:
    """How a calibration times: warm-up steps first (cuDNN autotuning, worker start-up, caches), then at least
    `steps` timed steps and more until `min_s` seconds are timed; the method sees them as steps `first_step`
    on (the first that trains: a memory-filling epoch's steps are cheaper)."""

    warmup: int
    steps: int
    min_s: float = 0.0
    first_step: int = 0


def calibrate(make_step: Callable[[], Step], batches: Batches, cfg: LoopConfig, device: torch.device,
              evaluate: Callable[[], None] | None, timing: Timing) -> Calibration:
    """Time the steps of the fresh model `make_step` builds as `timing` says, and one evaluation. The global
    and CUDA RNG states are restored after, so the run that follows is the run that would have run without
    a budget."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), console.hushed():
        step = make_step()
        if timing.first_step:
            base, first = step, timing.first_step
            step = dataclasses.replace(base, loss=lambda batch, i: base.loss(batch, i + first),
                                       cancel_gradients=lambda i: base.cancel_gradients(i + first))
        quiet = dict(log_every=10**9, checkpoint_every=0, checkpoint_every_steps=0, description="calibration")

        def run(steps: int) -> float:
            loop = LoopConfig(**{**cfg.__dict__, **quiet, "epochs": 1, "steps_per_epoch": steps, "max_steps": None})
            lr = step.optimizer.param_groups[0]["lr"]
            timed_step = dataclasses.replace(step, lr_schedule=torch.full((steps,), lr, dtype=torch.float64))
            sync(device)
            start = time.perf_counter()
            fit(timed_step, batches, loop, device, Events())
            sync(device)
            return time.perf_counter() - start

        run(timing.warmup)
        timed, elapsed = timing.steps, run(timing.steps)
        more = max(0, math.ceil((timing.min_s - elapsed) / (elapsed / timed)))
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


def plan_steps(budget_s: float, elapsed_s: float, calibration: Calibration, steps_per_epoch: int,
               evaluations: Callable[[int], int], fixed_s: float) -> int:
    """The most steps whose training, evaluations (`evaluations(steps)` of them) and fixed costs (checkpoints,
    the closing probe) fit in what is left of the budget; at least one step."""
    left = budget_s - elapsed_s - fixed_s
    steps = most_steps(left, calibration.step_s, lambda n: evaluations(n) * calibration.eval_s)
    if left <= calibration.step_s:
        raise UsageError(f"the budget of {budget_s:.0f} s is used up before training starts ({elapsed_s:.0f} s "
                         "of set-up and calibration); give a longer --budget")
    return steps


def most_steps(seconds: float, step_s: float, evaluating_s: Callable[[int], float]) -> int:
    """The most steps n (at least one) whose time, n x step_s plus the evaluations a run of n steps makes
    (evaluating_s(n), which grows with n), fits in `seconds`: a bisection, as the two are not proportional."""
    low, high = 1, max(1, int(seconds / max(step_s, 1e-9)))
    while low < high:
        mid = (low + high + 1) // 2
        if mid * step_s + evaluating_s(mid) <= seconds:
            low = mid
        else:
            high = mid - 1
    return low


@dataclass
class Pacer:
    """Keeps a --budget run to its deadline while it trains: at each point of REPLAN_AT (of the current
    plan), the time of a step over the steps since the previous point (the online kNN's time left out: it
    is planned on its own) gives the steps that fit in what is left. fit() calls due() after every step and
    replan() when it says so; `history` holds the re-plans made, [at_step, new total], for the checkpoints.

    Under torchrun every rank reaches the same points (the plan is the same everywhere) and rank 0's
    clock decides the new total, which every rank then trains."""

    deadline: float  # clock() time by which the whole command should have ended
    eval_s: float  # one online-kNN evaluation: the calibration's, then the run's own (at its start, in windows)
    closing_s: float  # the final checkpoint, report and closing probe (re-measured at each save by pretrain)
    evaluations_left: Callable[[int, int], int]  # (step, total steps): evaluations still to come
    device: torch.device
    clock: Callable[[], float] = time.perf_counter
    history: list[list[int]] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.window_step, self.window_start, self.window_eval_s = 0, self.clock(), 0.0
        self.next_point = 0

    def start(self, step: int, evaluating_s: float = 0.0) -> None:
        """The first window opens here: when training starts (after set-up, calibration and the first kNN)."""
        self.window_step, self.window_start, self.window_eval_s = step, self.clock(), evaluating_s

    def due(self, step: int, total_steps: int) -> bool:
        while self.next_point < len(REPLAN_AT) and step >= REPLAN_AT[self.next_point] * total_steps:
            if step - self.window_step >= REPLAN_MIN_STEPS and step < total_steps:
                return True
            self.next_point += 1  # too few steps since the last point, or the run is over: no re-plan here
        return False

    def replan(self, step: int, total_steps: int, evaluating_s: float) -> int:
        """The new total steps, planned at `step` from the steps since the last point; `evaluating_s` is the
        time spent in evaluations so far (left out of the time of a step)."""
        now = self.clock()
        window_eval_s = evaluating_s - self.window_eval_s
        step_s = (now - self.window_start - window_eval_s) / (step - self.window_step)
        evaluated = self.evaluations_left(self.window_step, total_steps) - self.evaluations_left(step, total_steps)
        if evaluated > 0:  # the evaluations of this window time the ones to come better than the calibration
            self.eval_s = window_eval_s / evaluated
        self.window_step, self.window_start, self.window_eval_s = step, now, evaluating_s
        self.next_point += 1
        left = self.deadline - now - self.closing_s
        total = step + most_steps(left, step_s, lambda n: self.evaluations_left(step, step + n) * self.eval_s)
        # Rank 0's clock decides: every rank must train the same steps.
        total = int(distributed.all_reduce_(torch.tensor(float(total if distributed.is_main() else 0),
                                                         device=self.device)).item())
        while self.next_point < len(REPLAN_AT) and REPLAN_AT[self.next_point] * total <= step:
            self.next_point += 1  # points of the new plan that are already behind are not re-planned at
        if total != total_steps:
            self.history.append([step, total])
            console.info(f"--budget: at step {step} a step takes {step_s:.3g} s and {max(left, 0):.0f} s are left: "
                         f"re-planned from {total_steps} to {total} steps")
        return total


def plan(spec: PretrainSpec, state: Path | None, train_data: pretraining.TrainingData, device: torch.device,
         started: float) -> tuple[PretrainSpec, Pacer | None]:
    """--budget: the spec with the epochs and max_steps a calibration says fit the budget, and the pacer that
    plans again as the run goes (None without a budget).

    A resumed run keeps the plan its first start made (recorded in its state, with the re-plans that
    follow_replans applies), so it finishes the same schedule instead of planning a new one."""
    if spec.train.budget is None:
        return spec, None
    if state is not None:  # the plan the first start made, as its checkpoints recorded it
        recorded = checkpoint.read_state_record(state).get("spec", {})
        planned = {key: recorded.get("train", {})[key] for key in PLANNED if key in recorded.get("train", {})}
        monitor = spec.monitor.model_copy(update={key: value for key, value in recorded.get("monitor", {}).items()
                                                  if key in MONITOR_PLANNED})
        return spec.model_copy(update={"train": spec.train.model_copy(update=planned), "monitor": monitor}), None
    per_epoch = train_data.steps_per_epoch
    probe_loop = pretraining.loop_config(spec, per_epoch, device)
    calibration_model: list[pretraining.Model] = []

    def make_step() -> Step:
        model = pretraining.build_model(spec, probe_loop, device, train_data.num_classes, len(train_data.images))
        calibration_model.append(model)
        optimizer, schedule = pretraining.optimizer_and_schedule(spec, model.method, probe_loop)
        return pretraining.step_function(spec, probe_loop, model, device, optimizer, schedule)

    measured: list[bool] = []  # whether the calibration evaluated (the online kNN is on and has splits)

    def evaluate() -> None:
        model = calibration_model[0]
        knn = online_knn.OnlineKnn(spec, model.info, device, model.method, None, cache_policy(spec))
        if knn.splits is not None and spec.monitor.knn_every:
            knn.measure()
            measured.append(True)

    warmup, timed = (15, 30) if device.type == "cuda" else (2, 4)
    timing = Timing(warmup, timed, min_s=timed_seconds(spec.train.budget),
                    first_step=spec.method.untrained_epochs() * per_epoch)
    calibration = calibrate(make_step, train_data.batches, probe_loop, device, evaluate, timing)
    closing_s = closing_seconds(spec.monitor.report, probe=bool(measured))
    monitor, eval_s = spec.monitor, calibration.eval_s
    for _ in range(2):  # the steps for the monitoring's cost, then the monitoring for those steps, then again
        every = monitor.knn_every if measured else 0
        timed = Calibration(calibration.step_s, eval_s)
        steps = plan_steps(spec.train.budget, time.perf_counter() - started, timed, per_epoch,
                           lambda n, every=every: online_knn.evaluation_count(math.ceil(n / per_epoch), every),
                           fixed_s=eval_s + closing_s)
        if measured:
            monitor, eval_s = monitoring_within(spec, calibration.eval_s, math.ceil(steps / per_epoch))
    # Each rank counted the time already spent on its own clock: rank 0's plan is the run's, so that every
    # rank trains the same steps (a rank with one step more would wait forever in its all-reduce).
    steps = int(distributed.all_reduce_(torch.tensor(float(steps if distributed.is_main() else 0), device=device)).item())
    epochs = math.ceil(steps / per_epoch)
    images = steps * spec.train.batch_size
    console.info(f"--budget {console.format_seconds(spec.train.budget)}: a step takes {calibration.step_s:.3g} s "
                 f"({probe_loop.precision}): {steps} steps of {spec.train.batch_size}, {images:,} images "
                 f"({steps / per_epoch:.2f} epochs of {len(train_data.images):,}), training for about "
                 f"{console.format_seconds(steps * calibration.step_s)}")
    every = monitor.knn_every if measured else 0
    if measured:
        count = online_knn.evaluation_count(epochs, every)
        console.info(f"--budget: the online kNN {count} times, on {monitor.knn_bank_max:,} bank and "
                     f"{monitor.knn_val_max:,} eval images (about {count * eval_s:.0f} s, "
                     f"{100 * count * eval_s / spec.train.budget:.0f} % of the budget)")
    pacer = Pacer(deadline=started + spec.train.budget, eval_s=eval_s, closing_s=closing_s,
                  evaluations_left=lambda step, total: online_knn.evaluations_after(step // per_epoch,
                                                                                    math.ceil(total / per_epoch), every),
                  device=device)
    # A length given in epochs keeps its share of the recipe's train.epochs; the curves get about 20 points.
    train = spec.train.model_copy(update={"epochs": epochs, "max_steps": steps,
                                          "schedule_epochs": spec.train.schedule_epochs or spec.train.epochs,
                                          "log_every": min(spec.train.log_every, max(1, steps // 20))})
    return spec.model_copy(update={"train": train, "monitor": monitor}), pacer


# The share of a budget the online kNN's evaluations may take by default, and the smallest sets it shrinks to.
MONITOR_SHARE = 0.10
MIN_BANK, MIN_VAL = 500, 200


def monitoring_within(spec: PretrainSpec, eval_s: float, epochs: int) -> tuple[MonitorConfig, float]:
    """The online kNN of a --budget run sized to MONITOR_SHARE of the budget: first fewer evaluations (at the
    start and after the last epoch only), then smaller bank and eval sets (an evaluation's time is about
    proportional to their images); with the time of one evaluation."""
    monitor, share = spec.monitor, MONITOR_SHARE * spec.train.budget
    count = online_knn.evaluation_count(epochs, monitor.knn_every)
    if count * eval_s <= share:
        return monitor, eval_s
    if count > 2:
        monitor = monitor.model_copy(update={"knn_every": max(1, epochs)})
        count = online_knn.evaluation_count(epochs, monitor.knn_every)
    if count * eval_s > share:
        scale = share / (count * eval_s)
        bank = min(monitor.knn_bank_max, max(MIN_BANK, int(monitor.knn_bank_max * scale)))
        val = min(monitor.knn_val_max, max(MIN_VAL, int(monitor.knn_val_max * scale)))
        eval_s *= (bank + val) / (monitor.knn_bank_max + monitor.knn_val_max)
        monitor = monitor.model_copy(update={"knn_bank_max": bank, "knn_val_max": val})
    return monitor, eval_s


def follow_replans(replans: list[list[int]], loop: LoopConfig, lr_schedule: torch.Tensor, method: Method,
                   wd_schedule: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A resumed --budget run lays its schedules out as the first start did: each recorded re-plan
    [at step, new total], in order, on the loop (epochs, max_steps), the lr and weight-decay schedules and the
    method's own. Returns the (lr, weight decay) schedules."""
    for at_step, total in replans:
        wd_schedule = stretch_plan(wd_schedule, loop.total_steps, at_step, total)
        lr_schedule = follow_replan(loop, lr_schedule, at_step, total)
        method.replan(at_step, total)
    return lr_schedule, wd_schedule


# The sizing a --budget run on a CPU gets where the user chose neither the encoder nor the batch: the
# quickstart's (resnet10t at half width, the standard stem, batch 128), which takes hundreds of steps in minutes
# on 2 cores where resnet18 at batch 256 takes a few dozen.
CPU_ENCODER = {"name": "resnet10t", "small_stem": False, "kwargs": {"channels": [32, 64, 128, 256]}}
CPU_BATCH_SIZE = 128


def cpu_sizing(spec: PretrainSpec, device: torch.device) -> PretrainSpec:
    """The rule above: a --budget run on a CPU with the default encoder (none given by a preset, an option or
    the method) takes CPU_ENCODER, and with the default batch CPU_BATCH_SIZE; one line says so."""
    if spec.train.budget is None or device.type != "cpu":
        return spec
    encoder_default = not spec.encoder.model_fields_set
    batch_default = "batch_size" not in spec.train.model_fields_set
    if not (encoder_default or batch_default):
        return spec
    chosen = []
    if encoder_default:
        spec = spec.model_copy(update={"encoder": spec.encoder.model_copy(update=CPU_ENCODER)})
        chosen.append("resnet10t at half width (channels 32-256, the standard stem)")
    if batch_default:
        spec = spec.model_copy(update={"train": spec.train.model_copy(update={"batch_size": CPU_BATCH_SIZE})})
        chosen.append(f"batch {CPU_BATCH_SIZE}")
    console.info(f"--budget on a CPU: {' and '.join(chosen)}, the quickstart's sizing, so that minutes train "
                 "hundreds of steps (--encoder / --batch-size choose otherwise)")
    return spec


# What a --budget plan sets, and a resume takes back from the checkpoint's spec.
PLANNED = ("epochs", "max_steps", "schedule_epochs", "log_every")
MONITOR_PLANNED = ("knn_every", "knn_bank_max", "knn_val_max")
