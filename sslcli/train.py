"""The one training loop, shared by pretraining and fine-tuning.

fit() owns what every run needs: mixed precision, channels_last, per-step lr schedule, gradient
clipping, the non-finite check, logging, stop signals and checkpoint cadence. What a step computes is a
`Step` (the model and its loss), what the caller does around the loop is `Events`, so methods and
fine-tuning differ only in those.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from sslcli import console, distributed, schedules
from sslcli.errors import Interrupted, RunError, UsageError
from sslcli.guard import DeviceGuard, GuardReading
from sslcli.step import StepOut

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# batches(epoch, skip): that epoch's batches from the skip-th on (a resumed run skips those already trained on)
Batches = Callable[[int, int], Iterable[Any]]


def _no_op(*args: Any) -> None:
    return None


@dataclass
class Step:
    """What one training step computes: the model whose parameters train, and the loss of a batch at a step."""

    model: nn.Module
    loss: Callable[[Any, int], StepOut]
    cancel_gradients: Callable[[int], None] = _no_op  # after backward: drop gradients of parameters frozen now
    # The part of a step that reads only its batch (pretraining's augmentation): loss() gets its output.
    # With LoopConfig.prefetch on CUDA, fit runs it for the next batch on a side stream while this one trains;
    # otherwise just before the step.
    prepare: Callable[[Any], Any] | None = None


@dataclass
class Events:
    """What the caller does around the loop. Steps are counted from 0 in on_step_end, epochs from 1."""

    metrics: console.MetricsLog | None = None  # every logged record is written here
    on_step_end: Callable[[int], None] = _no_op  # after each applied update: EMA targets, queues, centers
    on_log: Callable[[dict[str, Any]], None] = _no_op  # each logged record, after it is written
    on_epoch_end: Callable[[int, int], None] = _no_op  # (epochs done, step): evaluation (online kNN, val score)
    on_checkpoint: Callable[[int, int], None] = _no_op  # (epoch, step): save; also at the end and on a stop
    on_replan: Callable[[int, int], None] = _no_op  # (at step, new total steps): a --budget run re-planned


class Replanner(Protocol):
    """What fit() asks of --budget's pacer (budget.Pacer): whether to plan again after a step, and the
    new total steps (given the seconds spent in evaluations so far)."""

    def start(self, step: int, evaluating_s: float) -> None: ...

    def due(self, step: int, total_steps: int) -> bool: ...

    def replan(self, step: int, total_steps: int, evaluating_s: float) -> int: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but CUDA is not available here; use --set train.device=cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matmuls and convs run natively (elsewhere they are emulated and slower)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 on CUDA (no loss scaling needed) and on CPUs with native bf16, else fp32.

    Measured on a 2-core AVX512-BF16 EPYC: a resnet10t SimCLR step runs 1.4x faster in bf16 autocast.
    """
    if precision == "auto":
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return "bf16" if native else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("fp16 needs a CUDA device; use --set train.precision=fp32 (or bf16)")
    return precision


def resolve_sync_free(setting: bool | str, device: torch.device) -> bool:
    """'auto': on for CUDA (bf16, fp32 and fp16), where a per-step host read leaves the GPU idle; off on
    CPU, where the read costs nothing."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda"


def prepare_device(device: torch.device) -> None:
    """On CUDA: cuDNN picks the fastest convolution for the (fixed) input shapes, and fp32 matmuls and
    convolutions use TF32 tensor cores (bf16 autocast covers most of the step; the rest is fp32)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """'auto': on for CUDA and for CPUs with oneDNN, whose convolutions are faster in NHWC (+10 % measured)."""
    if setting != "auto":
        return bool(setting)
    return device.type == "cuda" or (device.type == "cpu" and torch.backends.mkldnn.is_available())


