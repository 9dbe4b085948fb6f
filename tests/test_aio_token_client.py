"""The aiohttp token requester against a scripted loopback server: the sync client's request and
answer handling, and the retry loop (statuses, Retry-After, deadline, redirects, TLS trust)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvassert.aio import token_client as aio_token_client
from kvassert.aio.token_client import AsyncTokenClient, backoff_delay, next_wait, ssl_for
from kvassert.errors import TokenRequestError
from kvassert.token_client import AccessToken, assertion_fields, build_form, target_for
from kvassert.transport import RetryPolicy
from tests.certs import make_cert
from tests.fakes import Answer, Script, scripted_server

POLICY = RetryPolicy(attempts=3, backoff=0.5, backoff_max=8.0, jitter=0.0, deadline=30.0)
CONTEXT = {"client_id": "cid", "tenant": "t"}


def ok(token: str = "tok") -> Answer:
    return 200, {}, json.dumps({"access_token": token, "expires_in": 3600}).encode()


def entra_error(status: int, code: int, headers: dict[str, str] | None = None) -> Answer:
    body: dict[str, object] = {
        "error": "invalid_client",
        "error_description": f"AADSTS{code}: x",
        "error_codes": [code],
    }
    return status, headers or {}, json.dumps(body).encode()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    with scripted_server() as served:
        yield served


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retry loop asks for, recorded instead of slept."""
    recorded: list[float] = []

    async def record(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr(aio_token_client, "_sleep", record)
    return recorded


def request(endpoint: str, policy: RetryPolicy = POLICY) -> AccessToken:
    async def main() -> AccessToken:
        client = AsyncTokenClient(policy=policy)
        try:
            target = target_for(endpoint, "v2", ("api://x/.default",))
            form = build_form("cid", target, assertion_fields("h.p.s"))
            return await client.request(endpoint, form, context=CONTEXT)
        finally:
            await client.close()

    return asyncio.run(main())


def test_posts_the_shared_form_and_parses_the_answer(server: tuple[str, Script]) -> None:
    base, script = server
    script.answers = [ok("tok-1")]
    token = request(f"{base}/t/oauth2/v2.0/token")
    assert token.token == "tok-1" and token.expires_on - token.issued_at == 3600
    assert script.hits == 1
    assert script.forms[0] == {
        "client_id": "cid",
        "grant_type": "client_credentials",
        "scope": "api://x/.default",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "h.p.s",
    }


def test_retry_after_is_honoured_then_success(
    server: tuple[str, Script], waits: list[float]
) -> None:
    base, script = server
    script.answers = [entra_error(429, 50196, {"Retry-After": "7"}), ok()]
    assert request(f"{base}/token").token == "tok"
    assert script.hits == 2
    assert waits == [7.0]


def test_5xx_without_retry_after_backs_off_like_urllib3(
    server: tuple[str, Script], waits: list[float]
) -> None:
    base, script = server
    script.answers = [(503, {}, b"<html>busy</html>"), (502, {}, b""), ok()]
    assert request(f"{base}/token").token == "tok"
    assert script.hits == 3
    assert waits == [0.0, 1.0]  # no wait after the first failure, then backoff * 2


def test_retries_stop_after_the_attempts_with_the_last_answer(
    server: tuple[str, Script], waits: list[float]
) -> None:
    base, script = server
    script.answers = [entra_error(429, 50196, {"Retry-After": "1"})]
    with pytest.raises(TokenRequestError) as info:
        request(f"{base}/token")
    assert script.hits == POLICY.attempts
    assert len(waits) == POLICY.attempts - 1
    assert info.value.status == 429 and info.value.aadsts == 50196
    assert info.value.retry_after == 1.0


def test_a_huge_retry_after_never_outlasts_the_deadline(server: tuple[str, Script]) -> None:
    base, script = server
    script.answers = [entra_error(503, 90033, {"Retry-After": "3600"})]
    policy = RetryPolicy(attempts=10, backoff=0.0, jitter=0.0, deadline=0.3)
    with pytest.raises(TokenRequestError) as info:
        request(f"{base}/token", policy)
    assert info.value.status == 503
    assert script.hits == 2  # the wait was cut to the deadline, after which nothing is retried


def test_entra_errors_other_than_429_and_5xx_are_not_retried(server: tuple[str, Script]) -> None:
    base, script = server
    script.answers = [entra_error(401, 700027)]
    with pytest.raises(TokenRequestError) as info:
        request(f"{base}/token")
    assert script.hits == 1
    assert info.value.aadsts == 700027 and info.value.credential_problem


def test_redirects_are_refused_not_followed(server: tuple[str, Script]) -> None:
    base, script = server
    script.answers = [(307, {"Location": f"{base}/elsewhere"}, b""), ok()]
    with pytest.raises(TokenRequestError, match="never follows a redirect") as info:
        request(f"{base}/token")
    assert info.value.status == 307
    assert script.hits == 1  # a 307 keeps the POST: following it would show as a second hit


def test_connection_errors_are_retried_then_reported(waits: list[float]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TokenRequestError, match="could not reach") as info:
        request(f"http://127.0.0.1:{port}/token")
    assert info.value.status == 0
    assert len(waits) == POLICY.attempts - 1


def test_read_timeouts_are_retried(server: tuple[str, Script]) -> None:
    base, script = server

    def slow(form: dict[str, str]) -> Answer:
        time.sleep(0.6)
        return ok()

    script.responder = slow
    policy = RetryPolicy(attempts=2, backoff=0.0, jitter=0.0, timeout=(1.0, 0.2))
    with pytest.raises(TokenRequestError, match="could not reach"):
        request(f"{base}/token", policy)
    assert script.hits == 2


def test_next_wait_and_backoff_schedule() -> None:
    policy = RetryPolicy(attempts=5, backoff=0.5, backoff_max=3.0, jitter=0.0, deadline=10.0)
    assert [backoff_delay(policy, n) for n in (1, 2, 3, 4)] == [0.0, 1.0, 2.0, 3.0]
    assert next_wait(policy, 1, None, 0.0) == 0.0
    assert next_wait(policy, 2, 4.0, 0.0) == 4.0  # Retry-After replaces the backoff
    assert next_wait(policy, 2, 40.0, 7.5) == 2.5  # and is cut to the deadline
    assert next_wait(policy, 5, None, 0.0) is None  # attempts used up
    assert next_wait(policy, 2, None, 10.0) is None  # deadline passed
    jittery = RetryPolicy(backoff=0.5, jitter=0.25, backoff_max=8.0)
    assert all(1.0 <= backoff_delay(jittery, 2) <= 1.25 for _ in range(50))


def test_tls_trust_uses_the_ca_bundle_only_for_loopback_hosts(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    ca = make_cert(cn="kvassert-test-ca", ca=True)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    env = {"REQUESTS_CA_BUNDLE": str(ca_file)}
    context = ssl_for("https://127.0.0.1:8443/t/oauth2/v2.0/token", env)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    trusted = context.get_ca_certs()
    assert len(trusted) == 1 and "kvassert-test-ca" in str(trusted[0]["subject"])
    assert ssl_for("https://login.microsoftonline.com/t/oauth2/v2.0/token", env) is True
    assert ssl_for("https://localhost:8443/token", {}) is True


def test_close_closes_its_own_session_but_not_a_borrowed_one(server: tuple[str, Script]) -> None:
    import aiohttp

    base, script = server
    script.answers = [ok()]

    async def main() -> tuple[bool, bool]:
        own = AsyncTokenClient(policy=POLICY)
        await own.request(f"{base}/token", {"client_id": "c"}, context=CONTEXT)
        session = own._session
        await own.close()
        async with aiohttp.ClientSession() as borrowed:
            client = AsyncTokenClient(borrowed, policy=POLICY)
            await client.request(f"{base}/token", {"client_id": "c"}, context=CONTEXT)
            await client.close()
            return session is not None and session.closed, borrowed.closed

    assert asyncio.run(main()) == (True, False)
