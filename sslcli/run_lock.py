"""One process at a time in a run folder: an exclusive lock held while a command writes into it.

The lock is `fcntl.flock` on RUN/.sslcli-lock. The operating system releases it when the process ends, however
it ends (a crash or kill -9 included), so a lock left behind by a dead process is never in the way: the file
stays, the lock does not. The holder writes its PID into the file, so a second command can say who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sslcli.errors import UsageError

LOCK_FILE = ".sslcli-lock"


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock inside the block; a folder in use by another process is a UsageError (exit 2)
    naming that process. A folder this lock created and that holds nothing else at the end is removed again."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"cannot write the run folder {run_dir} ({exc.strerror or exc}); choose a writable --out") \
            from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise UsageError(f"{run_dir} is in use by another sslcli process (PID {holder}); wait for it to end, or "
                             "choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
        if created and {p.name for p in run_dir.iterdir()} == {LOCK_FILE}:
            (run_dir / LOCK_FILE).unlink(missing_ok=True)
            run_dir.rmdir()
