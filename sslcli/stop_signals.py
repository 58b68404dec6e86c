"""Stop signals: SIGTERM, SIGINT and SIGUSR1 ask a training loop to stop at the next step boundary, after a
checkpoint, instead of killing the process mid-step."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any

from sslcli import console
from sslcli.errors import Interrupted


class StopRequest:
    """The signal received, or None while the run may go on."""

    signum: int | None = None


@contextlib.contextmanager
def stop_signals():
    """Yield a StopRequest that the handlers fill in.

    Pre-emptible schedulers send SIGTERM (SLURM can send SIGUSR1 ahead of time); a second SIGINT
    interrupts at once, for a user who does not want to wait for the step to finish.
    """
    stop = StopRequest()
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


def interrupted(signum: int, step: int, total: int) -> Interrupted:
    """The error a stopped loop raises; what was kept is the caller's to say (pretrain saves a resumable
    state, finetune its classifier)."""
    return Interrupted(f"stopped by {signal.Signals(signum).name} at step {step}/{total}", signum)
