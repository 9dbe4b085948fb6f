"""The emulator's notion of now: wall time plus an adjustable offset (admin ``POST /clock``)."""

from __future__ import annotations

import threading
import time


class Clock:
    """Thread-safe wall clock with an offset, so tests can put the emulator ahead or behind."""

    def __init__(self, offset_seconds: float = 0.0) -> None:
        self._offset = offset_seconds
        self._lock = threading.Lock()

    @property
    def offset_seconds(self) -> float:
        return self._offset

    def set_offset(self, offset_seconds: float) -> None:
        with self._lock:
            self._offset = float(offset_seconds)

    def now(self) -> float:
        return time.time() + self._offset
