"""Client assertions for Entra ID "certificate credentials", built without I/O of their own.

Header and claims follow Entra's rules (DESIGN section 2): PS256 with ``x5t#S256`` by default,
RS256 with ``x5t`` in fallback mode, ``x5c`` only for subject name/issuer authentication; claims
``aud`` (the exact token endpoint), ``iss`` = ``sub`` = client id, a fresh ``jti``, and integer
``iat`` = ``nbf`` = now and ``exp`` = now + lifetime. PyJWT assembles the compact JWS (RFC 7515
§7.1: compact JSON, unpadded base64url); the signature comes from the ``Signer``, which may be a
local key or Key Vault. The time and the ``jti`` can be passed in so tests are deterministic.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt
from jwt.algorithms import Algorithm

from kvassert.signing import CertificateChain, Signer

DEFAULT_LIFETIME_SECONDS = 600
# Entra recommends 5-10 minutes and refuses long-lived assertions; a lifetime over an hour is a
# configuration mistake, not a choice.
MAX_LIFETIME_SECONDS = 3600


class _SignerAlgorithm(Algorithm):
    """A PyJWT algorithm whose ``sign`` hands the signing input to a ``Signer``.

    Registered only on this module's private ``PyJWS`` instance, so PyJWT's global algorithm
    table is never changed.
    """

    def prepare_key(self, key: Any) -> Signer:
        if not isinstance(key, Signer):
            raise TypeError("the key of a kvassert assertion must be a kvassert Signer")
        return key

    def sign(self, msg: bytes, key: Signer) -> bytes:
        return key.sign(msg)

    def verify(self, msg: bytes, key: Any, sig: bytes) -> bool:
        raise NotImplementedError("kvassert only signs assertions; verify with PyJWT's RSA algs")

    @staticmethod
    def to_jwk(key_obj: Any, as_dict: bool = False) -> Any:
        raise NotImplementedError

    @staticmethod
    def from_jwk(jwk: Any) -> Any:
        raise NotImplementedError


_JWS = jwt.PyJWS(algorithms=[])
for _name in ("PS256", "RS256"):
    _JWS.register_algorithm(_name, _SignerAlgorithm())


def assertion_header(
    chain: CertificateChain, algorithm: str, *, send_x5c: bool = False
) -> dict[str, Any]:
    """The JOSE header: the thumbprint Entra looks the certificate up by, and ``x5c`` on request."""
    header: dict[str, Any] = {"alg": algorithm, "typ": "JWT"}
    if algorithm == "PS256":
        header["x5t#S256"] = chain.x5t_s256
    else:
        header["x5t"] = chain.x5t
    if send_x5c:
        header["x5c"] = list(chain.x5c)
    return header


def assertion_claims(
    *, client_id: str, audience: str, now: int, lifetime: int, jti: str
) -> dict[str, Any]:
    """RFC 7523 §3 claims as Entra wants them; times are integers (NumericDate)."""
    return {
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": jti,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
    }


def build_assertion(
    signer: Signer,
    *,
    client_id: str,
    audience: str,
    send_x5c: bool = False,
    lifetime: int = DEFAULT_LIFETIME_SECONDS,
    now: float | None = None,
    jti: str | None = None,
    extra_claims: Mapping[str, Any] | None = None,
) -> str:
    """A signed compact JWS client assertion.

    ``audience`` must be the exact token endpoint URL the assertion will be posted to. Raises
    ``ValueError`` for an empty client id or audience or a lifetime outside 1..3600 seconds, and
    whatever the signer raises (``SigningError`` and subclasses).
    """
    if not client_id:
        raise ValueError("client_id is required for a client assertion")
    if not audience:
        raise ValueError("audience (the token endpoint URL) is required for a client assertion")
    if not 0 < lifetime <= MAX_LIFETIME_SECONDS:
        raise ValueError(f"assertion lifetime must be 1..{MAX_LIFETIME_SECONDS} s, got {lifetime}")
    issued_at = int(time.time() if now is None else now)
    claims = assertion_claims(
        client_id=client_id,
        audience=audience,
        now=issued_at,
        lifetime=lifetime,
        jti=jti or str(uuid.uuid4()),
    )
    if extra_claims:
        claims = {**claims, **extra_claims}
    payload = json.dumps(claims, separators=(",", ":")).encode()
    header = assertion_header(signer.chain, signer.algorithm, send_x5c=send_x5c)
    # PyJWT types its key parameter as a concrete key; our algorithm takes a Signer instead.
    key: Any = signer
    return _JWS.encode(payload, key, algorithm=signer.algorithm, headers=header)


def decode_unverified(assertion: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of an assertion without checking it: for reports, never for trust."""
    header = jwt.get_unverified_header(assertion)
    claims = jwt.decode(assertion, options={"verify_signature": False})
    return header, claims
