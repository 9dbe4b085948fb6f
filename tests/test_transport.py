"""Retries, Retry-After, the overall deadline and redirect refusal, against a loopback server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from kvassert.errors import TokenRequestError
from kvassert.token_client import TokenClient
from kvassert.transport import RetryPolicy, ca_bundle_for, is_loopback_host, make_session
from tests.fakes import Script, scripted_server

OK = json.dumps({"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"}).encode()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    with scripted_server() as (base, script):
        yield f"{base}/t/oauth2/v2.0/token", script


FAST = RetryPolicy(attempts=4, backoff=0.01, backoff_max=0.05, jitter=0.0, deadline=5.0)


def test_retries_429_honouring_retry_after_then_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "1"}, b"{}"), (200, {}, OK)]
    client = TokenClient(policy=FAST)
    started = time.monotonic()
    token = client.request(url, {"a": "b"}, context={})
    assert token.token == "tok"
    assert script.hits == 2
    assert time.monotonic() - started >= 1.0  # waited as told


def test_retries_5xx_then_gives_up_with_the_last_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {}, b"<html>down</html>")]
    client = TokenClient(policy=FAST)
    with pytest.raises(TokenRequestError) as info:
        client.request(url, {}, context={})
    assert info.value.status == 503
    assert script.hits == FAST.attempts


def test_4xx_is_not_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [
        (400, {}, json.dumps({"error": "invalid_client", "error_codes": [700027]}).encode())
    ]
    with pytest.raises(TokenRequestError) as info:
        TokenClient(policy=FAST).request(url, {}, context={})
    assert info.value.aadsts == 700027
    assert script.hits == 1


def test_deadline_caps_a_huge_retry_after(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(429, {"Retry-After": "3600"}, b"{}")]
    policy = RetryPolicy(attempts=5, backoff=0.01, jitter=0.0, deadline=0.5)
    started = time.monotonic()
    with pytest.raises(TokenRequestError) as info:
        TokenClient(policy=policy).request(url, {}, context={})
    assert info.value.status == 429
    assert time.monotonic() - started < 5  # nowhere near an hour
    assert script.hits <= 3


def test_redirects_are_never_followed(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(302, {"Location": "https://evil.example/steal"}, b"")]
    with pytest.raises(TokenRequestError, match="never follows a redirect"):
        TokenClient(policy=FAST).request(url, {"client_secret": "x"}, context={})
    assert script.hits == 1


def test_connection_refused_is_a_clear_error() -> None:
    policy = RetryPolicy(attempts=2, backoff=0.01, jitter=0.0, deadline=2.0)
    with pytest.raises(TokenRequestError, match="could not reach") as info:
        TokenClient(policy=policy).request("http://127.0.0.1:9/token", {}, context={})
    assert info.value.status == 0


def test_loopback_detection_and_ca_bundle_only_for_loopback() -> None:
    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost")
    assert is_loopback_host("[::1]") and is_loopback_host("127.5.6.7")
    assert not is_loopback_host("10.0.0.1") and not is_loopback_host("vault.azure.net")
    env = {"SSL_CERT_FILE": "/tmp/ca.pem"}
    assert ca_bundle_for("https://127.0.0.1:8443/", env) == "/tmp/ca.pem"
    assert ca_bundle_for("https://kv.vault.azure.net/", env) is True


def test_session_sets_user_agent() -> None:
    assert make_session().headers["User-Agent"].startswith("kvassert/")
