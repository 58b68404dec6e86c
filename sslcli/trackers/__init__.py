"""Experiment trackers (TensorBoard, MLflow, Weights & Biases): optional extras fed from metrics.jsonl's writer.

Each backend is one module with an `open_run(...)` that returns a Tracker; Trackers fans the run's records out
to those chosen with --log-to (logging.to). Only rank 0 opens them. The backends' packages are imported when a
run opens its tracker, never before, so the CLI starts as fast without them as with them.

A resumed run continues the same tracker run: RUN/trackers.json keeps each tracker's run id and the last step
it was sent. What a tracker already holds is not sent again (a tracker cannot take back a point, and a resumed
run repeats the steps after its checkpoint exactly), so every step reaches it once.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from sslcli import console, distributed
from sslcli.errors import UsageError
from sslcli.files import atomic_write_json

# tracker name -> (the module it needs, the sslcli extra that installs it)
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
STATE_FILE = "trackers.json"
# what to look at when a tracker cannot start its run
SETTINGS = {"tensorboard": "the run folder's tensorboard/ (it must be a writable folder)",
            "mlflow": "MLFLOW_TRACKING_URI", "wandb": "WANDB_MODE or the W&B login (wandb login)"}


class Tracker(Protocol):
    """One backend's run. Steps only grow, except where Trackers says so."""

    run_id: str
    where: str  # the tracker's own address of the run's store (a folder, a tracking URI)

    def log_scalars(self, values: dict[str, float], step: int) -> None: ...

    def log_images(self, paths: list[Path], step: int) -> None: ...

    def log_results(self, results: dict[str, float], artifacts: list[Path], summary: dict[str, Any],
                    step: int) -> None: ...

    def close(self, status: str) -> None: ...  # "finished", "stopped" (a signal) or "failed"


