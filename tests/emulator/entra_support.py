"""Helpers for the Entra/identity emulator tests: a directory with a shared signing key, a
hand-rolled JWS builder (so tests can get padding, salt and claims wrong on purpose), and a
werkzeug test client on the emulator's WSGI app (no server, no TLS)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from unittest import mock

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from werkzeug.test import Client

from kvassert.emulator.clock import Clock
from kvassert.emulator.directory import Directory
from kvassert.emulator.sts_tokens import SigningKey
from tests.certs import CertBundle

BASE = "https://127.0.0.1:8443"


@lru_cache(maxsize=1)
def _shared_key() -> SigningKey:
    return SigningKey.generate(Clock().now())


def make_directory(clock: Clock | None = None, **kwargs: Any) -> Directory:
    """A Directory whose signing key is shared across tests (RSA keygen is slow)."""
    with mock.patch.object(SigningKey, "generate", return_value=_shared_key()):
        return Directory(clock or Clock(), **kwargs)


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64u(json.dumps(value, separators=(",", ":")).encode())


def sign(signing_input: bytes, key: rsa.RSAPrivateKey, *, scheme: str, salt: int = 32) -> bytes:
    pad: padding.AsymmetricPadding = (
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)
        if scheme == "pss"
        else padding.PKCS1v15()
    )
    return key.sign(signing_input, pad, hashes.SHA256())


def assertion(
    bundle: CertBundle,
    *,
    client_id: str,
    aud: str,
    now: float,
    alg: str = "PS256",
    thumbprint: str = "x5t#S256",
    lifetime: float = 600,
    header: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    drop: Iterable[str] = (),
    scheme: str | None = None,
    salt: int = 32,
) -> str:
    """A client assertion as kvassert builds it, with every part overridable."""
    der = bundle.der
    import hashlib

    head: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if thumbprint == "x5t#S256":
        head["x5t#S256"] = b64u(hashlib.sha256(der).digest())
    elif thumbprint == "x5t":
        head["x5t"] = b64u(hashlib.sha1(der).digest())
    head.update(header or {})
    body: dict[str, Any] = {
        "aud": aud,
        "iss": client_id,
        "sub": client_id,
        "jti": "6f1f9f0e-2a0e-4b8e-9d43-0a8c1f1c2b3d",
        "iat": int(now),
        "nbf": int(now),
        "exp": int(now + lifetime),
    }
    body.update(claims or {})
    for name in drop:
        head.pop(name, None)
        body.pop(name, None)
    signing_input = f"{segment(head)}.{segment(body)}".encode()
    key = bundle.key
    assert isinstance(key, rsa.RSAPrivateKey)
    chosen = scheme or ("pss" if alg == "PS256" else "pkcs1")
    return f"{signing_input.decode()}.{b64u(sign(signing_input, key, scheme=chosen, salt=salt))}"


def v2_endpoint(tenant: str, base: str = BASE) -> str:
    return f"{base}/{tenant}/oauth2/v2.0/token"


def v1_endpoint(tenant: str, base: str = BASE) -> str:
    return f"{base}/{tenant}/oauth2/token"


def http_client(directory: Directory, clock: Clock) -> Client:
    """werkzeug's test client on the emulator's real WSGI app (all services mounted), with
    ``directory`` as its directory and ``BASE`` as its origin."""
    from kvassert.emulator.app import EmulatorApp
    from kvassert.emulator.state import EmulatorState

    with mock.patch.object(SigningKey, "generate", return_value=_shared_key()):
        state = EmulatorState(clock=clock, tenant_id=directory.tenant_id)
    state.directory = directory
    return Client(EmulatorApp(state, base_url=BASE))