def param_groups(model: nn.Module, weight_decay: float, fixed_lr_modules: tuple[str, ...] = ()) -> list[dict]:
    """timm's weight-decay split, done here so it sees the whole method: biases, norm parameters and the
    names any submodule lists in no_weight_decay() (a ViT's pos_embed and cls_token) get no decay, and so
    no LARS adaptation. Parameters under fixed_lr_modules are tagged to keep the peak lr (SimSiam)."""
    exempt: set[str] = set()
    for prefix, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            exempt |= {f"{prefix}.{n}" if prefix else n for n in names()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in exempt)
        fixed = any(name.startswith(m + ".") for m in fixed_lr_modules)
        groups.setdefault((decay, fixed), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "fixed_lr": fixed}
            for (decay, fixed), params in groups.items()]


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    trust_coeff: float, betas: tuple[float, float] | None = None,
                    fixed_lr_modules: tuple[str, ...] = ()) -> torch.optim.Optimizer:
    """timm's optimizers (LARS, SGD, AdamW, LAMB) over param_groups(model)."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if name == "lars":
        kwargs["trust_coeff"] = trust_coeff
    if name in ("lars", "sgd"):
        kwargs["momentum"] = momentum
    if name in ("adamw", "lamb") and betas is not None:
        kwargs["betas"] = tuple(betas)
    groups = param_groups(model, weight_decay, fixed_lr_modules)
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)


@dataclass
class LoopConfig:
    epochs: int
    steps_per_epoch: int
    precision: str = "fp32"  # resolved: fp32, bf16 or fp16
    channels_last: bool = False
    clip_grad: float | None = None
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


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = (peak if group.get("fixed_lr") else lr) * group.get("lr_scale", 1.0)


def _non_finite(step: int, epoch: int, loss: float, last_good: tuple[int, float] | None,
                grad_norm: float = 0.0) -> RunError:
    before = f"last finite loss {last_good[1]:.4g} at step {last_good[0]}" if last_good else "no finite loss yet"
    what = f"loss became {loss}" if not math.isfinite(loss) else f"gradients became {grad_norm} (loss {loss:.4g})"
    return RunError(
        f"{what} at step {step} (epoch {epoch}, {before}); stopped before applying the update, "
        "the last checkpoint is intact. Lower optim.base_lr or set optim.clip_grad (e.g. --set optim.clip_grad=3)"
    )


def fit(step_fn: Step, batches: Batches, optimizer: torch.optim.Optimizer, lr_schedule: torch.Tensor,
        cfg: LoopConfig, device: torch.device, events: Events | None = None, *, start_step: int = 0,
        scaler: torch.amp.GradScaler | None = None, pacer: Replanner | None = None) -> FitResult:
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

    With a `pacer` (--budget) the run may be re-planned after a step: cfg's epochs and max_steps change in
    place, the lr schedule's remainder is stretched over the new total, and events.on_replan lets the caller
    stretch its own schedules.
    """
    if len(lr_schedule) < cfg.total_steps:
        raise ValueError("the lr schedule is shorter than the run")
    events = events or Events()
    if scaler is None:
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    step_fn.model.to(device=device, memory_format=memory_format).train()
    loop = _Loop(step_fn, optimizer, scaler, lr_schedule, cfg, device, events, start_step, pacer)
    first_epoch, skip = divmod(start_step, cfg.steps_per_epoch)
    epoch = first_epoch
    with _stop_signals() as loop.stop:
        try:
            while epoch < cfg.epochs:  # cfg.epochs changes when a --budget run is re-planned
                epoch_batches = batches(epoch, skip if epoch == first_epoch else 0)
                for batch, size in _prefetched(epoch_batches, device, memory_format, step_fn.prepare, loop.watch,
                                               ahead=cfg.prefetch):
                    if loop.step >= cfg.total_steps or loop.step >= (epoch + 1) * cfg.steps_per_epoch:
                        break  # a loader that yields more batches than planned never runs past the schedule
                    loop.train_step(batch, epoch, size)
                    loop.keep_pace(epoch)
                # A whole epoch (not a loader that ran short), or the planned end inside the last one.
                if loop.step == min((epoch + 1) * cfg.steps_per_epoch, cfg.total_steps):
                    loop.settle(epoch)
                    evaluating = time.perf_counter()
                    events.on_epoch_end(epoch + 1, loop.step)
                    loop.evaluating_s += time.perf_counter() - evaluating
                if cfg.checkpoint_every and (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < cfg.epochs:
                    loop.settle(epoch)
                    events.on_checkpoint(epoch + 1, loop.step)
                epoch += 1
            loop.settle(cfg.epochs - 1)
        finally:
            loop.progress.close()
    events.on_checkpoint(cfg.epochs, loop.step)
    return loop.result(cfg.epochs)


class _Loop:
    """One fit(): the step counter, the last finite loss and the skips, and the two ways of checking a step
    (on the host every step, or on the device with deferred reads)."""

    def __init__(self, step_fn: Step, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 lr_schedule: torch.Tensor, cfg: LoopConfig, device: torch.device, events: Events, start_step: int,
                 pacer: Replanner | None = None):
        self.step_fn, self.optimizer, self.scaler, self.cfg, self.device = step_fn, optimizer, scaler, cfg, device
        self.events, self.lr_schedule = events, lr_schedule
        self.params = [p for p in step_fn.model.parameters() if p.requires_grad]
        self.peak_lr = float(lr_schedule.max())
        self.dtype = PRECISIONS[cfg.precision]
        self.progress = console.Progress(cfg.total_steps, cfg.description, every=cfg.log_every,
                                         start_step=start_step)
        self.step, self.images, self.skipped = start_step, 0, 0
        self.last_good: tuple[int, float] | None = None
        self.start = time.perf_counter()
        self.guard = (DeviceGuard(step_fn.model, optimizer, device, skip=cfg.on_nan == "skip",
                                  max_skips=cfg.max_nan_skips) if cfg.sync_free else None)
        self.unread = False  # deferred steps the host has not checked yet
        self.stop = _StopRequest()
        self.watch = _SyncWatch(cfg.debug_sync and self.guard is not None)
        self.pacer, self.evaluating_s = pacer, 0.0  # evaluating_s: time in on_epoch_end (the online kNN)
        if pacer is not None:
            pacer.start(start_step, 0.0)

    def result(self, epochs: int) -> FitResult:
        return FitResult(self.step, epochs, self.images, time.perf_counter() - self.start,
                         self.last_good[1] if self.last_good else None, self.skipped)

    def train_step(self, batch: Any, epoch: int, size: int) -> None:
        cfg, step = self.cfg, self.step
        _set_lr(self.optimizer, float(self.lr_schedule[step]), self.peak_lr)
        self.images += size
        if self.guard is not None and self.guard.ready:
            self._deferred_step(batch, epoch)
            return
        loss_value, out, stop_now = _train_step(
            batch, step, epoch, self.step_fn, self.optimizer, self.scaler, self.dtype, self.device, self.params,
            cfg.clip_grad, self.last_good, may_skip=cfg.on_nan == "skip" and self.skipped < cfg.max_nan_skips,
            stop_requested=self.stop.signum is not None)
        self.step += 1
        if out is None:  # a non-finite loss skipped under on_nan=skip: no update, no EMA
            self.skipped += 1
            console.warn(f"step {self.step}: non-finite loss or gradients ({loss_value}), update skipped "
                         f"({self.skipped}/{cfg.max_nan_skips} skips allowed)")
            return
        self.events.on_step_end(step)
        self.last_good = (self.step, loss_value)
        self._after_step(epoch, loss_value, out, stop_now)

    def _after_step(self, epoch: int, loss_value: float, out: StepOut, stop_now: bool) -> None:
        """Logging, stop signals and step checkpoints of a step whose loss the host knows."""
        cfg = self.cfg
        record = _log(self.step, epoch, loss_value, out, self.optimizer, self.progress, self.events.metrics, cfg,
                      self.images, self.start)
        if record is not None:
            self.events.on_log(record)
        # Under torchrun only the all-reduced flag counts: a signal that lands after this step's read is seen
        # by every rank at the next read, so all of them stop at the same step.
        if stop_now or (self.stop.signum is not None and not distributed.is_distributed()):
            self.events.on_checkpoint(epoch, self.step)
            raise _interrupted(self.stop.signum or signal.SIGTERM, self.step, cfg.total_steps)
        if cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0 and self.step < cfg.total_steps:
            self.events.on_checkpoint(epoch, self.step)

    def _deferred_step(self, batch: Any, epoch: int) -> None:
        """A step whose finite check stays on the device; the host reads it when a read is due."""
        cfg, step, guard = self.cfg, self.step, self.guard
        with self.watch.checking():
            guard.begin()
            out, read = _forward_backward(batch, step, self.step_fn, self.optimizer, self.scaler, self.dtype,
                                          self.device, self.params, stop_requested=self.stop.signum is not None)
            if self.scaler.is_enabled():
                overflow = _update_unchecked(self.optimizer, self.scaler, self.params, cfg.clip_grad)
                if overflow is not None:  # what GradScaler.step would have skipped, without its host read
                    guard.undo_update(overflow)
            else:
                _update(self.optimizer, self.scaler, self.params, cfg.clip_grad)
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
        reading = self._read(epoch)
        if reading.latest_applied:
            self._after_step(epoch, reading.latest_loss, out, reading.stop)
        elif reading.stop or local_stop:
            self.events.on_checkpoint(epoch, self.step)
            raise _interrupted(self.stop.signum or signal.SIGTERM, self.step, cfg.total_steps)

    def keep_pace(self, epoch: int) -> None:
        """--budget: at the pacer's points, plan the total steps again and lay the schedules over them."""
        if self.pacer is None or not self.pacer.due(self.step, self.cfg.total_steps):
            return
        self.settle(epoch)  # the deferred steps have run, so the clock reads the time they took
        sync(self.device)
        total = self.pacer.replan(self.step, self.cfg.total_steps, self.evaluating_s)
        if total != self.cfg.total_steps:
            self.lr_schedule = follow_replan(self.cfg, self.lr_schedule, self.step, total)
            self.progress.retotal(total)
            self.events.on_replan(self.step, total)

    def settle(self, epoch: int) -> None:
        """Before an epoch end, a checkpoint or the end: the deferred steps are checked on the host."""
        if self.guard is not None and self.unread:
            self._read(epoch)

    def _read(self, epoch: int) -> GuardReading:
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
            raise _non_finite(bad_step, (bad_step - 1) // cfg.steps_per_epoch, reading.first_bad_loss, before,
                              reading.first_bad_grad)
        return reading


def follow_replan(cfg: LoopConfig, lr_schedule: torch.Tensor, at_step: int, total_steps: int) -> torch.Tensor:
    """A re-plan of a --budget run applied to the loop: the epochs and max_steps of cfg (in place) and the lr
    schedule stretched over the new total (returned). Also used by a resume to follow the recorded re-plans."""
    planned = lr_schedule[:cfg.total_steps]  # a schedule may run past the plan; the plan's end is its end
    cfg.max_steps = total_steps
    cfg.epochs = math.ceil(total_steps / cfg.steps_per_epoch)
    return schedules.stretch(planned, at_step, total_steps)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_backward(batch: Any, step: int, step_fn: Step, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, dtype: torch.dtype | None, device: torch.device,
                      params: list[torch.Tensor], stop_requested: bool) -> tuple[StepOut, torch.Tensor]:
    """Forward and backward with no host read; returns the step's output and the device tensor
    [loss, gradient norm, stop] (summed over the ranks under torchrun) that decides whether it is applied."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with autocast:
        out = step_fn.loss(batch, step)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(out.loss).backward()
    step_fn.cancel_gradients(step)
    # A finite loss can still give non-finite gradients (measured: bf16 autocast on CPU overflowing in a
    # backward kernel), which would turn the weights into NaN silently: the gradient norm is checked too.
    # Under fp16 the GradScaler already skips steps with non-finite (scaled) gradients.
    loss = out.loss.detach().float()
    grads = [p.grad for p in params if p.grad is not None] if not scaler.is_enabled() else []
    grad_norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()) if grads
                 else loss.new_zeros(()))
    # DDP has already averaged the gradients, so the norm is the same everywhere; a NaN on any rank makes
    # the sum NaN on all of them.
    read = distributed.all_reduce_(torch.stack([loss, grad_norm, loss.new_full((), float(stop_requested))]))
    return out, read


def _update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor],
            clip_grad: float | None) -> None:
    if all(p.grad is None for p in params):
        # The method dropped every gradient (DeepCluster v2's memory-filling first epoch): nothing to step, and
        # the GradScaler refuses a step without gradients.
        return
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scaler.step(optimizer)
    scaler.update()


def _update_unchecked(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params: list[torch.Tensor],
                      clip_grad: float | None) -> torch.Tensor | None:
    """The fp16 update of the sync-free step: unscale, clip, step and update the scale as _update does, but
    step whether or not the gradients overflowed (GradScaler.step reads that on the host); returns the
    device flag of an overflow, for the guard to undo the update with (None when there was no update)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    scaler.unscale_(optimizer)  # records the overflow for scaler.update() on the device
    overflow = ~torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()))
    if clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    scaler.update()
    return overflow