def check_installed(names: Iterable[str]) -> None:
    """Refuse, before any work, a tracker whose package is not installed: one line naming the extra."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UsageError(f"--log-to {name}: the {PACKAGES[name]} package is not installed; "
                             f"pip install 'sslcli[{name}]'")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics.jsonl record (its step aside); a collapse event counts its signs."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step":
            continue
        if key == "collapse" and isinstance(value, list):
            out["collapse_signs"] = float(len(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested spec as dotted keys (train.batch_size); lists and None kept as values."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Trackers:
    """The chosen trackers of one run folder, fed the run's records as metrics.jsonl gets them.

    start_step > 0: a resumed run. Each tracker named in RUN/trackers.json reopens its run and is sent only steps
    after the last it holds; first, each gets the part of the history metrics.jsonl kept that it lacks (backfill:
    all of it for a tracker new to the run, the steps after its failure for one dropped before the stop)."""

    def __init__(self, names: list[str], folder: Path, spec: dict[str, Any], experiment: str, start_step: int = 0):
        self.folder, self.state_path = Path(folder), Path(folder) / STATE_FILE
        saved = self._saved() if start_step > 0 else {}  # a run started over starts new tracker runs
        self.trackers: dict[str, Tracker] = {}
        self.sent_to: dict[str, int] = {}  # the last step each tracker holds (persisted)
        self.skip_to: dict[str, int] = {}  # steps up to this one it held before this process: not sent again
        self.state: dict[str, Any] = dict(saved)
        self.last_step = 0
        for name in names:
            previous = saved.get(name) or {}
            backend = importlib.import_module(f"sslcli.trackers.{name}")
            try:
                tracker = backend.open_run(self.folder, spec, experiment, run_id=previous.get("run_id"),
                                           where=previous.get("where"))
            except UsageError:
                raise
            except Exception as exc:  # a tracker that cannot start is refused before training, in one line
                self.close("failed")
                raise UsageError(f"--log-to {name}: cannot start its run ({reason(exc)}); fix {SETTINGS[name]} or "
                                 f"leave {name} out of --log-to") from None
            self.trackers[name] = tracker
            # -1: it holds nothing yet (the online kNN's record of the random init is step 0)
            held = int(previous.get("sent_to", -1)) if previous.get("run_id") == tracker.run_id else -1
            self.skip_to[name] = self.sent_to[name] = held
            self.state[name] = {"run_id": tracker.run_id, "where": tracker.where, "sent_to": held}
            console.info(f"{name}: {'continuing' if previous.get('run_id') == tracker.run_id else 'started'} "
                         f"run {tracker.run_id} ({tracker.where})")
        self._save()

    def _saved(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def backfill(self, records: list[dict[str, Any]]) -> None:
        """On a resume, each tracker first gets the history kept in metrics.jsonl that it does not hold: all of it
        for a tracker new to the run (or whose run had to be started again), the steps after its failure for one
        that was dropped before the stop, nothing for one that holds every step already."""
        for record in records:
            self.record(record)

    def record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, to every tracker that does not hold its step yet."""
        step = record.get("step")
        values = scalars(record)
        if not isinstance(step, int) or not values:
            return
        self.last_step = max(self.last_step, step)
        due = [name for name in self.trackers if step > self.skip_to[name]]
        if not due:
            return
        held = {name: self.sent_to[name] for name in due}
        for name in due:
            self.sent_to[name] = max(self.sent_to[name], step)
            self.state[name]["sent_to"] = self.sent_to[name]
        self._save()  # before it is sent: a kill between the two loses this point rather than sending it twice
        failed = [name for name in due if name in self.trackers
                  and not self._call(name, self.trackers[name].log_scalars, values, step)]
        for name in failed:  # it does not hold this step: a resume sends it again, from metrics.jsonl
            self.sent_to[name] = self.state[name]["sent_to"] = held[name]
        if failed:
            self._save()

    def images(self, paths: list[Path], step: int) -> None:
        """The report's figures at a checkpoint (a tracker that holds this step already has them)."""
        for name, tracker in list(self.trackers.items()):
            if step > self.skip_to[name] and paths:
                self._call(name, tracker.log_images, paths, step)

    def finish(self, summary: dict[str, Any], artifacts: list[Path]) -> None:
        """The command's result: its numbers as final values, its files as artifacts; then the runs close."""
        results = {k: v for k, v in flat(summary).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        files = [p for p in artifacts if Path(p).is_file()]
        step = max([self.last_step, 0, *self.sent_to.values()])
        for name, tracker in list(self.trackers.items()):
            self._call(name, tracker.log_results, results, files, summary, step)
        self.close("finished")

    def close(self, status: str) -> None:
        for name, tracker in list(self.trackers.items()):
            self._call(name, tracker.close, status)
        self.trackers = {}

    def _call(self, name: str, method: Any, *args: Any) -> bool:
        """A tracker that fails while the run trains (its server gone, its disk full) is dropped with one warning:
        training, metrics.jsonl and the other trackers go on, and the command ends as it would have."""
        try:
            method(*args)
            return True
        except Exception as exc:
            console.warn(f"{name} failed ({reason(exc)}); not logging to {name} for the rest of this run "
                         "(training goes on; metrics.jsonl has every step)")
            self.trackers.pop(name, None)
            return False


def reason(exc: BaseException, limit: int = 240) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3].rstrip() + "..."


def open_trackers(names: list[str], folder: Path, spec: dict[str, Any], experiment: str, start_step: int = 0,
                  device: torch.device | None = None) -> Trackers | None:
    """The run's trackers, opened by rank 0 (None on the other ranks, and when none was asked for).

    Called on every rank: under torchrun they all learn whether rank 0 could start its trackers, so a tracker
    that cannot start stops every rank before training (with its one line from rank 0), not rank 0 alone while
    the others wait for it in the first step."""
    if not names:
        return None
    check_installed(names)
    opened, failure = None, None
    if distributed.is_main():
        try:
            opened = Trackers(names, folder, spec, experiment, start_step)
        except UsageError as exc:
            failure = exc
    if not distributed.every_rank_ok(failure is None, device or torch.device("cpu")):
        raise failure or UsageError("rank 0 could not start the experiment trackers of --log-to (its error is "
                                    "above); no rank trained")
    return opened
