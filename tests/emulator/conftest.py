"""Shared fixtures for the emulator's Key Vault, admin and server tests.

Three layers, as moto tests its services: the state model called directly (``state``), raw HTTP
through the WSGI app without sockets (``http``: a werkzeug test client), and the real SDKs over
TLS against one in-process emulator per session (``emu``: reset before each test).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from unittest import mock

import pytest
from werkzeug.test import Client, TestResponse

from kvassert.emulator.app import EmulatorApp
from kvassert.emulator.clock import Clock
from kvassert.emulator.server import Emulator
from kvassert.emulator.state import EmulatorState
from kvassert.emulator.sts_tokens import SigningKey
from kvassert.emulator.vault import CertificatePolicy

BASE = "https://127.0.0.1:8443"
API = {"api-version": "7.5"}
VAULT = "https://vault.azure.net"


def vault_token(state: EmulatorState, principal: Any = None, *, resource: str = VAULT) -> str:
    """An access token the emulator's directory issues to ``principal`` (default: the
    system-assigned identity), as its token endpoints would."""
    directory = state.directory
    who = principal or directory.system_identity
    tenant = getattr(who, "tenant_id", directory.tenant_id)
    issued = directory.issue_token(
        who,
        directory.resolve_resource(tenant, resource),
        tenant_id=tenant,
        base_url=BASE,
        version=1,
        acr="2",
    )
    return issued.access_token


@dataclass
class Http:
    """Raw HTTP against the WSGI app, authenticated as ``token`` unless told otherwise."""

    state: EmulatorState
    client: Client
    token: str

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        token: str | None = None,
        auth: bool = True,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **environ: Any,
    ) -> TestResponse:
        sent = dict(headers or {})
        if auth:
            sent["Authorization"] = f"Bearer {token or self.token}"
        return self.client.open(
            path,
            method=method,
            json=json,
            data=data,
            headers=sent,
            query_string=API if params is None else (params or None),
            base_url=BASE,
            **environ,
        )

    def as_principal(self, principal: Any) -> Http:
        return Http(self.state, self.client, vault_token(self.state, principal))


@lru_cache(maxsize=1)
def _signing_key() -> SigningKey:
    return SigningKey.generate(Clock().now())


def new_state() -> EmulatorState:
    """A fresh state whose token-signing key is shared across tests (RSA keygen is slow)."""
    with mock.patch.object(SigningKey, "generate", return_value=_signing_key()):
        return EmulatorState()


@pytest.fixture
def state() -> EmulatorState:
    return new_state()


@pytest.fixture
def http(state: EmulatorState) -> Http:
    return Http(state, Client(EmulatorApp(state, base_url=BASE)), vault_token(state))


def error_of(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


def self_signed_policy(**overrides: Any) -> CertificatePolicy:
    values: dict[str, Any] = {"subject": "CN=kvassert-app", "exportable": False}
    values.update(overrides)
    return CertificatePolicy(**values)


@pytest.fixture(scope="session")
def emulator_session() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(emulator_session: Emulator) -> Emulator:
    """The session's in-process emulator over TLS, reset for this test."""
    assert emulator_session.state is not None
    emulator_session.state.reset()
    return emulator_session


@pytest.fixture
def identity_env(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    """App Service managed identity variables pointing at the emulator (what a user sets)."""
    for name, value in emu.info.identity_environ().items():
        monkeypatch.setenv(name, value)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return emu
