"""The background refresher: lazy thread, due times, replacement, retry with backoff, close."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable

from kvassert.refresher import BackgroundRefresher, refresh_due


def test_due_time_leaves_a_lead_before_the_refresh_point() -> None:
    assert refresh_due(0, 3000) == 2940  # a minute ahead for an hour-long token
    assert refresh_due(0, 5) == 4.5  # a tenth of the way for short ones


def test_no_thread_until_something_is_scheduled_and_close_stops_it() -> None:
    refresher = BackgroundRefresher(lambda key: None)
    assert not refresher.running
    refresher.schedule("k", time.time() + 60)
    assert refresher.running
    refresher.close()
    assert not refresher.running


def test_refreshes_on_its_own_thread_when_due() -> None:
    done = threading.Event()
    seen: list[tuple[Hashable, str]] = []

    def refresh(key: Hashable) -> None:
        seen.append((key, threading.current_thread().name))
        done.set()

    refresher = BackgroundRefresher(refresh)
    refresher.schedule("k", time.time() + 0.1)
    assert done.wait(5)
    refresher.close()
    assert seen == [("k", "kvassert-refresh")]
    assert refresher.refreshes == 1


def test_rescheduling_replaces_the_earlier_due_time() -> None:
    calls: list[Hashable] = []
    refresher = BackgroundRefresher(calls.append)
    refresher.schedule("k", time.time() + 0.05)
    refresher.schedule("k", time.time() + 60)  # replaced before it fell due
    time.sleep(0.3)
    refresher.close()
    assert calls == []


def test_failures_are_retried_with_backoff() -> None:
    attempts: list[float] = []
    done = threading.Event()

    def refresh(key: Hashable) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("entra down")
        done.set()

    refresher = BackgroundRefresher(refresh, backoff=lambda previous: 0.05)
    refresher.schedule("k", time.time())
    assert done.wait(5)
    refresher.close()
    assert len(attempts) == 3
    assert (refresher.failures, refresher.refreshes) == (2, 1)


def test_cancel_and_schedule_after_close_are_ignored() -> None:
    calls: list[Hashable] = []
    refresher = BackgroundRefresher(calls.append)
    refresher.schedule("k", time.time() + 0.05)
    refresher.cancel("k")
    time.sleep(0.2)
    refresher.close()
    refresher.schedule("j", time.time())
    time.sleep(0.1)
    assert calls == []


def test_a_refresh_backing_off_is_rescheduled_not_counted_as_a_failure() -> None:
    from kvassert.cache import RetryLater

    attempts: list[float] = []
    done = threading.Event()

    def refresh(key: Hashable) -> None:
        attempts.append(time.time())
        if len(attempts) == 1:
            raise RetryLater(time.time() + 0.2)
        done.set()

    refresher = BackgroundRefresher(refresh)
    refresher.schedule("k", time.time())
    assert done.wait(5)
    refresher.close()
    assert refresher.failures == 0 and refresher.refreshes == 1
    assert attempts[1] - attempts[0] >= 0.19
