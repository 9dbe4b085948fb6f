"""kvassert and the peers, each set up the way users write it today.

- ``kvassert``: ``kvassert.from_appsettings(path)`` with the ``KeyVault`` source (the app's
  managed identity signs in the vault), defaults otherwise.
- ``msal-cert``: msal ``ConfidentialClientApplication`` with a local PEM key and its thumbprint.
- ``msal-kv``: msal with ``{"client_assertion": callable}``; the callable is the hand-written
  code users write: a JWT built by hand, signed with ``CryptographyClient.sign``.
- ``azid-cert``: azure-identity ``CertificateCredential`` with the local PEM.
- ``azid-kv``: azure-identity ``ClientAssertionCredential`` with the same hand-written callable.

Only the standard library is imported at module level: worker processes import this module to
measure one library at a time (peak RSS).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KVASSERT = "kvassert"
PEERS = ("msal-cert", "msal-kv", "azid-cert", "azid-kv")
CONTENDERS = (KVASSERT, *PEERS)
LABELS = {
    "kvassert": "kvassert",
    "msal-cert": "msal, local cert",
    "msal-kv": "msal + Key Vault callable",
    "azid-cert": "azure-identity CertificateCredential",
    "azid-kv": "azure-identity ClientAssertionCredential + Key Vault",
}
# Which contenders sign in Key Vault (the others sign with a local key: no vault signs at all).
SIGNS_IN_VAULT = {
    "kvassert": True,
    "msal-cert": False,
    "msal-kv": True,
    "azid-cert": False,
    "azid-kv": True,
}


@dataclass(frozen=True)
class Setup:
    """Everything a contender needs (JSON-serialisable, for worker processes)."""

    authority: str
    tenant_id: str
    client_id: str
    vault_url: str
    ca_file: str
    certificate_name: str
    key_id: str
    pem_path: str
    thumbprint: str
    settings_path: str
    scopes: list[str] = field(default_factory=list)
    identity_endpoint: str = ""
    identity_header: str = ""

    @property
    def token_endpoint(self) -> str:
        return f"{self.authority}/{self.tenant_id}/oauth2/v2.0/token"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: str | Path) -> Setup:
        return cls(**json.loads(Path(path).read_text()))


class TokenError(RuntimeError):
    """A contender answered without a token (msal returns error dicts instead of raising)."""


@dataclass
class Contender:
    """``caller(scope)`` is the library's own call with its argument bound (what the timed
    loops run); ``check(result)`` turns its result into the token string or raises."""

    name: str
    caller: Callable[[str], Callable[[], Any]]
    check: Callable[[Any], str]
    close: Callable[[], None]

    def token(self, scope: str) -> str:
        return self.check(self.caller(scope)())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def keyvault_assertion(setup: Setup) -> tuple[Callable[[], str], Callable[[], None]]:
    """The hand-written code: read the certificate once for its thumbprint and key, then on each
    call build the JWT, hash it and have Key Vault sign the digest (RS256 with ``x5t``)."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

    vault_credential = ManagedIdentityCredential(connection_verify=setup.ca_file)
    certificates = CertificateClient(
        setup.vault_url,
        vault_credential,
        verify_challenge_resource=False,
        connection_verify=setup.ca_file,
    )
    certificate = certificates.get_certificate(setup.certificate_name)
    thumbprint = certificate.properties.x509_thumbprint if certificate.properties else None
    assert thumbprint is not None and certificate.key_id is not None
    x5t = b64url(thumbprint)
    crypto = CryptographyClient(
        certificate.key_id,
        vault_credential,
        verify_challenge_resource=False,
        connection_verify=setup.ca_file,
    )

    def get_assertion() -> str:
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5t": x5t}
        claims = {
            "aud": setup.token_endpoint,
            "iss": setup.client_id,
            "sub": setup.client_id,
            "jti": str(uuid.uuid4()),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        }
        signing_input = (
            b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
        )
        digest = hashlib.sha256(signing_input.encode()).digest()
        signature = crypto.sign(SignatureAlgorithm.rs256, digest).signature
        return signing_input + "." + b64url(signature)

    def close() -> None:
        crypto.close()
        certificates.close()
        vault_credential.close()

    return get_assertion, close


def _msal_check(result: Any) -> str:
    if not isinstance(result, dict) or "access_token" not in result:
        raise TokenError(f"msal answered without a token: {result!r}"[:500])
    return str(result["access_token"])


def _azure_check(result: Any) -> str:
    return str(result.token)


def _msal(setup: Setup, credential: dict[str, Any], close: Callable[[], None]) -> Contender:
    import msal

    app = msal.ConfidentialClientApplication(
        setup.client_id,
        client_credential=credential,
        authority=f"{setup.authority}/{setup.tenant_id}",
        instance_discovery=False,
        verify=setup.ca_file,
    )

    def caller(scope: str) -> Callable[[], Any]:
        return functools.partial(app.acquire_token_for_client, [scope])

    def close_all() -> None:
        close()
        http = getattr(app, "http_client", None)
        if http is not None and hasattr(http, "close"):
            http.close()

    return Contender("", caller, _msal_check, close_all)


def _azure(credential: Any, close: Callable[[], None] | None = None) -> Contender:
    def caller(scope: str) -> Callable[[], Any]:
        return functools.partial(credential.get_token, scope)

    def close_all() -> None:
        credential.close()
        if close is not None:
            close()

    return Contender("", caller, _azure_check, close_all)


def build(name: str, setup: Setup) -> Contender:
    """A fresh credential object for ``name`` (one of ``CONTENDERS``)."""
    if name == "kvassert":
        import kvassert

        contender = _azure(kvassert.from_appsettings(setup.settings_path))
    elif name == "msal-cert":
        pem = Path(setup.pem_path).read_text()
        contender = _msal(setup, {"private_key": pem, "thumbprint": setup.thumbprint}, lambda: None)
    elif name == "msal-kv":
        get_assertion, close = keyvault_assertion(setup)
        contender = _msal(setup, {"client_assertion": get_assertion}, close)
    elif name == "azid-cert":
        from azure.identity import CertificateCredential

        contender = _azure(
            CertificateCredential(
                setup.tenant_id,
                setup.client_id,
                certificate_data=Path(setup.pem_path).read_bytes(),
                authority=setup.authority,
                disable_instance_discovery=True,
                connection_verify=setup.ca_file,
            )
        )
    elif name == "azid-kv":
        from azure.identity import ClientAssertionCredential

        get_assertion, close = keyvault_assertion(setup)
        contender = _azure(
            ClientAssertionCredential(
                setup.tenant_id,
                setup.client_id,
                get_assertion,
                authority=setup.authority,
                disable_instance_discovery=True,
                connection_verify=setup.ca_file,
            ),
            close,
        )
    else:
        raise ValueError(f"unknown contender {name!r}; one of {', '.join(CONTENDERS)}")
    contender.name = name
    return contender
