"""Issue 8 (4): load and soak. Counts, never timings.

Time: kvassert keeps tokens on its credential's clock (``TokenCache(clock=...)``: the cache's
decisions, the background refresher's due times and waits, the token times the token client
reads). The tests give it a faster clock, so hour-long tokens refresh many times in a short run:

- ``SteppedClock`` (soak): simulated time that moves only when the test moves it, in lockstep
  with the refresher thread, so a simulated day gives exact refresh counts;
- ``ScaledClock`` (load): time that runs ``speed`` times faster than the wall clock, under real
  concurrency and real network faults.

The emulator keeps the wall clock: it is "the cloud", and a cloud clock that differs from this
machine's is clock skew to kvassert (AADSTS700024, offset learned from ``Date``), not time
passing. Assertion times stay on the wall clock (they are claims Entra checks), so every request
the emulator sees is valid in its own time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Hashable

from kvassert import AzureAdCredential, settings_from_mapping
from kvassert.cache import TokenCache
from kvassert.refresher import BackgroundRefresher
from tests.fakes import scripted_server

HOUR = 3600.0


class SteppedClock:
    """Simulated time that moves only in ``advance``, in lockstep with a refresher thread.

    Pass it as the cache's clock and as the refresher's ``wait``. The refresher parks in
    ``wait`` until it is notified (no timeout: simulated seconds do not pass by themselves);
    ``advance`` moves time, wakes it, and returns once it has parked again, that is once every
    refresh due by the new time has run (it refreshes due keys before it parks).
    """

    def __init__(self, start: float) -> None:
        self._now = start
        self._state = threading.Condition()
        self._parked: threading.Condition | None = None
        self.parks = 0

    def __call__(self) -> float:
        return self._now

    def wait(self, condition: threading.Condition, seconds: float | None) -> None:
        """The refresher's ``Wait``: called holding ``condition``."""
        with self._state:
            self._parked = condition
            self.parks += 1
            self._state.notify_all()
        condition.wait()

    def wait_parked(self, timeout: float = 30.0) -> None:
        """Block until the refresher thread has parked at least once."""
        with self._state:
            assert self._state.wait_for(lambda: self.parks > 0, timeout), "no refresher thread"

    def advance(self, seconds: float, timeout: float = 60.0) -> None:
        self._now += seconds
        with self._state:
            condition = self._parked
        if condition is None:
            return  # no refresher thread yet: it reads the new time when it first looks
        with condition:
            # Holding the condition, the refresher is parked in condition.wait() or busy
            # outside it (refreshing, or queued for the lock): either way its next park comes
            # after it has looked at the new time.
            before = self.parks
            condition.notify_all()
        with self._state:
            settled = self._state.wait_for(lambda: self.parks > before, timeout)
        assert settled, "the refresher did not park again"


class ScaledClock:
    """Wall time since construction, ``speed`` times faster; ``wait`` scales back to wall time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start = time.time()
        self._base = time.perf_counter()

    def __call__(self) -> float:
        return self._start + (time.perf_counter() - self._base) * self.speed

    def wait(self, condition: threading.Condition, seconds: float | None) -> None:
        condition.wait(None if seconds is None else seconds / self.speed)


# The refresher with an injected wait -----------------------------------------------------------


def test_a_stepped_clock_runs_a_day_of_background_refreshes_in_lockstep() -> None:
    """A token refreshed 2940 s after each issue (a one-hour token: refresh point at 50 min,
    one minute of lead) is refreshed 29 times in 24 simulated hours: floor(86400 / 2940)."""
    clock = SteppedClock(start=1_000_000.0)
    done: list[float] = []

    def refresh(key: Hashable) -> None:
        done.append(clock())
        refresher.schedule(key, clock() + 2940)

    refresher = BackgroundRefresher(refresh, clock=clock, wait=clock.wait)
    refresher.schedule("scope", clock() + 2940)
    clock.wait_parked()
    for _ in range(24 * 60):
        clock.advance(60)
    refresher.close()
    assert len(done) == 29 == refresher.refreshes
    assert done == [1_000_000.0 + 2940 * n for n in range(1, 30)]  # each exactly when due


def test_a_scaled_clock_makes_the_refresher_wait_in_its_seconds() -> None:
    """Ten simulated minutes at 6000x are a tenth of a wall second: the refresh happens while
    the test waits (bounded), which it could not if the refresher waited in wall seconds."""
    clock = ScaledClock(speed=6000)
    ran = threading.Event()
    refresher = BackgroundRefresher(lambda key: ran.set(), clock=clock, wait=clock.wait)
    refresher.schedule("scope", clock() + 600)
    assert ran.wait(30)
    refresher.close()
    assert refresher.refreshes == 1


def test_token_times_are_read_on_the_credential_clock() -> None:
    """The token client dates answers on the cache's clock: ``expires_in`` 3599 at simulated
    time T is ``expires_on`` T + 3599, whatever the wall clock says."""
    with scripted_server() as (base, script):
        body = {"token_type": "Bearer", "expires_in": 3599, "access_token": "tok"}
        script.answers.append((200, {}, json.dumps(body).encode()))
        settings = settings_from_mapping(
            {
                "AzureAd": {
                    "Instance": base + "/",
                    "TenantId": "11111111-2222-3333-4444-555555555555",
                    "ClientId": "00000000-0000-0000-0000-0000000000c1",
                    "ClientSecret": "not-a-real-secret",
                }
            },
            env={},
        )
        clock = SteppedClock(start=2_000_000.0)
        with AzureAdCredential(
            settings, cache=TokenCache(clock), background_refresh=False
        ) as credential:
            token = credential.token("api://x/.default")
    assert (token.issued_at, token.expires_on, token.refresh_on) == (
        2_000_000,
        2_003_599,
        2_003_000,
    )
