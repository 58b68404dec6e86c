"""The non-finite check without a host synchronisation (the sync-free step, CUDA's default).

The synchronous loop reads the loss and the gradient norm to the host every step and skips the update
when either is not finite. That read stalls the device once per step while the next batch is not yet
queued. Here the same decision is taken on the device instead: before each step the state an update
can touch (the model's parameters and buffers, which hold EMA targets, queues, centers and BN
statistics, and the optimizer's state) is mirrored into one flat buffer per dtype; after the optimizer
step and the method's on_step_end, every one of those tensors is set back to its mirror where the step
was not finite, with torch.where, so a bad step leaves no trace and the host never waits. Counters
(skips, the first bad step and its values, the last good loss) live on the device too and are read
with the logged values, every train.log_every steps, at epoch ends, checkpoints and stops.

Under on_nan=stop the first bad step halts the run on the device: that step and every later one are
undone, and the next read raises the same error as the synchronous loop, naming that step. Under
on_nan=skip bad steps are undone and counted; one past max_nan_skips halts the run likewise.
Under fp16 the GradScaler skips a step whose scaled gradients overflowed (a normal event while it
lowers its scale) and keeps the rest of that step (BN statistics, EMA targets, queues). torch's
GradScaler.step reads its overflow flag on the host to do so; here the gradients are unscaled, the
optimizer steps regardless, and undo_update() sets the parameters and the optimizer state (only them)
back where the unscaled gradient norm is not finite, before the method's on_step_end, as the
synchronous loop would have left them. Such a step is logged and counted as any other.

One exception: optimizer state kept on the host (torch's AdamW on CUDA keeps its step count on the CPU
unless fused; timm's LAMB keeps it in the param group) cannot be set back from the device: it advances
by one on a skipped step, which changes only the bias correction of later steps, never lets the bad
step reach the weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn


class _Mirror:
    """Tensors of one dtype and a flat copy of them, with views so one foreach copy moves them all."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.live = tensors
        sizes = [t.numel() for t in tensors]
        self.saved = torch.empty(sum(sizes), dtype=tensors[0].dtype, device=tensors[0].device)
        self.scratch = torch.empty_like(self.saved)
        self.saved_views = [v.view(t.shape) for v, t in zip(self.saved.split(sizes), tensors, strict=True)]
        self.scratch_views = [v.view(t.shape) for v, t in zip(self.scratch.split(sizes), tensors, strict=True)]

    def save(self) -> None:
        torch._foreach_copy_(self.saved_views, self.live)

    def undo_where(self, undo: torch.Tensor) -> None:
        torch._foreach_copy_(self.scratch_views, self.live)
        torch.where(undo, self.saved, self.scratch, out=self.scratch)
        torch._foreach_copy_(self.live, self.scratch_views)


@dataclass
class GuardReading:
    """What the host learns at a read."""

    halted: bool
    skips: int
    first_bad_step: int  # 1-based; -1 when none
    first_bad_loss: float
    first_bad_grad: float
    last_good_step: int  # 1-based; -1 when none
    last_good_loss: float
    latest_loss: float  # the loss of the step just read
    latest_applied: bool
    stop: bool  # a stop was asked for on some rank


class DeviceGuard:
    """Undoes non-finite steps on the device; see the module docstring."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device, skip: bool,
                 max_skips: int):
        self.model, self.optimizer, self.device = model, optimizer, device
        self.skip, self.max_skips = skip, max_skips
        self._mirrors: list[_Mirror] | None = None  # every mirrored tensor, the update's first
        self._update_mirrors: list[_Mirror] = []
        self._state_size = 0
        zero = torch.zeros((), device=device)
        self.halted = torch.zeros((), dtype=torch.bool, device=device)
        self.skips = torch.zeros((), dtype=torch.int64, device=device)
        self.stop = torch.zeros((), dtype=torch.bool, device=device)
        self.first_bad = torch.stack([zero - 1, zero, zero])  # step, loss, grad norm
        self.last_good = torch.stack([zero - 1, zero])  # step, loss
        self.latest = torch.stack([zero, zero])  # loss, applied

    @property
    def ready(self) -> bool:
        """The optimizer creates its state at its first step; until then steps are checked on the host."""
        return bool(self.optimizer.state)

    def _state(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """What an update changes (the parameters and the optimizer's state), and the rest of the model's
        state (buffers: BN statistics, EMA targets, queues, centers); detached, sharing storage."""
        update = [p.detach() for p in self.model.parameters()]
        for state in self.optimizer.state.values():
            update += [v for v in state.values() if torch.is_tensor(v)]
        rest = list(self.model.buffers())

        def here(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t for t in tensors if t.device == self.device and t.numel()]

        return here(update), here(rest)

    @staticmethod
    def _mirrored(tensors: list[torch.Tensor]) -> list[_Mirror]:
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        return [_Mirror(ts) for ts in by_dtype.values()]

    def begin(self) -> None:
        """Mirror the state before the step's forward (which already updates BN statistics)."""
        # The optimizer adds state when a parameter first gets a gradient (SwAV's prototypes after their
        # freeze): the mirror then covers the new tensors too.
        size = sum(len(state) for state in self.optimizer.state.values())
        if self._mirrors is None or size != self._state_size:
            self._state_size = size
            update, rest = self._state()
            self._update_mirrors = self._mirrored(update)
            self._mirrors = self._update_mirrors + self._mirrored(rest)
        for mirror in self._mirrors:
            mirror.save()

    def undo_update(self, undo: torch.Tensor) -> None:
        """Set the parameters and optimizer state back where `undo` (an fp16 overflow) holds; buffers stay."""
        for mirror in self._update_mirrors:
            mirror.undo_where(undo)

    def settle(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor, stop: torch.Tensor) -> None:
        """After the update and on_step_end of step index `step`: undo it on the device unless it was finite."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.skip:
            self.skips += bad.long()
            newly_halted = bad & (self.skips > self.max_skips) & ~self.halted
        else:
            newly_halted = bad & ~self.halted
        first = (self.first_bad[0] < 0) & newly_halted
        values = torch.stack([loss.new_full((), step + 1.0), loss.float(), grad_norm.float()])
        self.first_bad.copy_(torch.where(first, values, self.first_bad))
        self.halted |= newly_halted
        undo = bad | self.halted
        good = ~undo
        self.last_good.copy_(torch.where(good, torch.stack([values[0], values[1]]), self.last_good))
        self.latest.copy_(torch.stack([loss.float(), good.float()]))
        self.stop |= stop > 0
        for mirror in self._mirrors or []:
            mirror.undo_where(undo)

    def read(self) -> GuardReading:
        """One host read of every counter (the sync of a logged step)."""
        values = torch.cat([self.first_bad, self.last_good, self.latest,
                            torch.stack([self.halted.float(), self.skips.float(), self.stop.float()])]).tolist()
        (bad_step, bad_loss, bad_grad, good_step, good_loss, latest_loss, applied, halted, skips, stop) = values
        return GuardReading(halted=bool(halted), skips=int(skips), first_bad_step=int(bad_step),
                            first_bad_loss=bad_loss, first_bad_grad=bad_grad, last_good_step=int(good_step),
                            last_good_loss=good_loss, latest_loss=latest_loss, latest_applied=bool(applied),
                            stop=bool(stop))


class SyncWatch:
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
