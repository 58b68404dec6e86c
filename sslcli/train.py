"""The one training loop, shared by pretraining and fine-tuning.

fit() owns what every run needs: mixed precision, channels_last, per-step lr schedule, gradient clipping, the
non-finite check, logging, stop signals and checkpoint cadence. What a step computes and how it updates is a
`Step` (the model, its loss, optimizer and lr schedule), what the caller does around the loop is `Events`, so
methods and fine-tuning differ only in those.

A step is checked in one of two ways (_Loop): the synchronous step reads the loss and gradient norm to the
host every step; the deferred (sync-free) step keeps that check on the device (guard.py) and reads it every
log_every steps. Batches reach the device through prefetch.py (with train.prefetch, ahead on a side stream).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from sslcli import console, distributed, schedules
from sslcli.device import PRECISIONS, resolve_channels_last, resolve_precision, resolve_sync_free, sync
from sslcli.errors import RunError
from sslcli.guard import DeviceGuard, GuardReading, SyncWatch
from sslcli.onednn import bf16_conv_fallback
from sslcli.prefetch import device_batches
from sslcli.step import StepOut
from sslcli.stop_signals import StopRequest, interrupted, stop_signals

# batches(epoch, skip): that epoch's batches from the skip-th on (a resumed run skips those already trained on)
Batches = Callable[[int, int], Iterable[Any]]


def _no_op(*args: Any) -> None:
    return None


@dataclass
class Step:
    """What one training step computes and how it updates: the model whose parameters train, the loss of a
    batch at a step, the optimizer and its per-step lr schedule."""

    model: nn.Module
    loss: Callable[[Any, int], StepOut]
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.Tensor
    cancel_gradients: Callable[[int], None] = _no_op  # after backward: drop gradients of parameters frozen now
    # The part of a step that reads only its batch (pretraining's augmentation): loss() gets its output.
    # With LoopConfig.prefetch on CUDA, fit runs it for the next batch on a side stream while this one trains;
    # otherwise just before the step.
    prepare: Callable[[Any], Any] | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaler (a resumed run's, restored); made by fit if None
    # The weight decay of the decayed parameter groups per step (optim.final_weight_decay: DINO's cosine);
    # None leaves the groups' own weight decay alone.
    wd_schedule: torch.Tensor | None = None


class Replanner(Protocol):
    """What fit() asks of --budget's pacer (budget.Pacer): whether to plan again after a step, and the
    new total steps (given the seconds spent in evaluations so far)."""

    def start(self, step: int, evaluating_s: float) -> None: ...

    def due(self, step: int, total_steps: int) -> bool: ...

    def replan(self, step: int, total_steps: int, evaluating_s: float) -> int: ...


@dataclass
class Events:
    """What the caller does around the loop. Steps are counted from 0 in on_step_end, epochs from 1."""

    metrics: console.MetricsLog | None = None  # every logged record is written here
    on_step_end: Callable[[int], None] = _no_op  # after each applied update: EMA targets, queues, centers
    on_log: Callable[[dict[str, Any]], None] = _no_op  # each logged record, after it is written
    on_epoch_end: Callable[[int, int], None] = _no_op  # (epochs done, step): evaluation (online kNN, val score)
    on_checkpoint: Callable[[int, int], None] = _no_op  # (epoch, step): save; also at the end and on a stop
    on_replan: Callable[[int, int], None] = _no_op  # (at step, new total steps): a --budget run re-planned
    pacer: Replanner | None = None  # --budget: plans the total steps again as the run goes


@dataclass
class LoopConfig:
    epochs: int
    steps_per_epoch: int
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    channels_last: bool = False
    clip_grad: float | None = None
    clip_per_parameter: bool = False  # each parameter's gradient norm clipped on its own (DINO), not the global one
    log_every: int = 50
    checkpoint_every: int = 0  # epochs; 0 = only at the end
    checkpoint_every_steps: int = 0  # also every this many steps; 0 = off
    description: str = "train"
    on_nan: str = "stop"  # "stop" before the bad update, or "skip" the step (at most max_nan_skips times)
    max_nan_skips: int = 10
    sync_free: bool = False  # resolved: check steps on the device, read every log_every steps (guard.py)
    debug_sync: bool = False  # with sync_free on CUDA: any other host sync raises (a test of the loop)
    prefetch: bool = False  # on CUDA: the next batch copied and prepared on a side stream during this step

    max_steps: int | None = None  # a run planned by --budget ends inside its last epoch

    @property
    def total_steps(self) -> int:
        whole = self.epochs * self.steps_per_epoch
        return whole if self.max_steps is None else min(whole, self.max_steps)

    @classmethod
    def from_spec(cls, train: Any, clip_grad: float | None, steps_per_epoch: int, device: torch.device,
                  description: str, clip_per_parameter: bool = False) -> LoopConfig:
        """The loop a spec's train section describes (pretrain's or finetune's), its 'auto' settings resolved
        for the device; the loop's defaults for what the section does not have (finetune checkpoints only at
        the end and stops on a non-finite loss)."""
        optional = ("checkpoint_every", "checkpoint_every_steps", "on_nan", "max_nan_skips", "debug_sync", "prefetch",
                    "max_steps")
        return cls(epochs=train.epochs, steps_per_epoch=steps_per_epoch,
                   precision=resolve_precision(train.precision, device),
                   channels_last=resolve_channels_last(train.channels_last, device),
                   sync_free=resolve_sync_free(train.sync_free, device), clip_grad=clip_grad,
                   clip_per_parameter=clip_per_parameter, log_every=train.log_every, description=description,
                   **{name: getattr(train, name) for name in optional if hasattr(train, name)})


@dataclass
class FitResult:
    steps: int
    epochs: int
    images: int
    wall_s: float
    last_loss: float | None
    skipped_steps: int = 0

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.wall_s, 1e-9)


def fit(step_fn: Step, batches: Batches, cfg: LoopConfig, device: torch.device, events: Events | None = None, *,
        start_step: int = 0) -> FitResult:
    """Train for cfg.epochs; `batches(epoch, skip)` yields an epoch's batches from the skip-th on,
    `step_fn.loss(batch, step)` does the rest. A resumed run passes the step it continues from.
    Each full epoch calls events.on_epoch_end before that epoch's checkpoint.

    Synchronous (cfg.sync_free off, the CPU default): the loss and gradient norm are read to the host every
    step and a non-finite step is never applied. Sync-free (CUDA's default): the same check runs on the
    device (guard.py) and the host reads it with the logged values and before every epoch end, checkpoint
    and stop, so a bad step is undone on the device and reported at that read, naming the same step.

    Under torchrun every rank runs this loop on its share of each global batch; the loss, gradient norm and
    stop flag are all-reduced, so the logged loss is the global mean and every rank takes the same decision
    about a non-finite step or a stop signal (a rank that stopped alone would leave the others waiting).

    A batch is a tensor (uint8 images) or a tuple of tensors whose first is the images (e.g. images,
    labels for fine-tuning); fit moves it to the device and counts images by its first dimension.

    With events.pacer (--budget) the run may be re-planned after a step: cfg's epochs and max_steps change in
    place, the lr schedule's remainder is stretched over the new total, and events.on_replan lets the caller
    stretch its own schedules.
    """
    if len(step_fn.lr_schedule) < cfg.total_steps:
        raise ValueError("the lr schedule is shorter than the run")
    events = events or Events()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    step_fn.model.to(device=device, memory_format=memory_format).train()
    loop = _Loop(step_fn, cfg, device, events, start_step)
    first_epoch, skip = divmod(start_step, cfg.steps_per_epoch)
    epoch = first_epoch
    with stop_signals() as loop.stop:
        try:
            while epoch < cfg.epochs:  # cfg.epochs changes when a --budget run is re-planned
                epoch_batches = batches(epoch, skip if epoch == first_epoch else 0)
                for batch, size in device_batches(epoch_batches, device, memory_format, step_fn.prepare, loop.watch,
                                                  ahead=cfg.prefetch):
                    if loop.step >= cfg.total_steps or loop.step >= (epoch + 1) * cfg.steps_per_epoch:
                        break  # a loader that yields more batches than planned never runs past the schedule
                    loop.train_step(batch, epoch, size)
                    loop.keep_pace()
                # A whole epoch (not a loader that ran short), or the planned end inside the last one.
                if loop.step == min((epoch + 1) * cfg.steps_per_epoch, cfg.total_steps):
                    loop.settle()
                    evaluating = time.perf_counter()
                    events.on_epoch_end(epoch + 1, loop.step)
                    loop.evaluating_s += time.perf_counter() - evaluating
                if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
                    loop.settle()
                    events.on_checkpoint(epoch + 1, loop.step)
                epoch += 1
            loop.settle()
        finally:
            loop.progress.close()
    events.on_checkpoint(cfg.epochs, loop.step)
    return loop.result(cfg.epochs)


class _Loop:
    """One fit(): the step counter, the last finite loss and the skips, and the two ways of checking a step:
    synchronous_step (on the host, every step) and deferred_step (on the device, read when a read is due)."""

    def __init__(self, step_fn: Step, cfg: LoopConfig, device: torch.device, events: Events, start_step: int):
        self.step_fn, self.cfg, self.device, self.events = step_fn, cfg, device, events
        self.optimizer, self.lr_schedule, self.wd_schedule = step_fn.optimizer, step_fn.lr_schedule, step_fn.wd_schedule
        self.scaler = step_fn.scaler or torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.params = [p for p in step_fn.model.parameters() if p.requires_grad]
        self.peak_lr = float(self.lr_schedule.max())
        self.dtype = PRECISIONS[cfg.precision]
        self.progress = console.Progress(cfg.total_steps, cfg.description, every=cfg.log_every,
                                         start_step=start_step)
        self.start_step, self.step, self.images, self.skipped = start_step, start_step, 0, 0
        self.last_good: tuple[int, float] | None = None
        self.start = time.perf_counter()
        self.guard = (DeviceGuard(step_fn.model, self.optimizer, device, skip=cfg.on_nan == "skip",
                                  max_skips=cfg.max_nan_skips) if cfg.sync_free else None)
        self.unread = False  # deferred steps the host has not checked yet
        self.stop = StopRequest()
        self.watch = SyncWatch(cfg.debug_sync and self.guard is not None)
        self.pacer, self.evaluating_s = events.pacer, 0.0  # evaluating_s: time in on_epoch_end (the online kNN)
        if self.pacer is not None:
            self.pacer.start(start_step, 0.0)

    def result(self, epochs: int) -> FitResult:
        return FitResult(self.step, epochs, self.images, time.perf_counter() - self.start,
                         self.last_good[1] if self.last_good else None, self.skipped)

    def train_step(self, batch: Any, epoch: int, size: int) -> None:
        _set_lr(self.optimizer, float(self.lr_schedule[self.step]), self.peak_lr)
        if self.wd_schedule is not None:  # past its end (a calibration's extra steps) it keeps its last value
            _set_weight_decay(self.optimizer, float(self.wd_schedule[min(self.step, len(self.wd_schedule) - 1)]))
        self.images += size
        if self.guard is not None and self.guard.ready:
            self.deferred_step(batch, epoch)
        else:
            self.synchronous_step(batch, epoch)

    # ------------------------------------------------------------ the synchronous step

    def synchronous_step(self, batch: Any, epoch: int) -> None:
        """Forward, backward, one host read of the loss and gradient norm, and the update only when both are
        finite. A non-finite step raises before the update, or under on_nan=skip is skipped (no update, no
        on_step_end) while skips are left."""
        cfg, step = self.cfg, self.step
        out, read = self.forward_backward(batch, step)
        # The one host read per step, placed after backward is queued so the device is not left idle waiting
        # for it, and before the optimizer step so a bad loss never reaches the weights.
        world = distributed.world_size()
        loss_value, grad_value, stops = (v / world if i < 2 else v for i, v in enumerate(read.tolist()))
        if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
            self.optimizer.zero_grad(set_to_none=True)
            if not (cfg.on_nan == "skip" and self.skipped < cfg.max_nan_skips):
                raise _non_finite(step + 1, epoch + 1, loss_value, self.last_good, grad_value)
            self.step += 1
            self.skipped += 1
            bad = loss_value if not math.isfinite(loss_value) else grad_value
            console.warn(f"step {self.step}: non-finite loss or gradients ({bad}), update skipped "
                         f"({self.skipped}/{cfg.max_nan_skips} skips allowed)")
            return
        _update(self.optimizer, self.scaler, self.params, cfg)
        self.step += 1
        self.events.on_step_end(step)
        self.last_good = (self.step, loss_value)
        self.after_step(epoch, loss_value, out, stops > 0)

    def forward_backward(self, batch: Any, step: int) -> tuple[StepOut, torch.Tensor]:
        """Forward and backward with no host read; returns the step's output and the device tensor
        [loss, gradient norm, stop] (summed over the ranks under torchrun) that decides whether it is applied."""
        step_fn, scaler = self.step_fn, self.scaler
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        # On CPU the convolutions whose bf16 weight gradient oneDNN gets wrong run in float32 (onednn.py).
        with autocast, bf16_conv_fallback(self.device, self.dtype):
            out = step_fn.loss(batch, step)
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(out.loss).backward()
        step_fn.cancel_gradients(step)
        # A finite loss can still give non-finite gradients (measured: oneDNN's bf16 weight gradient leaving
        # garbage in a strided convolution on a map smaller than its stride, onednn.py), which would turn the
        # weights into NaN silently: the gradient norm is checked too. Under fp16 the GradScaler already skips steps with non-finite
        # (scaled) gradients.
        loss = out.loss.detach().float()
        grads = [p.grad for p in self.params if p.grad is not None] if not scaler.is_enabled() else []
        grad_norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()) if grads
                     else loss.new_zeros(()))
        # DDP has already averaged the gradients, so the norm is the same everywhere; a NaN on any rank makes
        # the sum NaN on all of them.
        stop = loss.new_full((), float(self.stop.signum is not None))
        return out, distributed.all_reduce_(torch.stack([loss, grad_norm, stop]))

    def after_step(self, epoch: int, loss_value: float, out: StepOut, stop_now: bool) -> None:
        """Logging, stop signals and step checkpoints of a step whose loss the host knows."""
        cfg = self.cfg
        record = self.log(epoch, loss_value, out)
        if record is not None:
            self.events.on_log(record)
        # Under torchrun only the all-reduced flag counts: a signal that lands after this step's read is seen
        # by every rank at the next read, so all of them stop at the same step.
        if stop_now or (self.stop.signum is not None and not distributed.is_distributed()):
            self.events.on_checkpoint(epoch, self.step)
            raise interrupted(self.stop.signum or signal.SIGTERM, self.step, cfg.total_steps)
        if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 and self.step < cfg.total_steps:
            self.events.on_checkpoint(epoch, self.step)

    # ------------------------------------------------------------ the deferred (sync-free) step

    def deferred_step(self, batch: Any, epoch: int) -> None:
        """A step whose finite check stays on the device; the host reads it when a read is due."""
        cfg, step, guard = self.cfg, self.step, self.guard
        with self.watch.checking():
            guard.begin()
            out, read = self.forward_backward(batch, step)
            if self.scaler.is_enabled():
                overflow = _update_without_host_read(self.optimizer, self.scaler, self.params, cfg)
                if overflow is not None:  # what GradScaler.step would have skipped, without its host read
                    guard.undo_update(overflow)
            else:
                _update(self.optimizer, self.scaler, self.params, cfg)
            self.events.on_step_end(step)  # undone on the device with the update if the step was not finite
            world = distributed.world_size()
            guard.settle(step, read[0] / world, read[1] / world, read[2])
        self.step += 1
        self.unread = True
        local_stop = self.stop.signum is not None and not distributed.is_distributed()
        due = (self.step % cfg.log_every == 0 or self.step == cfg.total_steps or local_stop
               or (cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0))
        if not due:
            self.progress.update(self.step)
            return
        reading = self.read_guard()
        if reading.latest_applied:
            self.after_step(epoch, reading.latest_loss, out, reading.stop)
        elif reading.stop or local_stop:
            self.events.on_checkpoint(epoch, self.step)
            raise interrupted(self.stop.signum or signal.SIGTERM, self.step, cfg.total_steps)

    def settle(self) -> None:
        """Before an epoch end, a checkpoint or the end: the deferred steps are checked on the host."""
        if self.guard is not None and self.unread:
            self.read_guard()

    def read_guard(self) -> GuardReading:
        """The host read of the device guard: raise as the synchronous loop would, warn about skipped steps."""
        cfg = self.cfg
        reading = self.guard.read()
        self.unread = False
        if reading.last_good_step > 0:
            self.last_good = (reading.last_good_step, reading.last_good_loss)
        if reading.skips > self.skipped:
            console.warn(f"{reading.skips - self.skipped} step(s) up to step {self.step}: non-finite loss or "
                         f"gradients, update skipped ({min(reading.skips, cfg.max_nan_skips)}/{cfg.max_nan_skips} "
                         "skips allowed)")
            self.skipped = min(reading.skips, cfg.max_nan_skips)
        if reading.halted:
            bad_step = reading.first_bad_step
            before = self.last_good if self.last_good and self.last_good[0] < bad_step else None
            raise _non_finite(bad_step, (bad_step - 1) // cfg.steps_per_epoch + 1, reading.first_bad_loss, before,
                              reading.first_bad_grad)
        return reading

    # ------------------------------------------------------------ pace and logs

    def keep_pace(self) -> None:
        """--budget: at the pacer's points, plan the total steps again and lay the schedules over them."""
        if self.pacer is None or not self.pacer.due(self.step, self.cfg.total_steps):
            return
        self.settle()  # the deferred steps have run, so the clock reads the time they took
        sync(self.device)
        total = self.pacer.replan(self.step, self.cfg.total_steps, self.evaluating_s)
        if total != self.cfg.total_steps:
            self.wd_schedule = stretch_plan(self.wd_schedule, self.cfg.total_steps, self.step, total)
            self.lr_schedule = follow_replan(self.cfg, self.lr_schedule, self.step, total)
            self.progress.retotal(total)
            self.events.on_replan(self.step, total)

    def log(self, epoch: int, loss: float, out: StepOut) -> dict[str, Any] | None:
        """Every log_every steps and at the last: one record to metrics.jsonl and the progress line."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every and step != cfg.total_steps:
            self.progress.update(step)
            return None
        elapsed = time.perf_counter() - self.start
        rate = self.images / max(elapsed, 1e-9)
        eta = elapsed / max(step - self.start_step, 1) * (cfg.total_steps - step)  # this process's steps only
        lr = self.optimizer.param_groups[0]["lr"]
        record: dict[str, Any] = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                                  "images_per_s": round(rate, 2), "elapsed_s": round(elapsed, 2)}
        if self.wd_schedule is not None:  # the weight decay this logged step trained with
            record["weight_decay"] = next((g["weight_decay"] for g in self.optimizer.param_groups
                                           if g.get("decayed")), 0.0)
        extra = {k: v for k, v in out.logs.items() if k != "loss"}
        if extra:  # one host read for every logged value
            values = [torch.as_tensor(v).detach().float().reshape(()) for v in extra.values()]
            stacked = torch.stack([v.to(values[0].device) for v in values])
            record.update(zip(extra, stacked.tolist(), strict=True))
        if self.events.metrics is not None:
            self.events.metrics.write(record)
        self.progress.update(step, {"epoch": f"{epoch + 1}/{cfg.epochs}", "loss": loss, "lr": lr,
                                    "img/s": round(rate, 1), "eta": console.format_seconds(eta)})
        return record


def follow_replan(cfg: LoopConfig, lr_schedule: torch.Tensor, at_step: int, total_steps: int) -> torch.Tensor:
    """A re-plan of a --budget run applied to the loop: the epochs and max_steps of cfg (in place) and the lr
    schedule stretched over the new total (returned). Also used by a resume to follow the recorded re-plans."""
    planned = lr_schedule[:cfg.total_steps]  # a schedule may run past the plan; the plan's end is its end
    cfg.max_steps = total_steps
    cfg.epochs = math.ceil(total_steps / cfg.steps_per_epoch)
    return schedules.stretch(planned, at_step, total_steps)


def stretch_plan(schedule: torch.Tensor | None, planned_steps: int, at_step: int,
                 total_steps: int) -> torch.Tensor | None:
    """A per-step schedule of a run planned for planned_steps, re-laid over total_steps from at_step on (a
    --budget re-plan), as follow_replan does the lr schedule's; None stays None."""
    if schedule is None:
        return None
    return schedules.stretch(schedule[:planned_steps], at_step, total_steps)


def _set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        if group.get("decayed"):
            group["weight_decay"] = weight_decay


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = (peak if group.get("fixed_lr") else lr) * group.get("lr_scale", 1.0)


def _non_finite(step: int, epoch: int, loss: float, last_good: tuple[int, float] | None,
                grad_norm: float = 0.0) -> RunError:
    """The error of a non-finite step (1-based step and epoch, as the logs count them)."""
    before = f"last finite loss {last_good[1]:.4g} at step {last_good[0]}" if last_good else "no finite loss yet"
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradients became {grad_norm} (loss {loss:.4g})"
    return RunError(
        f"{what} at step {step} (epoch {epoch}, {before}); stopped before applying the update, "
        "the last checkpoint is intact. Lower optim.base_lr or set optim.clip_grad (e.g. --set optim.clip_grad=3)"
    )


def clip_gradients(params: list[torch.Tensor], max_norm: float, per_parameter: bool) -> None:
    """Scale the gradients down to norm max_norm: the global norm over all of them (torch's clip_grad_norm_), or
    with per_parameter each parameter's own norm (the official DINO's utils.clip_gradients: a parameter
    whose gradient is small keeps it whatever the others' norms)."""
    if not per_parameter:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    # One fused norm over the list and one fused scale, not a clip call per parameter: a ViT has ~150 of them.
    norms = torch.stack([n.float() for n in torch._foreach_norm(grads)])
    scales = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # the 1e-6 of DINO's clip_coef and torch's clip
    torch._foreach_mul_(grads, [s.to(g.dtype) for s, g in zip(scales.unbind(), grads, strict=True)])


def _update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor],
            cfg: LoopConfig) -> None:
    if all(p.grad is None for p in params):
        # The method dropped every gradient (DeepCluster v2's memory-filling first epoch): nothing to step, and
        # the GradScaler refuses a step without gradients.
        return
    if cfg.clip_grad is not None:
        scaler.unscale_(optimizer)
        clip_gradients(params, cfg.clip_grad, cfg.clip_per_parameter)
    scaler.step(optimizer)
    scaler.update()


def _update_without_host_read(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                              params: list[torch.Tensor], cfg: LoopConfig) -> torch.Tensor | None:
    """The fp16 update of the sync-free step: unscale, clip, step and update the scale as _update does, but
    step whether or not the gradients overflowed (GradScaler.step reads that on the host); returns the
    device flag of an overflow, for the guard to undo the update with (None when there was no update)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    scaler.unscale_(optimizer)  # records the overflow for scaler.update() on the device
    overflow = ~torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
    if cfg.clip_grad is not None:
        clip_gradients(params, cfg.clip_grad, cfg.clip_per_parameter)
    optimizer.step()
    scaler.update()
    return overflow