def _train_step(batch: Any, step: int, epoch: int, step_fn: Step,
                optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, dtype: torch.dtype | None,
                device: torch.device, params: list[torch.Tensor], clip_grad: float | None,
                last_good: tuple[int, float] | None, may_skip: bool = False,
                stop_requested: bool = False) -> tuple[float, StepOut | None, bool]:
    """The synchronous step: forward, backward, one host read of the loss and gradient norm, and the update
    only when both are finite; returns the loss value, the step's output and whether any rank was asked to
    stop. A non-finite step raises before the update, or with may_skip returns (loss, None, stop)."""
    out, read = _forward_backward(batch, step, step_fn, optimizer, scaler, dtype, device, params, stop_requested)
    # The one host read per step, placed after backward is queued so the device is not left idle waiting
    # for it, and before the optimizer step so a bad loss never reaches the weights.
    world = distributed.world_size()
    loss_value, grad_value, stops = (v / world if i < 2 else v for i, v in enumerate(read.tolist()))
    if not (math.isfinite(loss_value) and math.isfinite(grad_value)):
        optimizer.zero_grad(set_to_none=True)
        if may_skip:
            return (loss_value if not math.isfinite(loss_value) else grad_value), None, stops > 0
        raise _non_finite(step + 1, epoch, loss_value, last_good, grad_value)
    _update(optimizer, scaler, params, clip_grad)
    return loss_value, out, stops > 0


