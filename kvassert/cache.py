"""The token cache: a pure refresh rule, a lock-free hit, and single-flight acquisition.

A hit is one dict read of an immutable ``AccessToken`` and one comparison with the clock. Misses
go through a per-key "flight": the first caller acquires, every concurrent caller that needs a
token waits for that same result (or that same error), so N cold callers cost one Key Vault sign
and one token request. When a refresh is only recommended (the token is still valid), callers
other than the refreshing one keep the current token instead of waiting; if the refresh fails,
the still-valid token is served and further attempts back off. An expired token is never served.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future

from kvassert.token_client import AccessToken

_LOG = logging.getLogger("kvassert.cache")

# A token this close to expiry is treated as expired: handing it out would fail downstream.
EXPIRY_MARGIN_SECONDS = 30
RETRY_BACKOFF_START = 5.0
RETRY_BACKOFF_MAX = 300.0


class Refresh(enum.Enum):
    NOT_NEEDED = "not_needed"
    RECOMMENDED = "recommended"
    REQUIRED = "required"


def refresh_rule(token: AccessToken | None, now: float) -> Refresh:
    """Whether a cached token must, should, or need not be replaced at ``now``."""
    if token is None or now >= token.expires_on - EXPIRY_MARGIN_SECONDS:
        return Refresh.REQUIRED
    if now >= token.refresh_on:
        return Refresh.RECOMMENDED
    return Refresh.NOT_NEEDED


def keeps_current(rule: Refresh, *, refreshing: bool, now: float, not_before: float) -> bool:
    """Whether a caller should go on serving the still-valid token rather than refresh it: only
    when a refresh is merely recommended and someone else is refreshing, or failures back off."""
    return rule is Refresh.RECOMMENDED and (refreshing or now < not_before)


def next_backoff(previous: float) -> float:
    """The wait after another failed refresh of a still-valid token: 5 s, doubling to 5 min."""
    return min(RETRY_BACKOFF_MAX, previous * 2 if previous else RETRY_BACKOFF_START)


class RetryLater(Exception):
    """A refresh is backing off after a failure: try again at ``not_before``."""

    def __init__(self, not_before: float) -> None:
        super().__init__(f"backing off until {not_before:.0f}")
        self.not_before = not_before


class TokenCache:
    """In-memory tokens keyed by (authority, client id, scope or resource, ...)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._entries: dict[Hashable, AccessToken] = {}
        self._flights: dict[Hashable, Future[AccessToken]] = {}
        self._backoff: dict[Hashable, tuple[float, float]] = {}  # key -> (not_before, delay)
        self._mutex = threading.Lock()

    def get(self, key: Hashable, acquire: Callable[[], AccessToken]) -> AccessToken:
        """The cached token for ``key``, acquiring it with ``acquire`` when needed.

        Raises whatever ``acquire`` raises when no still-valid token is left to serve.
        """
        entry = self._entries.get(key)
        if entry is not None and self._clock() < entry.refresh_on:
            return entry
        return self._refresh(key, acquire)

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock

    def peek(self, key: Hashable) -> AccessToken | None:
        """The entry for ``key`` if one is cached, valid or not (for inspection, not serving)."""
        return self._entries.get(key)

    def put(self, key: Hashable, token: AccessToken) -> None:
        self._entries[key] = token

    def clear(self) -> None:
        with self._mutex:
            self._entries.clear()
            self._backoff.clear()

    def _refresh(self, key: Hashable, acquire: Callable[[], AccessToken]) -> AccessToken:
        now = self._clock()
        entry = self._entries.get(key)
        rule = refresh_rule(entry, now)
        if rule is Refresh.NOT_NEEDED and entry is not None:
            return entry
        with self._mutex:
            flight = self._flights.get(key)
            leader = flight is None
            not_before, _ = self._backoff.get(key, (0.0, 0.0))
            if entry is not None and keeps_current(
                rule, refreshing=not leader, now=now, not_before=not_before
            ):
                return entry
            if flight is None:
                flight = Future()
                self._flights[key] = flight
        if not leader:
            return flight.result()
        try:
            return self._lead(key, flight, acquire)
        except Exception as exc:
            current = self._entries.get(key)
            if current is not None and refresh_rule(current, self._clock()) is not Refresh.REQUIRED:
                delay = self._note_failure(key)
                _LOG.warning(
                    "token refresh failed (%s); serving the cached token, valid until %d, "
                    "next attempt in %.0fs",
                    type(exc).__name__,
                    current.expires_on,
                    delay,
                )
                return current
            raise

    def renew(self, key: Hashable, acquire: Callable[[], AccessToken]) -> AccessToken:
        """Acquire a new token for ``key`` now, whatever the refresh rule says (background
        refresh), joining an acquisition already in flight. Raises what ``acquire`` raises; the
        current entry then stays as it was. Raises ``RetryLater`` instead of acquiring while a
        failed refresh is backing off, so background and callers share one backoff."""
        with self._mutex:
            not_before, _ = self._backoff.get(key, (0.0, 0.0))
            if self._clock() < not_before:
                raise RetryLater(not_before)
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = Future()
                self._flights[key] = flight
        if not leader:
            return flight.result()
        return self._lead(key, flight, acquire)

    def _lead(
        self, key: Hashable, flight: Future[AccessToken], acquire: Callable[[], AccessToken]
    ) -> AccessToken:
        """Run the acquisition every waiter of ``flight`` shares, and store its token."""
        try:
            token = acquire()
        except Exception as exc:
            with self._mutex:
                del self._flights[key]
            flight.set_exception(exc)
            raise
        self._entries[key] = token
        with self._mutex:
            self._backoff.pop(key, None)
            del self._flights[key]
        flight.set_result(token)
        return token

    def _note_failure(self, key: Hashable) -> float:
        with self._mutex:
            _, previous = self._backoff.get(key, (0.0, 0.0))
            delay = next_backoff(previous)
            self._backoff[key] = (self._clock() + delay, delay)
            return delay
