"""The refresh rule and the cache's single-flight and failure behaviour, with a fake clock."""

from __future__ import annotations

import threading
import time

import pytest

from kvassert.cache import Refresh, TokenCache, refresh_rule
from kvassert.token_client import AccessToken


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(name: str = "t", *, issued: int = 1000, life: int = 3600) -> AccessToken:
    return AccessToken(
        token=name, expires_on=issued + life, refresh_on=issued + life - 600, issued_at=issued
    )


def test_refresh_rule() -> None:
    t = token()
    assert refresh_rule(None, 0) is Refresh.REQUIRED
    assert refresh_rule(t, 1000) is Refresh.NOT_NEEDED
    assert refresh_rule(t, 4000) is Refresh.RECOMMENDED
    assert refresh_rule(t, 4600 - 31) is Refresh.RECOMMENDED
    assert refresh_rule(t, 4600 - 30) is Refresh.REQUIRED
    assert refresh_rule(t, 9999) is Refresh.REQUIRED


def test_hit_does_not_call_acquire() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    calls: list[int] = []

    def acquire() -> AccessToken:
        calls.append(1)
        return token()

    first = cache.get("k", acquire)
    assert cache.get("k", acquire) is first
    assert len(calls) == 1
    assert cache.get("other", acquire) is not first
    assert len(calls) == 2


def test_recommended_refresh_replaces_token() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.get("k", lambda: token("old"))
    clock.now = 4100
    assert cache.get("k", lambda: token("new", issued=4100)).token == "new"


def test_failed_recommended_refresh_serves_valid_token_and_backs_off() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.get("k", lambda: token("old"))
    clock.now = 4100
    attempts: list[int] = []

    def failing() -> AccessToken:
        attempts.append(1)
        raise RuntimeError("down")

    assert cache.get("k", failing).token == "old"
    assert cache.get("k", failing).token == "old"
    assert len(attempts) == 1  # second call was inside the backoff window
    clock.now += 6
    assert cache.get("k", failing).token == "old"
    assert len(attempts) == 2


def test_expired_token_is_never_served() -> None:
    clock = Clock()
    cache = TokenCache(clock)
    cache.get("k", lambda: token("old"))
    clock.now = 4600

    def failing() -> AccessToken:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError, match="down"):
        cache.get("k", failing)


def test_concurrent_cold_callers_share_one_acquisition() -> None:
    cache = TokenCache()
    calls: list[int] = []
    gate = threading.Event()

    def acquire() -> AccessToken:
        calls.append(1)
        gate.wait(2)
        return token(issued=int(time.time()))

    results: list[AccessToken] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get("k", acquire))) for _ in range(32)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(results) == 32 and len({id(r) for r in results}) == 1


def test_concurrent_cold_callers_share_one_failure() -> None:
    cache = TokenCache()
    calls: list[int] = []
    gate = threading.Event()

    def acquire() -> AccessToken:
        calls.append(1)
        gate.wait(2)
        raise RuntimeError("entra down")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get("k", acquire)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(16)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join()
    assert len(errors) == 16
    assert len(calls) == 1


def test_renew_respects_the_backoff_of_a_failed_refresh() -> None:
    from kvassert.cache import RetryLater

    clock = Clock()
    cache = TokenCache(clock)
    cache.get("k", lambda: token("old"))
    clock.now = 4100

    def failing() -> AccessToken:
        raise RuntimeError("down")

    cache.get("k", failing)  # serves "old", backs off
    with pytest.raises(RetryLater) as info:
        cache.renew("k", lambda: token("new", issued=4100))
    assert info.value.not_before > clock.now
    clock.now = info.value.not_before
    assert cache.renew("k", lambda: token("new", issued=4100)).token == "new"
