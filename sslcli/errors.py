"""The exceptions that the CLI turns into one clear line on stderr and an exit code.

Exit codes: 2 for bad input (usage, spec, data the user pointed at), 1 for failures while working.
"""

from __future__ import annotations


class SslcliError(Exception):
    """An error with a message written for the user and the exit code it maps to."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(SslcliError):
    """Bad input: a wrong option, spec value, path or file. Exit 2."""

    exit_code = 2


class RunError(SslcliError):
    """The work started but cannot go on (non-finite loss, out of memory, ...). Exit 1."""

    exit_code = 1


class Interrupted(SslcliError):
    """A signal stopped the run at a step boundary, after a checkpoint. Exit 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message, exit_code=128 + signum)
        self.signum = signum


class Terminated(BaseException):
    """SIGTERM outside a training loop. A BaseException, as KeyboardInterrupt is: no `except Exception` (a
    decoder that records a bad image and goes on) may swallow it. Exit 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
