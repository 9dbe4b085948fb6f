"""The emulated STS's token crypto: signing keys (JWKS), minting app-only access tokens, and
verifying tokens it minted (for resource servers, and as federated client assertions).

Claim names and shapes follow Entra's access-token claims reference (``access-token-claims-
reference.md``): v1 tokens carry ``appid``/``appidacr`` and an ``https://sts.windows.net/{tid}/``
style issuer, v2 tokens ``azp``/``azpacr`` and ``{authority}/{tid}/v2.0``; app-only tokens have
``idtyp: app`` and ``oid`` = ``sub`` = the service principal's object id.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from kvassert.emulator.assertion_checks import AadstsKind, EntraError, entra_instant

WIF_DOC = "https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
# Federated identity credential refusals: 700211/700212/700213 name the issuer/audience/subject
# with no matching record (Azure/azure-workload-identity#1200, dotnet/maui#31978), answered as
# invalid_client with 401 (microsoft/Agents#202).
FIC_ISSUER = AadstsKind(700211, "invalid_client", 401)
FIC_AUDIENCE = AadstsKind(700212, "invalid_client", 401)
FIC_SUBJECT = AadstsKind(700213, "invalid_client", 401)
FIC_SIGNATURE = AadstsKind(700027, "invalid_client", 401)
FIC_TIME = AadstsKind(700024, "invalid_client", 401)


class InvalidAccessToken(Exception):
    """A bearer token the emulator did not issue, or that is expired, early, or for someone else."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64id(size: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(size)).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """An RSA token-signing key with a self-signed certificate; ``kid`` = ``x5t`` as in Entra."""

    private_key: rsa.RSAPrivateKey = field(repr=False)
    certificate_der: bytes

    @property
    def kid(self) -> str:
        digest = hashlib.sha1(self.certificate_der).digest()  # noqa: S324 - x5t is SHA-1
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvassert-emulator-sts")])
        start = dt.datetime.fromtimestamp(now, dt.timezone.utc) - dt.timedelta(days=1)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=5 * 365))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert.public_bytes(serialization.Encoding.DER))

    def jwk(self) -> dict[str, Any]:
        numbers = self.private_key.public_key().public_numbers()

        def b64(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        x5c = base64.b64encode(self.certificate_der).decode()
        kid = self.kid
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": kid,
            "x5t": kid,
            "n": b64(numbers.n),
            "e": b64(numbers.e),
            "x5c": [x5c],
        }

    def to_dict(self) -> dict[str, str]:
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {"key": pem.decode(), "cert": base64.b64encode(self.certificate_der).decode()}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> SigningKey:
        key = serialization.load_pem_private_key(data["key"].encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("signing key must be RSA")
        return cls(key, base64.b64decode(data["cert"]))


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    issued_at: int
    expires_on: int
    resource: str
    claims: Mapping[str, Any]

    @property
    def expires_in(self) -> int:
        return self.expires_on - self.issued_at - 1  # Entra answers 3599 for a one-hour token


@dataclass(frozen=True)
class TokenRequest:
    """Everything a token says: who (``principal_id``/``client_id``), for what (``audience``),
    from which tenant, in which format (``version``), and how the client proved itself (``acr``:
    "1" secret, "2" certificate or federated credential)."""

    principal_id: str
    client_id: str
    audience: str
    resource: str
    tenant_id: str
    issuer: str
    version: int
    acr: str
    roles: Sequence[str] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def mint(key: SigningKey, request: TokenRequest, *, now: float, lifetime: int) -> IssuedToken:
    issued = int(now)
    claims: dict[str, Any] = {
        "aud": request.audience,
        "iss": request.issuer,
        "iat": issued,
        "nbf": issued,
        "exp": issued + lifetime,
        "aio": b64id(48),
        "idp": request.issuer,
        "idtyp": "app",
        "oid": request.principal_id,
        "rh": f"0.{b64id(40)}.",
        "sub": request.principal_id,
        "tid": request.tenant_id,
        "uti": b64id(16),
        "ver": f"{request.version}.0",
    }
    if request.version == 1:
        claims.update(appid=request.client_id, appidacr=request.acr)
    else:
        claims.update(azp=request.client_id, azpacr=request.acr)
    if request.roles:
        claims["roles"] = list(request.roles)
    claims.update(request.extra)
    headers = {"typ": "JWT", "kid": key.kid, "x5t": key.kid}
    token = jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)
    return IssuedToken(token, issued, issued + lifetime, request.resource, claims)


def verify_signature(token: str, keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Claims of a token signed by one of ``keys`` (times unchecked: callers use the emulator
    clock, PyJWT would read the system clock). Raises ``InvalidAccessToken``."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as exc:
        raise InvalidAccessToken(f"malformed token: {exc}") from None
    key = next((k for k in keys if k.kid == kid), None)
    if key is None:
        raise InvalidAccessToken("token not signed by a key of this emulator")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.private_key.public_key(),
            algorithms=["RS256"],
            options={
                "verify_aud": False,
                "verify_exp": False,
                "verify_nbf": False,
                "verify_iat": False,
                "require": ["exp", "nbf", "iat", "tid", "aud", "iss", "sub"],
            },
        )
    except jwt.PyJWTError as exc:
        raise InvalidAccessToken(f"invalid token: {exc}") from None
    return claims


def check_lifetime(claims: Mapping[str, Any], *, now: float, leeway: float) -> None:
    if now >= claims["exp"] + leeway:
        raise InvalidAccessToken("token expired")
    if now < claims["nbf"] - leeway:
        raise InvalidAccessToken("token not yet valid")


def verify_federated_assertion(
    token: str,
    keys: Sequence[SigningKey],
    *,
    issuers: Collection[str],
    audiences: Collection[str],
    subjects: Collection[str],
    now: float,
    leeway: float,
) -> dict[str, Any]:
    """A token this STS issued, presented as ``client_assertion`` of an app that trusts the
    identity it was issued to (a federated identity credential on a managed identity: issuer is
    this tenant, audience ``api://AzureADTokenExchange``, subject the identity's object id)."""
    try:
        claims = verify_signature(token, keys)
    except InvalidAccessToken as exc:
        raise EntraError(
            FIC_SIGNATURE, f"Client assertion failed signature validation. [{exc.reason}]"
        ) from None
    tail = f"Check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"  # noqa: E501
    if claims["iss"] not in issuers:
        raise EntraError(
            FIC_ISSUER,
            f"No matching federated identity record found for presented assertion issuer "
            f"'{claims['iss']}'. {tail}",
        )
    if claims["aud"] not in audiences:
        raise EntraError(
            FIC_AUDIENCE,
            f"No matching federated identity record found for presented assertion audience "
            f"'{claims['aud']}'. {tail}",
        )
    if str(claims["sub"]).lower() not in subjects:
        raise EntraError(
            FIC_SUBJECT,
            f"No matching federated identity record found for presented assertion subject "
            f"'{claims['sub']}'. {tail}",
        )
    try:
        check_lifetime(claims, now=now, leeway=leeway)
    except InvalidAccessToken:
        raise EntraError(
            FIC_TIME,
            f"Client assertion is not within its valid time range. Current time: "
            f"{entra_instant(now)}, assertion valid from {entra_instant(claims['nbf'])}, expiry "
            f"time of assertion {entra_instant(claims['exp'])}.",
        ) from None
    return claims
