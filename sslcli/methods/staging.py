"""Staged updates: buffer changes (queues, memory banks, centres, priors) that a method's forward computes but
that may only happen once the optimizer step was applied.

forward stages each update under a name; MethodDefaults.on_step_end commits those of the method and of every
submodule that stages its own (a memory bank), after an applied step. A step that was not applied (a
non-finite loss or gradient) never reaches on_step_end, so its updates are never applied: the next forward's
update of the same name replaces them. Under the sync-free step the guard undoes a bad step's commits on the
device, with the rest of that step.
"""

from __future__ import annotations

from collections.abc import Callable


class Staging:
    """The mixin of a module that stages updates (the dict lives in the instance's own __dict__, beside
    nn.Module's, so it is no state of the module: state_dict and checkpoints never see it)."""

    def stage(self, name: str, apply: Callable[[], None]) -> None:
        """Apply `apply()` after this step, if the step is applied; replaces an update staged under `name`."""
        self.__dict__.setdefault("_staged", {})[name] = apply

    def staged(self, name: str) -> Callable[[], None] | None:
        """The update staged under `name` and not applied yet (None when there is none)."""
        return self.__dict__.get("_staged", {}).get(name)

    def commit_staged(self) -> None:
        """Apply the staged updates, in the order they were first staged, and forget them."""
        staged = self.__dict__.get("_staged")
        if staged:
            self.__dict__["_staged"] = {}
            for apply in staged.values():
                apply()
