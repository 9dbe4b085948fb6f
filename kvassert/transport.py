"""The one place HTTP sessions are made: pooling, timeouts, TLS trust, retries, user agent.

Retries are urllib3's ``Retry`` mounted on the session's adapter, so no call site loops on its
own: 429 and 5xx (honouring ``Retry-After``), connection and read errors, exponential backoff with
jitter, and an overall deadline enforced by ``DeadlineRetry``. Redirects are never followed: a
token request carries a credential, and a redirect could hand it to another host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from kvassert import __version__

# One loopback rule for the whole package: settings pins hosts with it, and the TLS and
# challenge shortcuts below (and in vault_signer) apply only where it holds.
from kvassert.clouds import is_loopback_host as is_loopback_host

USER_AGENT = f"kvassert/{__version__} python-requests/{requests.__version__}"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``attempts`` in total, exponential ``backoff`` seconds with ``jitter``,
    each wait capped at ``backoff_max``, everything inside ``deadline`` seconds, and each single
    attempt bounded by ``timeout`` (connect, read)."""

    attempts: int = 4
    backoff: float = 0.5
    backoff_max: float = 8.0
    jitter: float = 0.25
    deadline: float = 30.0
    timeout: tuple[float, float] = (5.0, 10.0)


def is_loopback_url(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname)


def ca_bundle_for(url: str, env: Mapping[str, str] | None = None) -> str | bool:
    """TLS trust for ``url``: a CA file from ``REQUESTS_CA_BUNDLE`` / ``SSL_CERT_FILE`` for
    loopback hosts (the emulator's CA), the default trust store for every other host."""
    env = os.environ if env is None else env
    if is_loopback_url(url):
        for name in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "CURL_CA_BUNDLE"):
            path = env.get(name)
            if path:
                return path
    return True


class DeadlineRetry(Retry):
    """urllib3 ``Retry`` that also stops once ``deadline`` seconds have passed since the first
    failure, and never sleeps past it (a huge ``Retry-After`` must not stall a caller)."""

    def __init__(
        self, *args: Any, deadline: float = 30.0, started: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.started = started

    def new(self, **kw: Any) -> DeadlineRetry:
        retry = super().new(**kw)
        retry.deadline = self.deadline
        retry.started = self.started if self.started is not None else time.monotonic()
        return retry

    def remaining(self) -> float:
        if self.started is None:
            return self.deadline
        return self.deadline - (time.monotonic() - self.started)

    def is_exhausted(self) -> bool:
        return super().is_exhausted() or self.remaining() <= 0

    def sleep_for_retry(self, response: Any = None) -> bool:
        retry_after = self.get_retry_after(response) if response is not None else None
        if retry_after is None:
            return False
        time.sleep(max(0.0, min(retry_after, self.remaining())))
        return True

    def _sleep_backoff(self) -> None:
        time.sleep(max(0.0, min(self.get_backoff_time(), self.remaining())))


def make_retry(policy: RetryPolicy) -> DeadlineRetry:
    return DeadlineRetry(
        total=policy.attempts - 1,
        connect=policy.attempts - 1,
        read=policy.attempts - 1,
        status=policy.attempts - 1,
        other=0,
        redirect=0,
        # Token and sign requests are POSTs; both are safe to repeat (a new token, a new
        # signature), so retry them like idempotent calls.
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=policy.backoff,
        backoff_max=policy.backoff_max,
        backoff_jitter=policy.jitter,
        respect_retry_after_header=True,
        raise_on_status=False,
        raise_on_redirect=False,
        deadline=policy.deadline,
    )


def make_session(policy: RetryPolicy | None = None, *, pool_size: int = 16) -> requests.Session:
    """A pooled session with retries mounted for https (and http, for loopback emulators)."""
    policy = policy or RetryPolicy()
    session = requests.Session()
    session.headers["User-Agent"] = USER_AGENT
    adapter = HTTPAdapter(
        max_retries=make_retry(policy), pool_connections=pool_size, pool_maxsize=pool_size
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