class _SyncWatch:
    """train.debug_sync: inside checking(), every host synchronisation raises (torch's sync debug mode),
    which proves that the deferred steps between two reads are free of them."""

    def __init__(self, active: bool):
        self.active = active and torch.cuda.is_available()

    @contextlib.contextmanager
    def checking(self):
        if not self.active:
            yield
            return
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(0)


class _StopRequest:
    signum: int | None = None


@contextlib.contextmanager
def _stop_signals():
    """SIGTERM, SIGINT and SIGUSR1 ask the loop to stop at the next step boundary, after a checkpoint.

    Pre-emptible schedulers send SIGTERM (SLURM can send SIGUSR1 ahead of time); a second SIGINT
    interrupts at once, for a user who does not want to wait for the step to finish.
    """
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.signum = signum
        console.info(f"{signal.Signals(signum).name} received: stopping after this step")

    wanted = [signal.SIGTERM, signal.SIGINT] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupted(signum: int, step: int, total: int) -> Interrupted:
    name = signal.Signals(signum).name
    # What was kept is the caller's to say (pretrain saves a resumable state, finetune its classifier).
    return Interrupted(f"stopped by {name} at step {step}/{total}", signum)


def _prefetched(batches: Iterable[Any], device: torch.device, memory_format: torch.memory_format,
                prepare: Callable[[Any], Any] | None, watch: _SyncWatch, ahead: bool = False):
    """(batch on the device, its number of images), the batch prepared (Step.prepare) when there is one.

    With `ahead` on CUDA (train.prefetch) the next batch is pinned, copied and prepared on a side stream before this one trains, so its
    copy and augmentation overlap this step's kernels; an event orders each batch before the step that
    uses it, and record_stream keeps its memory from being reused before that step is done."""
    def ready(batch: Any) -> Any:
        with watch.checking():
            batch = _to_device(batch, device, memory_format)
            return batch if prepare is None else prepare(batch)

    if device.type != "cuda" or not ahead:
        for batch in batches:
            yield ready(batch), _size(batch)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)
    side.wait_stream(main)  # whatever the main stream made so far (the augmentation's constants) is ready

    def ahead(batch: Any) -> tuple[Any, int, torch.cuda.Event]:
        pinned = _pinned(batch)
        with torch.cuda.stream(side):
            out = ready(pinned)
            done = torch.cuda.Event()
            done.record(side)
        return out, _size(batch), done

    iterator = iter(batches)
    following = next(iterator, None)
    upcoming = None if following is None else ahead(following)
    while upcoming is not None:
        current, size, done = upcoming
        following = next(iterator, None)
        upcoming = None if following is None else ahead(following)
        main.wait_event(done)
        _record_stream(current, main)
        yield current, size


