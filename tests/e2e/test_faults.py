"""Issue 5: the outage matrix, driven by the emulator's fault injection.

Each row injects one fault into one operation and asserts what the caller sees and how many
requests reached the service. The README's "Outages" table is this table.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

import kvassert
from kvassert.cache import TokenCache
from kvassert.errors import KvassertError
from tests.e2e.conftest import API, World

SCOPE = f"{API}/.default"
POLICY = kvassert.RetryPolicy(
    attempts=3, backoff=0.05, backoff_max=0.2, jitter=0.0, deadline=8.0, timeout=(2.0, 2.0)
)
RANDOM_SIGNATURE = base64.urlsafe_b64encode(os.urandom(256)).rstrip(b"=").decode()


@dataclass(frozen=True)
class Row:
    route: str
    fault: dict[str, Any]
    outcome: type[BaseException] | None  # None: a token
    attempts: int  # requests that reached `route`
    match: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


ROWS = {
    "vault cert read throttled once": Row(
        "certificate_get", {"status": 429, "retry_after": 1, "count": 1}, None, 2
    ),
    "vault cert read 503 twice": Row("certificate_get", {"status": 503, "count": 2}, None, 3),
    "vault cert read connection dropped once": Row(
        "certificate_get", {"drop": True, "count": 1}, None, 2
    ),
    "vault cert read down": Row(
        "certificate_get", {"status": 503}, kvassert.CredentialUnavailableError, 3, "HTTP 503"
    ),
    "vault cert read answers HTML": Row(
        "certificate_get",
        {"status": 200, "body": "<html>maintenance</html>"},
        kvassert.CredentialUnavailableError,
        1,
    ),
    "vault sign throttled once": Row(
        "sign", {"status": 429, "retry_after": 1, "count": 1}, None, 2
    ),
    "vault sign 503 once": Row("sign", {"status": 503, "count": 1}, None, 2),
    "vault sign down": Row("sign", {"status": 500}, kvassert.KeyVaultError, 3, "HTTP 500"),
    "vault sign connection dropped": Row("sign", {"drop": True}, kvassert.KeyVaultError, 1),
    "vault sign truncated JSON": Row(
        "sign", {"status": 200, "body": '{"kid": "x", "val'}, kvassert.KeyVaultError, 1
    ),
    "vault sign wrong signature length": Row(
        "sign",
        {"status": 200, "body": '{"kid": "x", "value": "AAAA"}'},
        kvassert.SigningError,
        1,
        "does not verify",
    ),
    "vault sign foreign kid": Row(
        "sign",
        {
            "status": 200,
            "body": json.dumps(
                {"kid": "https://evil.vault.azure.net/keys/k/1", "value": RANDOM_SIGNATURE}
            ),
        },
        kvassert.SigningError,
        1,
        "does not verify",
    ),
    "entra throttled once": Row("token", {"status": 429, "retry_after": 1, "count": 1}, None, 2),
    "entra 503 twice": Row("token", {"status": 503, "count": 2}, None, 3),
    "entra connection dropped once": Row("token", {"drop": True, "count": 1}, None, 2),
    "entra down": Row("token", {"status": 503}, kvassert.TokenRequestError, 3, "HTTP 503"),
    "entra answers HTML": Row(
        "token",
        {"status": 200, "body": "<html>oops</html>"},
        kvassert.TokenRequestError,
        1,
        "not a JSON object",
    ),
    "entra truncated JSON": Row(
        "token", {"status": 200, "body": '{"access_token": "ab'}, kvassert.TokenRequestError, 1
    ),
    "entra too slow": Row(
        "token", {"latency_ms": 3000}, kvassert.TokenRequestError, 3, "could not reach"
    ),
    "managed identity down": Row(
        "identity", {"status": 500}, kvassert.CredentialUnavailableError, 0
    ),
}


def settled_count(world: World, route: str, expected: int) -> int:
    """Requests logged for ``route``; a slow request is logged when the emulator finishes it,
    after the client gave up, so wait (boundedly) for the count to settle."""
    deadline = time.monotonic() + 5
    while True:
        count = len(world.admin.log(operation=route))
        if count >= expected or time.monotonic() > deadline:
            return count
        time.sleep(0.1)


@pytest.fixture
def app(world: World) -> str:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    return client_id


@pytest.mark.parametrize("name", list(ROWS))
def test_cold_acquisition_under_fault(world: World, app: str, name: str) -> None:
    row = ROWS[name]
    config = world.appsettings(app, [world.vault_entry("app-cert")])
    world.admin.clear_log()
    world.admin.add_fault(row.route, **row.fault)
    started = time.monotonic()
    with kvassert.from_appsettings(config, retry_policy=POLICY) as credential:
        if row.outcome is None:
            assert credential.get_token(SCOPE).token
        else:
            with pytest.raises(row.outcome, match=row.match or None) as info:
                credential.get_token(SCOPE)
            assert isinstance(info.value, KvassertError)
    elapsed = time.monotonic() - started
    world.admin.clear_faults()
    if row.route != "identity":
        assert settled_count(world, row.route, row.attempts) == row.attempts
    assert elapsed < POLICY.deadline * 2  # one clear answer within the deadline, not a hang


def test_outage_with_a_valid_cached_token(world: World, app: str) -> None:
    """A still-valid token is served through an outage; refreshes back off; expired never."""
    now = [time.time()]
    config = world.appsettings(app, [world.vault_entry("app-cert")])
    cache = TokenCache(clock=lambda: now[0])
    with kvassert.from_appsettings(config, retry_policy=POLICY, cache=cache) as credential:
        token = credential.token(SCOPE)
        world.admin.add_fault("token", status=503)
        world.admin.clear_log()
        now[0] = token.refresh_on + 1  # refresh recommended, token still valid
        for _ in range(20):
            assert credential.get_token(SCOPE).token == token.token
        attempts = len(world.admin.log(operation="token"))
        assert attempts == POLICY.attempts  # one refresh (with its retries), then backoff
        now[0] += 1  # still inside the backoff window
        assert credential.get_token(SCOPE).token == token.token
        assert len(world.admin.log(operation="token")) == attempts
        now[0] = token.expires_on  # expired: never served
        with pytest.raises(kvassert.TokenRequestError, match="HTTP 503"):
            credential.get_token(SCOPE)
        world.admin.clear_faults()
        assert credential.get_token(SCOPE).token != token.token  # recovered
