"""The only place that prints.

Results go to stdout; progress, warnings and logs go to stderr. On a TTY stderr gets Rich
rendering; otherwise (CI, pipes) plain lines, so logs stay grep-able. Text that comes from users or
files is always printed literally: Rich markup is off and control characters are escaped.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_quiet = False
_hushed = False  # inside hushed(): a calibration repeats what the run says, so it says nothing
_rank = 0  # under torchrun only rank 0 reports; the others print their errors and nothing else


def configure(quiet: bool = False) -> None:
    """Set once by the CLI: --quiet silences info and progress (warnings and errors still show)."""
    global _quiet
    _quiet = quiet


@contextlib.contextmanager
def hushed():
    """No progress, info or warnings inside (errors still show): a calibration's steps are not the run's."""
    global _hushed
    before, _hushed = _hushed, True
    try:
        yield
    finally:
        _hushed = before


def set_rank(rank: int) -> None:
    global _rank
    _rank = rank


def stderr_is_tty() -> bool:
    return sys.stderr.isatty() and os.environ.get("TERM") != "dumb"


def literal(text: object) -> str:
    """Escape control characters (terminal escape codes, NULs) so untrusted text prints as-is."""
    out = []
    for ch in str(text):
        if ch in "\n\t" or (ch.isprintable() and ch != "\x1b"):
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def name(value: object) -> str:
    """A name from the file system or the user (a path, a class folder) for a message: every control
    character escaped, the newline too, so a file called "x\\nerror: y" cannot print a line of its own."""
    return "".join(ch if ch.isprintable() and ch != "\x1b" else ch.encode("unicode_escape").decode("ascii")
                   for ch in str(value))


def _err(line: str, always: bool = False) -> None:
    """One message on stderr: each is one line (a newline inside becomes \\n), escape codes printed as text."""
    if _rank and not always:
        return
    sys.stderr.write(literal(line).replace("\n", "\\n").replace("\r", "\\r") + "\n")
    sys.stderr.flush()


def info(message: str) -> None:
    if not (_quiet or _hushed):
        _err(message)


def warn(message: str) -> None:
    if not _hushed:
        _err(f"warning: {message}")


def error(message: str) -> None:
    _err(f"error: [rank {_rank}] {message}" if _rank else f"error: {message}", always=True)


def result(text: str) -> None:
    """A human-readable result on stdout."""
    if _rank:
        return
    sys.stdout.write(literal(text) + "\n")
    sys.stdout.flush()


def result_json(obj: Any) -> None:
    """One JSON object on one line of stdout, for machines."""
    if _rank:
        return
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def plural(count: int, noun: str, many: str | None = None) -> str:
    """'1 epoch', '2 epochs', '1 step/epoch': the count with its noun, singular for exactly one."""
    if count == 1:
        return f"{count} {noun}"
    if many is None:
        head, sep, tail = noun.partition("/")
        many = f"{head}s{sep}{tail}"
    return f"{count} {many}"


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Training progress: a Rich bar on a TTY, otherwise a plain line every `every` steps."""

    def __init__(self, total_steps: int, description: str, every: int = 50, start_step: int = 0,
                 unit: str = "step", visible: bool = True):
        self.total = total_steps
        self.unit = unit
        self.every = max(1, every)
        self._bar = None
        self.visible = visible and not _hushed
        visible = self.visible
        if visible and stderr_is_tty() and not _quiet and not _rank:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}", markup=False),
                console=Console(stderr=True, markup=False, highlight=False, emoji=False),
                transient=False,
            )
            self._task = self._bar.add_task(literal(description), total=total_steps, completed=start_step, status="")
            self._bar.start()

    def update(self, step: int, fields: dict[str, Any] | None = None) -> None:
        """Called every step with the 1-based step just finished; `fields` only on logged steps."""
        status = ""
        if fields:
            status = "  ".join(f"{k} {_fmt(v)}" for k, v in fields.items())
        if self._bar is not None:
            kwargs = {"status": status} if fields else {}
            self._bar.update(self._task, completed=step, **kwargs)
        elif self.visible and fields and not _quiet and (step % self.every == 0 or step == self.total):
            _err(f"{self.unit} {step}/{self.total}  {status}")

    def retotal(self, total_steps: int) -> None:
        """The run was re-planned (--budget): its bar and lines count to the new total."""
        self.total = total_steps
        if self._bar is not None:
            self._bar.update(self._task, total=total_steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step or event, flushed as written. `also` gets each record
    after it is written (the experiment trackers of --log-to), so they get exactly what the file gets."""

    def __init__(self, path: Path, also: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.also = also
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self.also is not None:
            self.also(record)

    def close(self) -> None:
        self._file.close()
