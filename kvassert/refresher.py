"""Background refresh: tokens that callers use are renewed before callers would have to wait.

One daemon thread per credential, started the first time something is scheduled (no thread when
unused), sleeping until the earliest due time. At that time it calls ``refresh(key)``; when that
raises, it tries again with backoff (the cached token keeps being served meanwhile, and callers
fall back to refreshing themselves once it is due). ``close()`` stops the thread.

Due times are read on the credential's clock, so the thread also waits in that clock's seconds:
``wait(condition, seconds)`` (default: ``condition.wait(seconds)``, wall seconds) lets a test's
simulated clock run a day of refreshes without sleeping for a day, as ``sched.scheduler`` takes
a ``delayfunc`` beside its ``timefunc``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable

from kvassert.cache import RetryLater, next_backoff

_LOG = logging.getLogger("kvassert.refresher")

# How long before a token's refresh point the background refresh runs: enough for a Key Vault
# sign and a token request with retries, never more than a tenth of the time to that point.
MAX_LEAD_SECONDS = 60.0


def refresh_due(issued_at: float, refresh_on: float) -> float:
    """When to refresh in the background a token issued at ``issued_at``."""
    lead = min(MAX_LEAD_SECONDS, max(0.0, (refresh_on - issued_at) / 10))
    return refresh_on - lead


# How the refresher thread waits, holding ``condition``: until notified (``schedule``, ``close``)
# or until ``seconds`` of the clock have passed (``None``: until notified).
Wait = Callable[[threading.Condition, float | None], object]


def wall_wait(condition: threading.Condition, seconds: float | None) -> None:
    """Wait on ``condition`` for ``seconds`` of wall time (the default ``Wait``)."""
    condition.wait(seconds)


class BackgroundRefresher:
    """Calls ``refresh(key)`` on a daemon thread when each scheduled key falls due."""

    def __init__(
        self,
        refresh: Callable[[Hashable], None],
        *,
        clock: Callable[[], float] = time.time,
        backoff: Callable[[float], float] = next_backoff,
        name: str = "kvassert-refresh",
        wait: Wait = wall_wait,
    ) -> None:
        self._refresh = refresh
        self._clock = clock
        self._wait = wait
        self._next_backoff = backoff
        self._name = name
        self._heap: list[tuple[float, int, Hashable]] = []
        self._due: dict[Hashable, float] = {}
        self._backoff: dict[Hashable, float] = {}
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.refreshes = 0
        self.failures = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def schedule(self, key: Hashable, due: float) -> None:
        """Refresh ``key`` at ``due`` (epoch seconds); replaces an earlier schedule for it."""
        with self._wake:
            if self._closed:
                return
            self._due[key] = due
            heapq.heappush(self._heap, (due, next(self._order), key))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def cancel(self, key: Hashable) -> None:
        with self._wake:
            self._due.pop(key, None)
            self._backoff.pop(key, None)

    def close(self, timeout: float = 5.0) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _next(self) -> Hashable | None:
        """Wait for the next due key; None when closed."""
        with self._wake:
            while not self._closed:
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded or cancelled
                if not self._heap:
                    self._wait(self._wake, None)
                    continue
                due, _, key = self._heap[0]
                delay = due - self._clock()
                if delay > 0:
                    self._wait(self._wake, delay)
                    continue
                heapq.heappop(self._heap)
                del self._due[key]
                return key
            return None

    def _run(self) -> None:
        while (key := self._next()) is not None:
            try:
                self._refresh(key)
            except RetryLater as later:
                # A caller's refresh failed just now; its backoff applies here too.
                self.schedule(key, later.not_before)
            except Exception as exc:
                self.failures += 1
                with self._wake:
                    delay = self._next_backoff(self._backoff.get(key, 0.0))
                    self._backoff[key] = delay
                _LOG.warning(
                    "background token refresh failed (%s); retrying in %.0fs",
                    type(exc).__name__,
                    delay,
                )
                self.schedule(key, self._clock() + delay)
            else:
                self.refreshes += 1
                with self._wake:
                    self._backoff.pop(key, None)
