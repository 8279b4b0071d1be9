"""Stopping a long command cleanly: SIGTERM and SIGINT become a `Stopped` exception in the main thread,
raised at once or, inside `StopRequest.deferred`, at the next safe point the code checks, so `with`
blocks and `finally` clauses release what the command holds before it exits."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM or SIGINT) received inside `stopping_on_signals`."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Interrupted(Exception):
    """A command stopped by a signal after cleaning up; the message says what was kept and how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


class StopRequest:
    """The stop signal received so far (None before any), as `stopping_on_signals` sees it."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._deferred = False

    def check(self) -> None:
        """Raise `Stopped` if a stop signal has arrived (call this at safe points)."""
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Inside, a signal only records itself and the block calls `check()` where stopping is safe
        (raising inside a library's machinery, such as dask's, can leave its resources behind)."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
        self.check()

    def _receive(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            logger.warning(f"{signal.Signals(signum).name} again: still cleaning up, please wait")
            return
        self.signum = signum
        if not self._deferred:
            raise Stopped(signum)


@contextmanager
def stopping_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[StopRequest]:
    """While the block runs, the first of `signals` raises `Stopped` in the main thread (at once, or at
    the next check inside `deferred`); later ones are logged and ignored, so the clean-up is not cut
    short (SIGKILL still ends the process). Outside the main thread, where handlers cannot be set,
    no signal is caught."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.signal(signum, request._receive) for signum in signals}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
