"""The async cache: the sync cache's rules under asyncio concurrency, with a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from kvassert.aio.cache import AsyncTokenCache
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


def counting(
    result: AccessToken | BaseException, gate: asyncio.Event | None = None
) -> tuple[list[int], Callable[[], Awaitable[AccessToken]]]:
    calls: list[int] = []

    async def acquire() -> AccessToken:
        calls.append(1)
        if gate is not None:
            await gate.wait()
        if isinstance(result, BaseException):
            raise result
        return result

    return calls, acquire


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def test_hit_does_not_acquire_and_keys_are_separate() -> None:
    async def main() -> None:
        cache = AsyncTokenCache(Clock())
        calls, acquire = counting(token())
        first = await cache.get("k", acquire)
        for _ in range(20):
            assert await cache.get("k", acquire) is first
        assert len(calls) == 1
        await cache.get("other", acquire)
        assert len(calls) == 2

    run(main)


def test_recommended_refresh_replaces_the_token() -> None:
    async def main() -> None:
        clock = Clock()
        cache = AsyncTokenCache(clock)
        await cache.get("k", counting(token("old"))[1])
        clock.now = 4100  # past refresh_on, before expiry
        assert (await cache.get("k", counting(token("new", issued=4100))[1])).token == "new"
        assert cache.peek("k") is not None and cache.peek("k").token == "new"  # type: ignore[union-attr]

    run(main)


def test_failed_recommended_refresh_serves_the_valid_token_and_backs_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> None:
        clock = Clock()
        cache = AsyncTokenCache(clock)
        await cache.get("k", counting(token("old"))[1])
        clock.now = 4100
        attempts, failing = counting(RuntimeError("down"))
        assert (await cache.get("k", failing)).token == "old"
        assert (await cache.get("k", failing)).token == "old"
        assert len(attempts) == 1  # inside the 5 s backoff window
        clock.now += 6
        assert (await cache.get("k", failing)).token == "old"
        assert len(attempts) == 2
        clock.now += 6  # the window doubled to 10 s
        assert (await cache.get("k", failing)).token == "old"
        assert len(attempts) == 2
        clock.now += 5
        await cache.get("k", failing)
        assert len(attempts) == 3
        # A success ends the backoff.
        assert (await cache.get("k", counting(token("new", issued=4200))[1])).token == "old"
        clock.now += 100
        assert (await cache.get("k", counting(token("new", issued=4300))[1])).token == "new"

    run(main)
    assert "serving the cached token" in caplog.text


def test_expired_token_is_never_served() -> None:
    async def main() -> None:
        clock = Clock()
        cache = AsyncTokenCache(clock)
        await cache.get("k", counting(token("old"))[1])
        clock.now = 4600 - 30  # inside the expiry margin
        with pytest.raises(RuntimeError, match="down"):
            await cache.get("k", counting(RuntimeError("down"))[1])

    run(main)


def test_64_cold_coroutines_share_one_acquisition() -> None:
    async def main() -> None:
        cache = AsyncTokenCache()
        gate = asyncio.Event()
        calls, acquire = counting(token(issued=int(__import__("time").time())), gate)
        tasks = [asyncio.create_task(cache.get("k", acquire)) for _ in range(64)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks)
        assert len(calls) == 1
        assert len({id(r) for r in results}) == 1

    run(main)


def test_concurrent_cold_coroutines_share_one_failure_and_the_next_call_retries() -> None:
    async def main() -> None:
        cache = AsyncTokenCache()
        gate = asyncio.Event()
        calls, acquire = counting(RuntimeError("entra down"), gate)
        tasks = [asyncio.create_task(cache.get("k", acquire)) for _ in range(16)]
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert len({id(r) for r in results}) == 1
        assert len(calls) == 1
        with pytest.raises(RuntimeError):
            await cache.get("k", acquire)
        assert len(calls) == 2  # no failed flight is left behind

    run(main)


def test_during_a_recommended_refresh_others_keep_the_current_token() -> None:
    async def main() -> None:
        clock = Clock()
        cache = AsyncTokenCache(clock)
        await cache.get("k", counting(token("old"))[1])
        clock.now = 4100
        gate = asyncio.Event()
        calls, refresh = counting(token("new", issued=4100), gate)
        refreshing = asyncio.create_task(cache.get("k", refresh))
        await asyncio.sleep(0)
        others = [await cache.get("k", refresh) for _ in range(10)]
        assert [t.token for t in others] == ["old"] * 10  # served while the gate is closed
        gate.set()
        assert (await refreshing).token == "new"
        assert len(calls) == 1

    run(main)


def test_a_cancelled_caller_does_not_cancel_the_shared_acquisition() -> None:
    async def main() -> None:
        cache = AsyncTokenCache()
        gate = asyncio.Event()
        calls, acquire = counting(token(issued=int(__import__("time").time())), gate)
        first = asyncio.create_task(cache.get("k", acquire))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(cache.get("k", acquire)) for _ in range(3)]
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        gate.set()
        results = await asyncio.gather(*waiters)
        assert first.cancelled()
        assert len(calls) == 1 and len({id(r) for r in results}) == 1

    run(main)