def _size(batch: Any) -> int:
    """The images in a batch: a tensor of images, or a tuple whose first item is."""
    return (batch[0] if isinstance(batch, tuple) else batch).shape[0]


def _record_stream(batch: Any, stream: torch.cuda.Stream) -> None:
    """Tell the caching allocator that `stream` uses these side-stream tensors (see _prefetched)."""
    if torch.is_tensor(batch):
        batch.record_stream(stream)
    elif isinstance(batch, (tuple, list)):
        for item in batch:
            _record_stream(item, stream)


def _pinned(batch: Any) -> Any:
    if batch is None:  # a part of a (images, labels, indices) batch that this run does not use
        return None
    if isinstance(batch, tuple):
        return tuple(_pinned(t) for t in batch)
    return batch if batch.is_pinned() else batch.pin_memory()


def _to_device(batch: Any, device: torch.device, memory_format: torch.memory_format) -> Any:
    if batch is None:
        return None
    if isinstance(batch, tuple):
        return tuple(_to_device(t, device, memory_format) for t in batch)
    batch = batch.to(device, non_blocking=True)
    return batch.contiguous(memory_format=memory_format) if batch.ndim == 4 else batch


def _log(step: int, epoch: int, loss: float, out: StepOut, optimizer: torch.optim.Optimizer,
         progress: console.Progress, metrics: console.MetricsLog | None, cfg: LoopConfig, images: int,
         start: float) -> dict[str, Any] | None:
    if step % cfg.log_every and step != cfg.total_steps:
        progress.update(step)
        return None
    elapsed = time.perf_counter() - start
    rate = images / max(elapsed, 1e-9)
    eta = elapsed / step * (cfg.total_steps - step)
    lr = optimizer.param_groups[0]["lr"]
    record: dict[str, Any] = {"step": step, "epoch": epoch + 1, "loss": loss, "lr": lr,
                              "images_per_s": round(rate, 2), "elapsed_s": round(elapsed, 2)}
    extra = {k: v for k, v in out.logs.items() if k != "loss"}
    if extra:  # one host read for every logged value
        values = [torch.as_tensor(v).detach().float().reshape(()) for v in extra.values()]
        stacked = torch.stack([v.to(values[0].device) for v in values])
        record.update(zip(extra, stacked.tolist(), strict=True))
    if metrics is not None:
        metrics.write(record)
    progress.update(step, {"epoch": f"{epoch + 1}/{cfg.epochs}", "loss": loss, "lr": lr,
                           "img/s": round(rate, 1), "eta": console.format_seconds(eta)})
    return record
