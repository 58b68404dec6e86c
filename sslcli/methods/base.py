"""The method contract that the training loop relies on, its defaults, and what the methods share.

A method is an nn.Module holding the encoder and its own heads. `Method` declares every hook the loop and
the commands call; `MethodDefaults` gives the hooks most methods leave alone their no-op defaults, so a
method file holds only what it does (a small mixin rather than a base class with behaviour: the method
still reads as a plain nn.Module, and the Protocol is what a type checker holds it to). The method's
settings, paper and spec defaults are its config, in configs.py (torch-free).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from sslcli.methods.momentum import MomentumTargets
from sslcli.methods.staging import Staging
from sslcli.schedules import StepSchedule, linear_warmup_then_constant
from sslcli.step import StepOut

if TYPE_CHECKING:
    from sslcli.heads import MLPLayout
    from sslcli.methods.config_base import MethodConfigBase
    from sslcli.views import ViewConfig

__all__ = ["Budget", "Method", "MethodDefaults", "StepOut", "enqueue", "views_by_size"]


@dataclass(frozen=True)
class Budget:
    """How long the run is, for methods whose schedules or freezes are counted in steps or epochs."""

    total_steps: int
    steps_per_epoch: int  # batches in one pass over the data
    num_images: int = 0  # the training images: the size of a per-image memory bank (InstDisc, DeepCluster v2)
    # Steps per epoch of the schedule's lengths (warm-ups, freezes): steps_per_epoch, except in a --budget run,
    # where a length in epochs keeps its share of the run its train.epochs describe (schedules.schedule_epoch_steps).
    schedule_epoch_steps: float = 0.0

    def epochs_to_steps(self, epochs: float) -> int:
        """A schedule length given in epochs (a warm-up, a freeze), in steps of this run."""
        return min(self.total_steps, round(epochs * (self.schedule_epoch_steps or self.steps_per_epoch)))

    def data_epochs_to_steps(self, epochs: float) -> int:
        """Passes over the data (a memory bank's filling epochs), in steps: never rescaled."""
        return min(self.total_steps, round(epochs * self.steps_per_epoch))

    def until(self, epochs: float) -> StepSchedule:
        """1 for the steps of the first `epochs` (schedule epochs), 0 after: a freeze or a start, re-planned with
        the run (StepSchedule); read as `.at(step) > 0.5`."""
        end = self.epochs_to_steps(epochs)
        return StepSchedule([1.0] * end + [0.0] * (self.total_steps - end))


class Method(Protocol):
    """What pretraining calls on a method, in order: views -> forward -> (backward) -> cancel_gradients ->
    (optimizer step) -> on_step_end; export_encoder at every checkpoint and online kNN, export_projector and
    export_files at every checkpoint."""

    fixed_lr_modules: tuple[str, ...]  # submodules whose lr stays at the peak value (SimSiam's predictor)

    def __init__(self, cfg: MethodConfigBase, encoder: nn.Module, feature_dim: int, budget: Budget) -> None: ...

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The augmentation recipe: one ViewConfig per view, built from the spec's augment section."""
        ...

    def forward(self, views: list[Tensor], step: int) -> StepOut:
        """The loss of one batch. A method whose config sets `uses_indices` is called as
        forward(views, step, indices), indices [B] being each image's position in the training set."""
        ...

    def cancel_gradients(self, step: int) -> None:
        """After backward: drop the gradients of parameters frozen at this step (SwAV, DINO)."""
        ...

    def on_step_end(self, step: int) -> None:
        """After the optimizer step: EMA updates, queues, centers (never on a skipped step)."""
        ...

    def export_encoder(self) -> nn.Module:
        """The backbone to save (DINO exports its teacher)."""
        ...

    def replan(self, at_step: int, total_steps: int) -> None:
        """A --budget run now ends after total_steps: spread the rest of the per-step schedules over them."""
        ...

    def export_projector(self) -> tuple[nn.Module, MLPLayout] | None:
        """The projection head to save beside the encoder (projector.safetensors) with its layout, for
        `sslcli finetune --keep-projection-layers` (SimCLR v2); None for a method that saves none."""
        ...

    def export_files(self) -> dict[str, tuple[nn.Module, dict[str, str]]]:
        """Other parts of the trained model to save beside the encoder at every checkpoint: file name -> (module,
        metadata that rebuilds it) (Monodepth's depth decoder); empty for most methods."""
        ...

    # nn.Module's, used by the loop
    def parameters(self, recurse: bool = True): ...

    def train(self, mode: bool = True) -> nn.Module: ...


class MethodDefaults(Staging, MomentumTargets):
    """The hooks a method need not write: no frozen parameters, the staged buffer updates and the momentum
    targets (if any) moved after each applied step, the student encoder exported, no projection head saved
    beside it, no fixed-lr submodules, every StepSchedule attribute stretched by a re-plan."""

    fixed_lr_modules: ClassVar[tuple[str, ...]] = ()
    encoder: nn.Module

    cfg: MethodConfigBase

    def views(self, augment: ViewConfig) -> list[ViewConfig]:
        """The method's views, as its config describes them (config_base.py)."""
        return self.cfg.views(augment)

    def project_views(self, views: list[Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The two views through the encoder in one pass (batch norm sees the 2N batch, as the papers'
        implementations) and through the projector: (features h [2N, D], (z1, z2))."""
        h = self.encoder(torch.cat(views[:2]))
        return h, self.projector(h).chunk(2)

    def cancel_gradients(self, step: int) -> None:
        pass

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """After an applied step: the staged updates (staging.py) of the method, then of its submodules that
        stage their own (memory banks), then the momentum targets."""
        if "_staging_modules" not in self.__dict__:  # the module tree is fixed once the method is built
            self.__dict__["_staging_modules"] = [m for m in self.modules() if isinstance(m, Staging)]  # type: ignore[attr-defined]
        for module in self.__dict__["_staging_modules"]:
            module.commit_staged()
        self.update_momentum_targets(step)

    def export_encoder(self) -> nn.Module:
        return self.encoder

    def replan(self, at_step: int, total_steps: int) -> None:
        for name, value in list(vars(self).items()):
            if isinstance(value, StepSchedule):
                setattr(self, name, value.stretched(at_step, total_steps))

    def export_projector(self) -> tuple[nn.Module, MLPLayout] | None:
        return None

    def export_files(self) -> dict[str, tuple[nn.Module, dict[str, str]]]:
        return {}


def teacher_temperatures(cfg: Any, budget: Budget) -> StepSchedule:
    """DINO's teacher temperature per step: linear from warmup_teacher_temperature to teacher_temperature over
    warmup_teacher_temperature_epochs, then constant (DINO, DINOv2)."""
    warmup = budget.epochs_to_steps(cfg.warmup_teacher_temperature_epochs)
    return StepSchedule(linear_warmup_then_constant(cfg.warmup_teacher_temperature, cfg.teacher_temperature, warmup,
                                                    budget.total_steps).tolist())


def drop_gradients(module: nn.Module) -> None:
    """Frozen for this step: the module's parameters lose their gradient after backward, so the optimizer
    leaves them as they are (a requires_grad toggle would change the parameter set DDP reduces)."""
    for p in module.parameters():
        p.grad = None


def views_by_size(views: list[Tensor]) -> list[list[Tensor]]:
    """Consecutive views of the same size, so each size goes through the encoder in one batch (as SwAV and DINO do)."""
    groups: list[list[Tensor]] = []
    for v in views:
        if groups and groups[-1][0].shape[-2:] == v.shape[-2:]:
            groups[-1].append(v)
        else:
            groups.append([v])
    return groups


def enqueue(queue: Tensor, ptr: Tensor, keys: Tensor) -> None:
    """Write keys into the ring buffer queue [K, D] at ptr and advance ptr, without a host sync (MoCo v2, SwAV)."""
    size = queue.shape[0]
    keys = keys[-size:]
    index = (ptr + torch.arange(keys.shape[0], device=queue.device)) % size
    queue.index_copy_(0, index, keys.to(queue.dtype))
    ptr.add_(keys.shape[0]).remainder_(size)
