"""SIGTERM and SIGINT as requests to stop at the next safe point (a finished step, a written shard),
so that a long run interrupted by a scheduler or Ctrl-C leaves a consistent, resumable state.

The first signal only sets `received`; the loop checks it, saves atomically and stops. A second one
raises KeyboardInterrupt at once (every write is atomic, so even then nothing is half-written)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """Handlers for SIGTERM/SIGINT while installed (main thread only; elsewhere signals keep their handlers)."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(number)
