"""Token requests over aiohttp: the sync client's pure building and answer handling, sent here.

Request forms come from ``kvassert.token_client.build_form`` and answers go through
``token_from_answer`` (redirect refusal, then ``parse_token_response``), exactly as in the sync
client. What differs is the retry loop: the sync session mounts urllib3's ``Retry``, which is
sync-only, so ``next_wait`` restates its schedule once, as a pure function, and
``AsyncTokenClient`` loops on it: 429 and 5xx (honouring ``Retry-After``), connection errors and
timeouts, inside the policy's overall deadline. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from kvassert import __version__
from kvassert.token_client import AccessToken, _retry_after, token_from_answer, unreachable
from kvassert.transport import RETRY_STATUSES, RetryPolicy, ca_bundle_for

if TYPE_CHECKING:
    import aiohttp

Answer = tuple[int, Mapping[str, str], bytes]
_sleep = asyncio.sleep  # module-level so tests can record the waits instead of timing them


def backoff_delay(policy: RetryPolicy, failures: int) -> float:
    """urllib3's schedule, which the sync client follows: no wait after the first failure, then
    ``backoff * 2**(failures - 1)`` plus up to ``jitter`` seconds, capped at ``backoff_max``."""
    if failures <= 1:
        return 0.0
    delay = policy.backoff * 2.0 ** (failures - 1)
    delay += random.random() * policy.jitter  # noqa: S311 - jitter, not cryptography
    return max(0.0, min(policy.backoff_max, delay))


def next_wait(
    policy: RetryPolicy, failures: int, retry_after: float | None, elapsed: float
) -> float | None:
    """Seconds to wait before the next attempt after ``failures`` failed ones, ``elapsed``
    seconds after the first failure (as ``DeadlineRetry`` counts); None to give up because the
    attempts are used up or the deadline has passed. ``Retry-After`` replaces the backoff, and no
    wait runs past the deadline (a huge ``Retry-After`` must not stall a caller)."""
    remaining = policy.deadline - elapsed
    if failures >= policy.attempts or remaining <= 0:
        return None
    wait = retry_after if retry_after is not None else backoff_delay(policy, failures)
    return max(0.0, min(wait, remaining))


def ssl_for(url: str, env: Mapping[str, str] | None = None) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument for ``url``: a context trusting the CA file that
    ``ca_bundle_for`` names for loopback hosts (the emulator's CA), else True (the default trust
    store, verified). Never False."""
    bundle = ca_bundle_for(url, env)
    if isinstance(bundle, str):
        return ssl.create_default_context(cafile=bundle)
    return True


class AsyncTokenClient:
    """Posts token requests with aiohttp, retrying per ``RetryPolicy``.

    The session is made on first use, inside the running event loop, and closed by ``close()``;
    a ``session`` passed in stays the caller's to close. Use the client from one event loop.
    """

    def __init__(
        self, session: aiohttp.ClientSession | None = None, *, policy: RetryPolicy | None = None
    ) -> None:
        self.policy = policy or RetryPolicy()
        self._session = session
        self._owns_session = session is None
        self._ssl: dict[str, ssl.SSLContext | bool] = {}
        self.requests_sent = 0

    async def request(
        self, endpoint: str, form: Mapping[str, str], *, context: Mapping[str, str]
    ) -> AccessToken:
        """Send one token request (with retries); raises ``TokenRequestError``."""
        self.requests_sent += 1
        status, headers, body = await self._post(endpoint, form)
        return token_from_answer(
            endpoint, status, headers, body, now=time.time(), context=context, sent=form
        )

    async def _post(self, endpoint: str, form: Mapping[str, str]) -> Answer:
        import aiohttp

        session = self._open()
        connect, read = self.policy.timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)
        failures, first_failure = 0, 0.0
        while True:
            error: BaseException | None = None
            retry_after: float | None = None
            try:
                async with session.post(
                    endpoint,
                    data=dict(form),
                    ssl=self._ssl_for(endpoint),
                    timeout=timeout,
                    allow_redirects=False,
                    headers={"Accept": "application/json"},
                ) as response:
                    answer: Answer = (response.status, response.headers, await response.read())
            except aiohttp.ClientConnectorCertificateError as exc:
                # An untrusted certificate stays untrusted: no retry.
                raise unreachable(endpoint, exc, self.policy.deadline) from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                error = exc
            else:
                if answer[0] not in RETRY_STATUSES:
                    return answer
                retry_after = _retry_after(answer[1])
            failures += 1
            first_failure = first_failure or time.monotonic()
            wait = next_wait(self.policy, failures, retry_after, time.monotonic() - first_failure)
            if wait is None:
                if error is not None:
                    raise unreachable(endpoint, error, self.policy.deadline) from None
                return answer  # the last 429/5xx: parsed into a TokenRequestError with its status
            await _sleep(wait)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=16),
                headers={"User-Agent": f"kvassert/{__version__} aiohttp/{aiohttp.__version__}"},
                # As requests and azure-core do: proxies from HTTPS_PROXY / NO_PROXY.
                trust_env=True,
            )
        return self._session

    def _ssl_for(self, endpoint: str) -> ssl.SSLContext | bool:
        from urllib.parse import urlsplit

        origin = urlsplit(endpoint).netloc
        if origin not in self._ssl:
            self._ssl[origin] = ssl_for(endpoint)
        return self._ssl[origin]

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()
