"""The async token cache: the sync cache's rules, with one ``asyncio.Task`` per key in flight.

The rules are ``kvassert.cache``'s pure functions: ``refresh_rule`` (required, recommended, not
needed), ``keeps_current`` (who keeps serving a still-valid token) and ``next_backoff``. What is
async is the flight: the first coroutine that needs a token starts one task for the key, and
every concurrent coroutine awaits that same task (through ``asyncio.shield``, so a caller that is
cancelled does not cancel the acquisition the others wait for). N cold coroutines cost one
acquisition; if a refresh fails while the token is still valid, that token is served and further
attempts back off; an expired token is never served.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

from kvassert.cache import Refresh, keeps_current, next_backoff, refresh_rule
from kvassert.token_client import AccessToken

_LOG = logging.getLogger("kvassert.cache")


class AsyncTokenCache:
    """In-memory tokens keyed by (authority, client id, scope or resource, ...); one loop."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[Hashable, AccessToken] = {}
        self._flights: dict[Hashable, asyncio.Task[AccessToken]] = {}
        self._backoff: dict[Hashable, tuple[float, float]] = {}  # key -> (not_before, delay)

    async def get(
        self, key: Hashable, acquire: Callable[[], Awaitable[AccessToken]]
    ) -> AccessToken:
        """The cached token for ``key``, acquiring it with ``acquire`` when needed.

        Raises whatever ``acquire`` raises when no still-valid token is left to serve.
        """
        entry = self._entries.get(key)
        now = self._clock()
        if entry is not None and now < entry.refresh_on:
            return entry
        rule = refresh_rule(entry, now)
        flight = self._flights.get(key)
        not_before, _ = self._backoff.get(key, (0.0, 0.0))
        if entry is not None and (
            rule is Refresh.NOT_NEEDED
            or keeps_current(rule, refreshing=flight is not None, now=now, not_before=not_before)
        ):
            return entry
        if flight is None:
            flight = asyncio.ensure_future(self._fly(key, acquire))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._landed(key, done))
        try:
            return await asyncio.shield(flight)
        except Exception:
            current = self._entries.get(key)
            if current is not None and refresh_rule(current, self._clock()) is not Refresh.REQUIRED:
                return current
            raise

    def peek(self, key: Hashable) -> AccessToken | None:
        """The entry for ``key`` if one is cached, valid or not (for inspection, not serving)."""
        return self._entries.get(key)

    def put(self, key: Hashable, token: AccessToken) -> None:
        self._entries[key] = token

    def clear(self) -> None:
        self._entries.clear()
        self._backoff.clear()

    async def _fly(
        self, key: Hashable, acquire: Callable[[], Awaitable[AccessToken]]
    ) -> AccessToken:
        try:
            token = await acquire()
        except Exception as exc:
            current = self._entries.get(key)
            if current is not None and refresh_rule(current, self._clock()) is not Refresh.REQUIRED:
                _, previous = self._backoff.get(key, (0.0, 0.0))
                delay = next_backoff(previous)
                self._backoff[key] = (self._clock() + delay, delay)
                _LOG.warning(
                    "token refresh failed (%s); serving the cached token, valid until %d, "
                    "next attempt in %.0fs",
                    type(exc).__name__,
                    current.expires_on,
                    delay,
                )
            raise
        self._entries[key] = token
        self._backoff.pop(key, None)
        return token

    def _landed(self, key: Hashable, flight: asyncio.Task[AccessToken]) -> None:
        # A done callback rather than a ``finally`` in ``_fly``: it also runs for a flight
        # cancelled before it started, so no key is left "in flight" for good.
        if self._flights.get(key) is flight:
            del self._flights[key]
