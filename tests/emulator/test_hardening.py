"""Emulator hardening: what it refuses, and what survives concurrency, restarts and kill -9.

- Tokens: forged ones (another key with our ``kid``, ``alg: none``, HS256 keyed with our public
  key, algorithms we do not sign with, tampered claims), expired, not yet valid, for another
  audience or another tenant: 401 with Key Vault's challenge.
- RBAC on every Key Vault route: the app's URL map is enumerated, so a route added without an
  RBAC check fails here; a caller without the operation's data action gets 403
  ``ForbiddenByRbac`` before anything is looked up or parsed.
- The admin API answers loopback callers only; the server binds loopback addresses only.
- Bodies over the limit: 413 in the service's shape, with a ``Content-Length`` or chunked.
- Concurrent creates, rotations, imports, signs and enable/disable over real HTTPS keep the vault
  consistent; a restart on ``--state-dir`` keeps everything; kill -9 leaves a loadable state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from werkzeug.routing import Rule
from werkzeug.test import Client, TestResponse
from werkzeug.wrappers import Response

from kvassert.emulator.app import MAX_BODY_BYTES, EmulatorApp
from kvassert.emulator.keystore import KeyStore
from kvassert.emulator.rbac import OPERATION_DATA_ACTIONS
from kvassert.emulator.routing import RequestContext, Route, json_response
from kvassert.emulator.server import Emulator, EmulatorInfo, EmulatorProcess, HttpsServer
from kvassert.emulator.state import STATE_FILE, EmulatorState
from tests.certs import make_cert, rsa_key
from tests.emulator.conftest import BASE, error_of, new_state, self_signed_policy, vault_token

VAULT = "https://vault.azure.net"
API = {"api-version": "7.5"}
DIGEST = hashlib.sha256(b"hardening").digest()
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
TIMEOUT = 30


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(value: Mapping[str, Any]) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.private_numbers()

    def enc(value: int) -> str:
        return b64u(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "n": enc(numbers.public_numbers.n),
        "e": enc(numbers.public_numbers.e),
        "d": enc(numbers.d),
        "p": enc(numbers.p),
        "q": enc(numbers.q),
    }


@cache
def pfx_b64(slot: int) -> str:
    return base64.b64encode(make_cert(cn=f"import-{slot}", key=rsa_key(2048, slot)).pfx()).decode()


def policy_json(subject: str = "CN=hardening") -> dict[str, Any]:
    return {"x509_props": {"subject": subject}, "issuer": {"name": "Self"},
            "key_props": {"exportable": False, "kty": "RSA", "key_size": 2048}}  # fmt: skip


def challenge(base: str, tenant: str) -> str:
    return f'Bearer authorization="{base}/{tenant}", resource="{VAULT}"'


def app_client(state: EmulatorState) -> tuple[EmulatorApp, Client]:
    app = EmulatorApp(state, base_url=BASE)
    return app, Client(app)


def vault_call(
    client: Client,
    method: str,
    path: str,
    token: str | None,
    body: Any = None,
    **kwargs: Any,
) -> TestResponse:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.open(
        path,
        method=method,
        json=body,
        headers=headers,
        query_string=API,
        base_url=BASE,
        environ_base=LOOPBACK,
        **kwargs,
    )


# ---- tokens -------------------------------------------------------------------------------------


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    head, claims, signature = token.split(".")
    return json.loads(unb64u(head)), json.loads(unb64u(claims)), signature


def rs_sign(key: rsa.RSAPrivateKey, data: bytes, alg: str) -> bytes:
    hash_alg = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
    pad: padding.AsymmetricPadding = (
        padding.PSS(padding.MGF1(hash_alg), hash_alg.digest_size)
        if alg.startswith("PS")
        else padding.PKCS1v15()
    )
    return key.sign(data, pad, hash_alg)


def forge(
    header: Mapping[str, Any], claims: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = f"{segment(header)}.{segment(claims)}"
    return f"{signing_input}.{b64u(sign(signing_input.encode()))}"


def forgeries(state: EmulatorState) -> dict[str, str]:
    """Tokens the emulator must refuse although their claims are those of a valid token."""
    genuine = vault_token(state)
    header, claims, signature = parts(genuine)
    ours = state.directory.signing_keys()[0]
    public = ours.private_key.public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    other = rsa_key(2048, 7)
    head = segment(header)
    someone = {**claims, "oid": str(uuid.uuid4()), "sub": str(uuid.uuid4())}
    second = vault_token(state)  # another genuine token: its signature does not fit the first
    return {
        "another key with our kid": forge(header, claims, lambda d: rs_sign(other, d, "RS256")),
        "another key, unknown kid": forge(
            {**header, "kid": "unknown", "x5t": "unknown"}, claims,
            lambda d: rs_sign(other, d, "RS256"),
        ),
        "alg none, no signature": f"{segment({**header, 'alg': 'none'})}.{segment(claims)}.",
        "alg none, genuine signature": (
            f"{segment({**header, 'alg': 'none'})}.{segment(claims)}.{signature}"
        ),
        "alg None (capitalised)": f"{segment({**header, 'alg': 'None'})}.{segment(claims)}.",
        "HS256 keyed with our public key (PEM)": forge(
            {**header, "alg": "HS256"}, claims,
            lambda d: hmac.new(pem, d, hashlib.sha256).digest(),
        ),
        "HS256 keyed with our public key (DER)": forge(
            {**header, "alg": "HS256"}, claims,
            lambda d: hmac.new(der, d, hashlib.sha256).digest(),
        ),
        "PS256 with our own key (not an algorithm we issue)": forge(
            {**header, "alg": "PS256"}, claims, lambda d: rs_sign(ours.private_key, d, "PS256")
        ),
        "RS512 with our own key": forge(
            {**header, "alg": "RS512"}, claims, lambda d: rs_sign(ours.private_key, d, "RS512")
        ),
        "claims changed after signing": f"{head}.{segment(someone)}.{signature}",
        "signature stripped": f"{head}.{segment(claims)}",
        "signature of another token": f"{head}.{segment(claims)}.{second.split('.')[2]}",
        "signature truncated": f"{head}.{segment(claims)}.{signature[:-8]}",
        "five segments (JWE layout)": f"{genuine}.AAAA.BBBB",
    }  # fmt: skip


def assert_challenged(response: TestResponse, base: str, tenant: str, prefix: str) -> None:
    assert response.status_code == 401, response.get_data()
    assert response.headers["WWW-Authenticate"] == challenge(base, tenant)
    error = error_of(response)
    assert error["code"] == "Unauthorized" and error["message"].startswith(prefix), error


def test_forged_tokens_are_refused_with_the_challenge() -> None:
    state = new_state()
    state.vault.keys.import_key("k", rsa_key(2048, 1))
    _, client = app_client(state)
    tenant = state.directory.tenant_id
    assert vault_call(client, "GET", "/keys/k/", vault_token(state)).status_code == 200
    forged = forgeries(state)
    for name, token in forged.items():
        for method, path, body in (
            ("GET", "/keys/k/", None),
            ("POST", "/keys/k//sign", {"alg": "RS256", "value": b64u(DIGEST)}),
            ("POST", "/keys/forged/create", {"kty": "RSA"}),
        ):
            state.log.clear()
            response = vault_call(client, method, path, token, body)
            assert_challenged(response, BASE, tenant, "AKV10000: The bearer token is invalid")
            entries = state.log.entries()
            assert [(e.status, e.principal) for e in entries] == [(401, "")], name
    assert state.vault.keys.names() == ["k"]  # nothing was created with a forged token


def test_forged_tokens_are_refused_over_https(emu: Emulator) -> None:
    assert emu.state is not None
    info = emu.info
    with requests.Session() as session:
        for name, token in forgeries(emu.state).items():
            response = session.get(
                f"{info.vault_url}/keys",
                params=API,
                headers={"Authorization": f"Bearer {token}"},
                verify=info.ca_file,
                timeout=TIMEOUT,
            )
            assert response.status_code == 401, name
            assert response.headers["WWW-Authenticate"] == challenge(info.vault_url, info.tenant_id)
            assert response.json()["error"]["code"] == "Unauthorized"


def test_expired_and_not_yet_valid_tokens_are_refused_with_five_minutes_of_skew() -> None:
    state = new_state()
    _, client = app_client(state)
    tenant = state.directory.tenant_id
    token = vault_token(state)  # valid for an hour from now
    lifetime = state.directory.token_lifetime_seconds
    cases = [
        (lifetime + 299, 200),  # expired, but within the 5 minutes of clock skew
        (lifetime + 301, 401),
        (-299, 200),  # issued "in the future", within the skew
        (-301, 401),
    ]
    for offset, status in cases:
        state.clock.set_offset(offset)
        response = vault_call(client, "GET", "/keys", token)
        assert response.status_code == status, offset
        if status == 401:
            reason = "expired" if offset > 0 else "not yet valid"
            assert_challenged(response, BASE, tenant, "AKV10000")
            assert reason in error_of(response)["message"]


def test_tokens_for_another_audience_or_tenant_are_refused() -> None:
    state = new_state()
    _, client = app_client(state)
    tenant = state.directory.tenant_id
    directory = state.directory
    directory.register_application("api-app", identifier_uris=["api://orders"])
    for resource in ("https://graph.microsoft.com", "https://management.azure.com", "api://orders"):
        token = vault_token(state, resource=resource)
        response = vault_call(client, "GET", "/keys", token)
        assert_challenged(response, BASE, tenant, "AKV10022: Invalid audience")
    # A v2 token for the vault carries Key Vault's application id as aud: accepted.
    issued = directory.issue_token(
        directory.system_identity, directory.resolve_resource(tenant, VAULT),
        tenant_id=tenant, base_url=BASE, version=2, acr="2",
    )  # fmt: skip
    assert vault_call(client, "GET", "/keys", issued.access_token).status_code == 200
    guest = directory.register_application("guest-app", tenant_id=str(uuid.uuid4()))
    state.rbac.assign(guest.principal_id, "Key Vault Administrator")  # RBAC would allow it
    response = vault_call(client, "GET", "/keys", vault_token(state, guest))
    assert_challenged(response, BASE, tenant, "AKV10032: Invalid issuer")


# ---- RBAC on every Key Vault route ---------------------------------------------------------------

VAULT_PREFIXES = ("/keys", "/certificates", "/secrets")


@cache
def bodies() -> dict[str, Any]:
    """A valid body per operation that takes one (RBAC must refuse before reading it)."""
    return {
        "key_create": {"kty": "RSA"},
        "key_import": {"key": jwk(rsa_key(2048, 2))},
        "key_update": {"tags": {"a": "b"}},
        "sign": {"alg": "RS256", "value": b64u(DIGEST)},
        "verify": {"alg": "RS256", "digest": b64u(DIGEST), "value": "AA"},
        "certificate_create": {"policy": policy_json()},
        "certificate_import": {"value": pfx_b64(3)},
        "certificate_update": {"tags": {"a": "b"}},
    }


def route_methods(app: EmulatorApp) -> Iterator[tuple[Rule, Route, str]]:
    """Every (rule, route, method) the app serves; HEAD too, as werkzeug adds it to GET."""
    for rule in app.url_map.iter_rules():
        route = app.routes[int(rule.endpoint)]
        for method in sorted(rule.methods or ()):
            yield rule, route, method


def test_every_route_belongs_to_a_service_with_its_own_guard() -> None:
    """Vault paths are Key Vault routes (RBAC, below); the others are Entra (public by design),
    the identity endpoint (X-IDENTITY-HEADER) and the admin API (loopback only, below)."""
    app, _ = app_client(new_state())
    for rule, route, _method in route_methods(app):
        path = rule.rule
        if path.startswith(VAULT_PREFIXES):
            assert route.service == "keyvault", path
        elif route.service == "entra":
            assert path.startswith("/<tenant>/"), path
        elif route.service == "identity":
            assert path == "/msi/token"
        else:
            assert route.service == "admin" and path.startswith("/admin"), (path, route.service)
    vault_operations = {r.operation for r in app.routes if r.service == "keyvault"}
    assert vault_operations == set(OPERATION_DATA_ACTIONS)


def rbac_gaps(
    app: EmulatorApp, *, objects: Mapping[str, tuple[str, str]], token_without: Callable[[str], str]
) -> tuple[list[str], int]:
    """Every Key Vault (rule, method) called by a caller who lacks the operation's data action
    (``token_without(operation)``), on the ``objects`` given per path prefix (name, version).
    Returns the calls not refused with 403 ForbiddenByRbac naming the action, and how many
    calls were made."""
    client = Client(app)
    adapter = app.url_map.bind("127.0.0.1:8443", url_scheme="https")
    gaps, tried = [], 0
    for rule, route, method in route_methods(app):
        if route.service != "keyvault":
            continue
        prefix = "/" + rule.rule.split("/")[1]
        name, version = objects[prefix]
        values = {
            k: v for k, v in {"name": name, "version": version}.items() if k in rule.arguments
        }
        url = adapter.build(rule.endpoint, values, method=method)
        assert adapter.match(url, method=method)[0] == rule.endpoint, url  # this very rule
        app.state.log.clear()
        token = token_without(route.operation)
        body = bodies().get(route.operation) if method in ("POST", "PUT", "PATCH") else None
        response = vault_call(client, method, url, token, body)
        tried += 1
        action = OPERATION_DATA_ACTIONS[route.operation]
        shown = f"{method} {rule.rule} ({route.operation}) -> {response.status_code}"
        entries = app.state.log.entries()
        if response.status_code != 403 or [(e.operation, e.status) for e in entries] != [
            (route.operation, 403)
        ]:
            gaps.append(shown)
        elif method != "HEAD":
            error = error_of(response)
            if error.get("innererror") != {"code": "ForbiddenByRbac"} or (
                f"Action: '{action}'" not in error["message"]
            ):
                gaps.append(f"{shown}: {error}")
    return gaps, tried


def rbac_world() -> tuple[EmulatorState, dict[str, dict[str, tuple[str, str]]]]:
    state = new_state()
    key = state.vault.keys.import_key("k", rsa_key(2048, 1))
    state.vault.certificates.create("c", self_signed_policy())
    cert = state.vault.certificates.get("c")
    existing = {
        "/keys": ("k", key.version),
        "/certificates": ("c", cert.version),
        "/secrets": ("c", cert.secret_version),
    }
    missing = {prefix: ("nothing-here", "0" * 32) for prefix in VAULT_PREFIXES}
    return state, {"existing": existing, "missing": missing}


def test_every_key_vault_route_refuses_a_principal_without_the_data_action() -> None:
    state, scenarios = rbac_world()
    app, _ = app_client(state)
    directory = state.directory
    nobody = directory.register_application("no-role-app")
    nobody_token = vault_token(state, nobody)
    everything_but = directory.register_application("all-but-one-app")
    but_token = vault_token(state, everything_but)
    all_actions = set(OPERATION_DATA_ACTIONS.values())

    def all_but(operation: str) -> str:
        state.rbac.unassign(everything_but.principal_id)
        kept = sorted(all_actions - {OPERATION_DATA_ACTIONS[operation]})
        state.rbac.assign(everything_but.principal_id, data_actions=kept)
        return but_token

    before = json.dumps(state.vault.to_dict(), sort_keys=True)
    expected = sum(1 for _rule, route, _m in route_methods(app) if route.service == "keyvault")
    for objects in scenarios.values():
        for token_without in (lambda _op: nobody_token, all_but):
            gaps, tried = rbac_gaps(app, objects=objects, token_without=token_without)
            assert gaps == []
            assert tried == expected
    assert expected >= 30
    assert json.dumps(state.vault.to_dict(), sort_keys=True) == before  # nothing changed


def test_a_route_without_an_rbac_check_is_caught() -> None:
    """The check above fails for a route someone adds without ``_authorize``."""
    state, scenarios = rbac_world()

    def backup(ctx: RequestContext, name: str) -> Response:
        return json_response({"value": name})

    unguarded = Route("/keys/<name>/backup", ("POST",), "key_get", backup, "keyvault")
    app = EmulatorApp(state, base_url=BASE, routes=[*app_client(state)[0].routes, unguarded])
    token = vault_token(state, state.directory.register_application("no-role-app"))
    gaps, _ = rbac_gaps(app, objects=scenarios["existing"], token_without=lambda _op: token)
    assert gaps == ["POST /keys/<name>/backup (key_get) -> 200"]


# ---- the admin API and the listening address -----------------------------------------------------

NOT_LOOPBACK = ["10.0.0.7", "192.168.1.2", "172.16.0.1", "8.8.8.8", "::ffff:10.0.0.1",
                "fe80::1", "2001:db8::1", "0.0.0.0", "::", "localhost", "127.0.0.1.nip.io", "",
                None]  # fmt: skip
ADMIN_BODY = {"principal_id": "p", "role": "Key Vault Reader", "route": "sign", "status": 429,
              "client_id": "intruder", "offset_seconds": 3600}  # fmt: skip


def admin_snapshot(state: EmulatorState) -> str:
    summary = state.summary()
    summary.pop("log_entries")
    return json.dumps([summary, state.to_dict()], sort_keys=True, default=str)


@pytest.mark.parametrize("address", NOT_LOOPBACK)
def test_every_admin_route_refuses_a_caller_that_is_not_loopback(address: str | None) -> None:
    state = new_state()
    state.vault.keys.import_key("marker", rsa_key(2048, 1))
    app, client = app_client(state)
    before = admin_snapshot(state)
    routes = [
        (rule, method) for rule, route, method in route_methods(app) if route.service == "admin"
    ]
    environ = {} if address is None else {"REMOTE_ADDR": address}
    for rule, method in routes:
        for spoof in ({}, {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}):
            response = client.open(
                rule.rule, method=method, json=ADMIN_BODY, headers=spoof,
                base_url=BASE, environ_base=environ,
            )  # fmt: skip
            assert response.status_code == 403, (address, method, rule.rule)
            if method != "HEAD":
                assert response.get_json() == {
                    "error": {
                        "code": "Forbidden",
                        "message": "the admin API answers loopback callers only",
                    }
                }
    assert len(routes) >= 15
    assert admin_snapshot(state) == before  # no reset, no role, no fault, no clock change
    assert state.clock.offset_seconds == 0.0


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_every_admin_route_answers_loopback_callers(address: str) -> None:
    state = new_state()
    app, client = app_client(state)
    for rule, route, method in route_methods(app):
        if route.service == "admin" and method in ("GET", "HEAD"):
            response = client.open(rule.rule, method=method, environ_base={"REMOTE_ADDR": address})
            assert response.status_code == 200, rule.rule


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "8.8.8.8", "example.com", "localhost.localdomain",
     "127.0.0.1.nip.io", " 127.0.0.1", "", "[::1]", "0"],
)  # fmt: skip
def test_the_server_refuses_to_bind_a_host_that_is_not_loopback(host: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        Emulator(host=host)
    with pytest.raises(ValueError, match="loopback"):
        HttpsServer(EmulatorApp(new_state()), host, 0, tmp_path)
    assert list(tmp_path.iterdir()) == []  # refused before any TLS material was made


def test_the_emulator_process_refuses_a_public_host() -> None:
    process = EmulatorProcess(extra_args=["--host", "0.0.0.0"], startup_timeout=30)
    try:
        with pytest.raises(RuntimeError, match="loopback"):
            process.start()
        assert process.process is not None and process.process.wait(timeout=10) == 2
    finally:
        if process.stderr is not None:
            process.stderr.close()


def test_loopback_hosts_are_accepted() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert Emulator(host=host).host == host


# ---- bodies over the limit -------------------------------------------------------------------

# Routes that never read a body answer as usual whatever is sent.
BODYLESS = {("/admin/log", "DELETE"), ("/admin/reset", "POST")}
SERVICE_SHAPES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "keyvault": lambda b: list(b) == ["error"] and set(b["error"]) == {"code", "message"}
    and b["error"]["code"] == "RequestEntityTooLarge",
    "entra": lambda b: b["error"] == "invalid_request" and b["error_codes"] == [90023],
    "admin": lambda b: set(b) == {"error"} and set(b["error"]) == {"code", "message"},
}  # fmt: skip


def test_every_route_that_reads_a_body_answers_413_past_the_limit() -> None:
    state = new_state()
    state.vault.keys.import_key("k", rsa_key(2048, 1))
    app, client = app_client(state)
    token = vault_token(state)
    adapter = app.url_map.bind("127.0.0.1:8443", url_scheme="https")
    tenant = state.directory.tenant_id
    tried = Counter[str]()
    for rule, route, method in route_methods(app):
        if method not in ("POST", "PUT", "PATCH", "DELETE") or (rule.rule, method) in BODYLESS:
            continue
        values = {"name": "k", "version": "0" * 32, "tenant": tenant}
        url = adapter.build(rule.endpoint, {k: values[k] for k in rule.arguments}, method=method)
        for size, expected in ((MAX_BODY_BYTES + 1, 413), (MAX_BODY_BYTES, 400)):
            state.log.clear()
            content_type = (
                "application/x-www-form-urlencoded"
                if route.service == "entra"
                else "application/json"
            )
            response = client.open(
                url, method=method, data=b"x" * size, content_type=content_type,
                headers={"Authorization": f"Bearer {token}"}, query_string=API,
                base_url=BASE, environ_base=LOOPBACK,
            )  # fmt: skip
            shown = (method, rule.rule, size, response.status_code)
            if expected == 400:  # at the limit: read, and refused as the junk it is
                assert 400 <= response.status_code < 500 and response.status_code != 413, shown
            else:
                assert response.status_code == 413, shown
                assert SERVICE_SHAPES[route.service](response.get_json()), shown
                if route.service != "admin":
                    assert [e.status for e in state.log.entries()] == [413], shown
        tried[route.service] += 1
    assert set(tried) == {"keyvault", "entra", "admin"} and tried["entra"] == 2


def send_body(
    info: EmulatorInfo,
    path: str,
    headers: Mapping[str, str],
    body: bytes | Iterator[bytes],
) -> tuple[int, dict[str, Any]]:
    """POST ``body`` (chunked when it is an iterator) with requests, which reads an early answer
    even when the server stops reading the body."""
    response = requests.post(
        f"{info.vault_url}{path}", data=body, headers=dict(headers), verify=info.ca_file,
        timeout=TIMEOUT,
    )  # fmt: skip
    answer: dict[str, Any] = response.json()
    return response.status_code, answer


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_over_the_limit_over_https_with_content_length_or_chunked(emu: Emulator) -> None:
    """Two bugs this found. A chunked body has no Content-Length: werkzeug stopped reading it at
    the limit without complaint, so an over-limit body reached the handler cut short (400, not
    413). And cheroot closes the connection after a 413 without reading the rest of the body:
    a client still sending saw a reset (SSLEOFError) about half the time, not the 413."""
    assert emu.state is not None
    info = emu.info
    token = vault_token(emu.state)
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    over = b"{" + b" " * MAX_BODY_BYTES + b"}"
    entra = f"/{info.tenant_id}/oauth2/v2.0/token"
    for body in (lambda: over, lambda: chunks(over)):
        status, answer = send_body(info, "/keys/big/create?api-version=7.5", auth, body())
        assert (status, answer["error"]["code"]) == (413, "RequestEntityTooLarge")
        status, answer = send_body(info, entra, form, body())
        assert (status, answer["error"], answer["error_codes"]) == (413, "invalid_request", [90023])
        status, answer = send_body(info, "/admin/role-assignments", auth, body())
        assert status == 413 and set(answer["error"]) == {"code", "message"}
    # At the limit, a chunked body is read in full: a key create padded to exactly 1 MiB.
    padded = json.dumps({"kty": "RSA"}).encode()
    padded = padded[:-1] + b" " * (MAX_BODY_BYTES - len(padded)) + b"}"
    status, answer = send_body(info, "/keys/big/create?api-version=7.5", auth, chunks(padded))
    assert status == 200 and answer["key"]["kid"].startswith(f"{info.vault_url}/keys/big/")
    assert emu.state.vault.keys.names() == ["big"]


def test_a_malformed_chunked_body_is_a_bad_request_in_the_services_shape(emu: Emulator) -> None:
    assert emu.state is not None
    info = emu.info
    parts_ = urlsplit(info.vault_url)
    assert parts_.hostname is not None and parts_.port is not None
    context = ssl.create_default_context(cafile=info.ca_file)
    raw = socket.create_connection((parts_.hostname, parts_.port), timeout=TIMEOUT)
    with context.wrap_socket(raw, server_hostname=parts_.hostname) as tls:
        tls.sendall(
            b"POST /keys/k/create?api-version=7.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {vault_token(emu.state)}\r\n".encode()
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"ZZ\r\n{}\r\n0\r\n\r\n"
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = tls.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert json.loads(body)["error"]["code"] == "BadParameter"


# ---- concurrency over real HTTPS ---------------------------------------------------------------


class Vault:
    """A Key Vault data-plane client over one HTTPS session (requests), with a timeout."""

    def __init__(self, info: EmulatorInfo, token: str) -> None:
        self.base, self.ca_file = info.vault_url, info.ca_file
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, body: Any = None) -> requests.Response:
        url = path if path.startswith("https://") else f"{self.base}{path}"
        params = None if "api-version=" in url else API
        # verify per request: REQUESTS_CA_BUNDLE would win over a session's verify
        return self.session.request(
            method, url, params=params, json=body, timeout=TIMEOUT, verify=self.ca_file
        )

    def listing(self, path: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        page: dict[str, Any] = self("GET", path).json()
        while True:
            items += page["value"]
            if not page.get("nextLink"):
                return items
            page = self("GET", page["nextLink"]).json()


def version_of(identifier: str) -> str:
    return identifier.rstrip("/").rsplit("/", 1)[1]


def public_key(bundle: Mapping[str, Any]) -> rsa.RSAPublicKey:
    numbers = rsa.RSAPublicNumbers(
        int.from_bytes(unb64u(bundle["key"]["e"]), "big"),
        int.from_bytes(unb64u(bundle["key"]["n"]), "big"),
    )
    return numbers.public_key()


def verify_ps256(key: rsa.RSAPublicKey, signature: str) -> None:
    key.verify(unb64u(signature), DIGEST, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
               Prehashed(hashes.SHA256()))  # fmt: skip


THREADS, ROUNDS = 16, 2


def test_concurrent_mutations_keep_the_vault_consistent(emu: Emulator) -> None:
    assert emu.state is not None
    info = emu.info
    token = vault_token(emu.state)
    setup = Vault(info, token)
    assert (
        setup("POST", "/certificates/rotated/create", {"policy": policy_json()}).status_code == 202
    )
    pfx = pfx_b64(4)
    sign_body = {"alg": "PS256", "value": b64u(DIGEST)}
    sent = Counter[str]()
    lock = threading.Lock()

    def worker(index: int) -> dict[str, Any]:
        vault = Vault(info, token)
        mine: dict[str, Any] = {"keys": {}, "certs": {}, "signatures": [], "rotations": 0}

        def call(operation: str, method: str, path: str, body: Any = None) -> requests.Response:
            with lock:
                sent[operation] += 1
            return vault(method, path, body)

        for round_ in range(ROUNDS):
            created = call("key_create", "POST", "/keys/shared/create", {"kty": "RSA"})
            assert created.status_code == 200, created.text
            key_version = version_of(created.json()["key"]["kid"])
            rotated = call("certificate_create", "POST", "/certificates/rotated/create", {})
            assert rotated.status_code == 202, rotated.text
            mine["rotations"] += 1
            imported = call(
                "certificate_import", "POST", "/certificates/imported/import", {"value": pfx}
            )
            assert imported.status_code == 200, imported.text
            bundle = imported.json()
            cert_version = version_of(bundle["id"])
            for path in ("/keys/shared//sign", f"{urlsplit(bundle['kid']).path}/sign"):
                signed = call("sign", "POST", path, sign_body)
                if signed.status_code == 200:
                    mine["signatures"].append((signed.json()["kid"], signed.json()["value"]))
                else:  # only a version its owner has just disabled
                    assert signed.status_code == 403, signed.text
                    assert signed.json()["error"]["innererror"]["code"] == "KeyDisabled"
            enabled = (index + round_) % 2 == 0
            for operation, path in (
                ("key_update", f"/keys/shared/{key_version}"),
                ("certificate_update", f"/certificates/imported/{cert_version}"),
            ):
                patched = call(operation, "PATCH", path, {"attributes": {"enabled": enabled}})
                assert (
                    patched.status_code == 200
                    and patched.json()["attributes"]["enabled"] is enabled
                )
            mine["keys"][key_version] = enabled
            mine["certs"][cert_version] = (
                enabled,
                version_of(bundle["kid"]),
                version_of(bundle["sid"]),
            )
        return mine

    emu.state.log.clear()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(worker, range(THREADS)))

    view = Vault(info, token)
    # Every key version created is there once; each has its owner's last enabled value.
    keys = {k: v for r in results for k, v in r["keys"].items()}
    listed = [version_of(item["kid"]) for item in view.listing("/keys/shared/versions")]
    assert len(keys) == THREADS * ROUNDS and sorted(listed) == sorted(keys)
    for version, enabled in keys.items():
        assert view("GET", f"/keys/shared/{version}").json()["attributes"]["enabled"] is enabled
    # Rotations: one certificate version per accepted create, each with its own key and secret
    # versions, which exist.
    rotated = view.listing("/certificates/rotated/versions")
    assert len(rotated) == 1 + sum(r["rotations"] for r in results)
    bindings = set()
    for item in rotated:
        bundle = view("GET", urlsplit(item["id"]).path).json()
        key = view("GET", urlsplit(bundle["kid"]).path)
        secret = view("GET", urlsplit(bundle["sid"]).path)
        assert key.status_code == 200 and key.json()["managed"] is True
        assert secret.status_code == 200 and secret.json()["kid"] == bundle["kid"]
        bindings.add((version_of(bundle["kid"]), version_of(bundle["sid"])))
    assert len(bindings) == len(rotated)
    # Imports: enable/disable reached the certificate, key and secret versions together.
    certs = {c: v for r in results for c, v in r["certs"].items()}
    listed_certs = [
        version_of(item["id"]) for item in view.listing("/certificates/imported/versions")
    ]
    assert sorted(listed_certs) == sorted(certs) and len(certs) == THREADS * ROUNDS
    for version, (enabled, key_version, secret_version) in certs.items():
        bundle = view("GET", f"/certificates/imported/{version}").json()
        assert bundle["attributes"]["enabled"] is enabled
        assert (version_of(bundle["kid"]), version_of(bundle["sid"])) == (
            key_version,
            secret_version,
        )
        key = view("GET", f"/keys/imported/{key_version}").json()
        assert key["attributes"]["enabled"] is enabled
        secret = view("GET", f"/secrets/imported/{secret_version}")
        assert secret.status_code == (200 if enabled else 403)
    # Every signature the vault returned verifies with the key version it names.
    signatures = [s for r in results for s in r["signatures"]]
    assert len(signatures) >= THREADS * ROUNDS  # the owners' disables hit only some
    for kid, value in signatures:
        verify_ps256(public_key(view("GET", urlsplit(kid).path).json()), value)
    # Versions are unique across the whole vault; the log saw every request once.
    everything = listed + listed_certs + [version_of(i["id"]) for i in rotated]
    assert len(everything) == len(set(everything))
    logged = Counter(e.operation for e in emu.state.log.entries())
    assert {op: logged[op] for op in sent} == dict(sent)


def test_a_snapshot_never_splits_a_certificate_version_from_its_key() -> None:
    """``Vault.to_dict`` took the keys and the certificates under two acquisitions of the lock:
    a certificate created in between was saved without its key version."""
    state = new_state()
    certificates = state.vault.certificates
    with mock.patch(
        "kvassert.emulator.certstore.rsa.generate_private_key", return_value=rsa_key(2048, 1)
    ):
        certificates.create("c", self_signed_policy())
        original = KeyStore.to_dict
        creator: list[threading.Thread] = []

        def keys_then_a_rotation(self: KeyStore) -> dict[str, Any]:
            snapshot = original(self)
            thread = threading.Thread(target=certificates.create, args=("c", None))
            thread.start()
            thread.join(0.5)  # completes unless the snapshot still holds the vault's lock
            creator.append(thread)
            return snapshot

        with mock.patch.object(KeyStore, "to_dict", keys_then_a_rotation):
            saved = state.to_dict()["vault"]
        creator[0].join(10)
    key_versions = {v["version"] for v in saved["keys"]["c"]}
    for version in saved["certificates"]["c"]["versions"]:
        assert version["key_version"] in key_versions
    assert len(certificates.versions("c")) == 2  # the rotation happened, after the snapshot


def test_saves_land_in_the_order_their_snapshots_were_taken(tmp_path: Path) -> None:
    """A save (the autosave timer) whose snapshot is older must not overwrite a newer one
    written meanwhile (``flush`` at shutdown): nothing acknowledged may go missing."""
    state = new_state()
    real_dumps = json.dumps
    snapshot_taken, newer_saved = threading.Event(), threading.Event()

    def slow_first_dumps(obj: Any, **kwargs: Any) -> str:
        text = real_dumps(obj, **kwargs)
        if threading.current_thread().name == "older-save":
            snapshot_taken.set()
            newer_saved.wait(1.0)  # the newer save goes first unless saves are serialised
        return text

    with mock.patch("kvassert.emulator.state.json.dumps", slow_first_dumps):
        older = threading.Thread(target=state.save, args=(tmp_path,), name="older-save")
        older.start()
        assert snapshot_taken.wait(10)
        state.vault.keys.import_key("acknowledged", rsa_key(2048, 1))
        newer = threading.Thread(target=state.save, args=(tmp_path,))
        newer.start()
        newer.join(0.5)
        newer_saved.set()
        older.join(10)
        newer.join(10)
    assert EmulatorState.load(tmp_path).vault.keys.names() == ["acknowledged"]


# ---- persistence across a restart and kill -9 ---------------------------------------------


def msi_token(info: EmulatorInfo, client_id: str | None = None) -> requests.Response:
    params = {"api-version": "2019-08-01", "resource": VAULT}
    if client_id:
        params["client_id"] = client_id
    return requests.get(
        info.identity_endpoint, params=params, headers={"X-IDENTITY-HEADER": info.identity_header},
        verify=info.ca_file, timeout=TIMEOUT,
    )  # fmt: skip


def app_token(info: EmulatorInfo, client_id: str, secret: str) -> requests.Response:
    return requests.post(
        f"{info.authority}/{info.tenant_id}/oauth2/v2.0/token",
        data={"client_id": client_id, "client_secret": secret, "grant_type": "client_credentials",
              "scope": f"{VAULT}/.default"},
        verify=info.ca_file, timeout=TIMEOUT,
    )  # fmt: skip


def oid(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    return str(claims["oid"])


def snapshot(info: EmulatorInfo, token: str, registered: Mapping[str, Any]) -> dict[str, Any]:
    """Everything a client can see, with the origin (the port changes on restart) cut off."""
    vault = Vault(info, token)

    def strip(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(info.vault_url, ""))

    keys = {}
    for item in vault.listing("/keys"):
        name = version_of(item["kid"])
        keys[name] = [strip(vault("GET", urlsplit(v["kid"]).path).json())
                      for v in vault.listing(f"/keys/{name}/versions")]  # fmt: skip
    certificates, secrets = {}, {}
    for item in vault.listing("/certificates"):
        name = version_of(item["id"])
        certificates[name] = [strip(vault("GET", urlsplit(v["id"]).path).json())
                              for v in vault.listing(f"/certificates/{name}/versions")]  # fmt: skip
        secrets[name] = strip(vault.listing(f"/secrets/{name}/versions"))
    admin = requests.get(f"{info.admin_url}/role-assignments", verify=info.ca_file, timeout=TIMEOUT)
    summary = requests.get(f"{info.admin_url}/state", verify=info.ca_file, timeout=TIMEOUT).json()
    summary.pop("log_entries")
    summary.pop("state_dir")
    return {
        "info": {k: getattr(info, k) for k in ("tenant_id", "principal_id", "identity_header")},
        "keys": keys,
        "certificates": certificates,
        "secrets": secrets,
        "role_assignments": sorted(
            admin.json()["value"], key=lambda a: json.dumps(a, sort_keys=True)
        ),
        "summary": summary,
        "apps": {c: oid(app_token(info, c, s)) for c, s in registered["apps"].items()},
        "identities": {c: oid(msi_token(info, c)) for c in registered["identities"]},
    }


def mutate_concurrently(info: EmulatorInfo, token: str, tag: str) -> dict[str, Any]:
    """Vault and admin mutations from 8 threads; returns what was registered (to check)."""
    vault = Vault(info, token)
    assert (
        vault("POST", "/certificates/kept-cert/create", {"policy": policy_json()}).status_code
        == 202
    )
    admin = requests.Session()
    registered: dict[str, Any] = {"apps": {}, "identities": []}
    tls: dict[str, Any] = {"verify": info.ca_file, "timeout": TIMEOUT}
    pfx = pfx_b64(5)

    def task(index: int) -> None:
        mine = Vault(info, token)
        kind = index % 4
        if kind == 0:
            created = mine("POST", "/keys/kept-key/create", {"kty": "RSA", "tags": {"by": tag}})
            version = version_of(created.json()["key"]["kid"])
            assert mine("PATCH", f"/keys/kept-key/{version}", {"tags": {"n": str(index)}}).ok
        elif kind == 1:
            assert mine("POST", "/certificates/kept-cert/create", {}).status_code == 202
        elif kind == 2:
            imported = mine("POST", "/certificates/kept-import/import", {"value": pfx})
            version = version_of(imported.json()["id"])
            body = {"attributes": {"enabled": index % 8 == 2}, "tags": {"n": str(index)}}
            assert mine("PATCH", f"/certificates/kept-import/{version}", body).ok
        else:
            client_id, secret = str(uuid.uuid4()), f"secret-{index}"
            app = admin.post(
                f"{info.admin_url}/applications",
                **tls,
                json={
                    "client_id": client_id,
                    "secrets": [secret],
                    "vault_certificates": ["kept-cert"],
                },
            )
            principal = app.json()["principal_id"]
            role = (
                {"role": "Key Vault Crypto User"}
                if index % 8 == 3
                else {"data_actions": ["Microsoft.KeyVault/vaults/keys/sign/action"]}
            )
            assert admin.post(
                f"{info.admin_url}/role-assignments",
                **tls,
                json={"principal_id": principal, **role},
            ).ok
            identity = admin.post(f"{info.admin_url}/identities", **tls, json={}).json()
            registered["apps"][client_id] = secret
            registered["identities"].append(identity["client_id"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(task, range(16)))
    return registered


def consistent(state: EmulatorState) -> None:
    """Every certificate version has its key and secret versions (bound to each other)."""
    keys, certificates = state.vault.keys, state.vault.certificates
    for name in certificates.names():
        secrets = {s.version: s for s in certificates.secret_versions(name)}
        for version in certificates.versions(name):
            assert keys.get(name, version.key_version).managed
            secret = secrets[version.secret_version]
            assert (secret.key_version, secret.certificate_version) == (
                version.key_version, version.version
            )  # fmt: skip


def test_everything_survives_a_restart_on_the_state_dir(tmp_path: Path) -> None:
    with EmulatorProcess(state_dir=tmp_path) as first:
        assert first.info is not None
        info = first.info
        token = msi_token(info).json()["access_token"]
        registered = mutate_concurrently(info, token, "first")
        before = snapshot(info, token, registered)
        assert first.stop() == 0  # SIGTERM: a clean shutdown
    saved = EmulatorState.load(tmp_path)
    consistent(saved)
    on_disk = saved.to_dict()
    assert len(before["keys"]["kept-key"]) == 4 and len(before["certificates"]["kept-cert"]) == 5
    assert len(before["apps"]) == 4 and len(before["identities"]) == 4
    with EmulatorProcess(state_dir=tmp_path) as second:
        assert second.info is not None
        after = snapshot(second.info, token, registered)  # the old token is still good
        assert second.stop() == 0
    assert after == before
    assert EmulatorState.load(tmp_path).to_dict() == on_disk


KILL_ROUNDS = 3


def writer(
    info: EmulatorInfo, token: str, index: int, stop: threading.Event, acknowledged: Counter[str]
) -> None:
    """Imports a key (odd ``index``) or a certificate (even), then updates it (every update is a
    save a moment later) until ``stop`` or until the emulator dies. Updates, not new versions:
    each restart loads every key version, about 25 ms each."""
    vault = Vault(info, token)
    kind = "keys" if index % 2 else "certificates"
    name = f"kill-{index}"
    try:
        if kind == "keys":
            ok = vault("PUT", f"/keys/{name}", {"key": jwk(rsa_key(2048, 1))}).ok
        else:
            ok = vault("POST", f"/certificates/{name}/import", {"value": pfx_b64(6)}).ok
        generation = 0
        while ok and not stop.is_set():
            generation += 1
            body = {"tags": {"generation": str(generation)},
                    "attributes": {"enabled": generation % 3 != 0}}  # fmt: skip
            ok = vault("PATCH", f"/{kind}/{name}/", body).ok
            if ok:
                acknowledged[name] += 1
    except requests.RequestException:
        return  # the emulator is gone


def test_kill_9_during_concurrent_writes_leaves_a_loadable_state(tmp_path: Path) -> None:
    for round_ in range(KILL_ROUNDS):
        with EmulatorProcess(state_dir=tmp_path) as process:
            assert process.info is not None and process.process is not None
            info = process.info
            token = msi_token(info).json()["access_token"]
            stop = threading.Event()
            acknowledged = Counter[str]()
            threads = [
                threading.Thread(target=writer, args=(info, token, i, stop, acknowledged))
                for i in range(6)
            ]
            for thread in threads:
                thread.start()
            # Kill only once writes have landed (a loaded machine can take longer than any
            # fixed sleep to get the first one through), then a little later each round.
            deadline = time.monotonic() + TIMEOUT
            while sum(acknowledged.values()) == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1 + 0.2 * round_)
            process.process.send_signal(signal.SIGKILL)  # while writes are in flight
            assert process.process.wait(timeout=10) == -signal.SIGKILL
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT)
        assert sum(acknowledged.values()) > 0
        consistent(EmulatorState.load(tmp_path))  # complete JSON, and a consistent snapshot
    with EmulatorProcess(state_dir=tmp_path) as again:  # and it starts on it
        assert again.info is not None
        token = msi_token(again.info).json()["access_token"]
        assert Vault(again.info, token)("GET", "/keys").status_code == 200


SAVE_LOOP = textwrap.dedent(
    """
    import sys
    from cryptography.hazmat.primitives.asymmetric import rsa
    from kvassert.emulator.state import EmulatorState

    state = EmulatorState()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    padding = {f"pad{i}": "x" * 4000 for i in range(15)}  # 60 kB a key: 0.6 MB a save
    for i in range(10):
        state.vault.keys.import_key(f"k{i}", key, tags={"generation": "0", **padding})
    generation = 0
    while True:
        generation += 1
        for name in state.vault.keys.names():
            state.vault.keys.update(name, tags={"generation": str(generation), **padding})
        state.save(sys.argv[1])
        if generation == 1:
            print("saving", flush=True)
    """
)


def test_kill_9_in_the_middle_of_a_save_leaves_the_previous_or_the_next_state(
    tmp_path: Path,
) -> None:
    """A process that does nothing but save (about 0.6 MB a save) is killed at random moments:
    ``state.json`` is always one whole snapshot, never a torn write."""
    rng = random.Random(8)
    for _ in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(tmp_path)], stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
        assert child.stdout is not None
        assert child.stdout.readline() == "saving\n"
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()
        loaded = EmulatorState.load(tmp_path)
        generations = {k.tags["generation"] for n in loaded.vault.keys.names()
                       for k in loaded.vault.keys.versions(n)}  # fmt: skip
        assert len(loaded.vault.keys.names()) == 10 and len(generations) == 1
        assert (tmp_path / STATE_FILE).stat().st_mode & 0o777 == 0o600
