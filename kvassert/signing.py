"""Signers: something that holds a certificate chain and signs JWS signing input with its key.

The assertion builder depends only on the ``Signer`` protocol, so the local-key signer here and
the Key Vault signer (``keyvault_signer``) are interchangeable. A signer is bound to one JWS
algorithm at construction: PS256 (RSASSA-PSS, SHA-256, MGF1-SHA256, salt 32: RFC 7518 §3.5) or
RS256 (RSASSA-PKCS1-v1_5 with SHA-256: RFC 7518 §3.3).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from kvassert.errors import CredentialUnavailableError, SigningError

SUPPORTED_ALGORITHMS = ("PS256", "RS256")


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2): JWS never carries '=' padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def padding_for(algorithm: str) -> padding.AsymmetricPadding:
    """The RSA padding a JWS algorithm names; PS256's salt equals the digest length (32)."""
    if algorithm == "PS256":
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    if algorithm == "RS256":
        return padding.PKCS1v15()
    raise SigningError(f"unsupported algorithm {algorithm!r}; expected one of PS256, RS256")


@dataclass(frozen=True)
class CertificateChain:
    """DER certificates, leaf first, with the thumbprints Entra matches assertions by."""

    der: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.der:
            raise ValueError("a certificate chain needs at least the leaf certificate")

    @cached_property
    def leaf(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der[0])

    @cached_property
    def x5t(self) -> str:
        """b64url SHA-1 of the leaf DER: the legacy thumbprint header (RS256 mode)."""
        return b64url(hashlib.sha1(self.der[0]).digest())  # noqa: S324 - a thumbprint, not security

    @cached_property
    def x5t_s256(self) -> str:
        """b64url SHA-256 of the leaf DER: the ``x5t#S256`` header Entra prefers."""
        return b64url(hashlib.sha256(self.der[0]).digest())

    @cached_property
    def x5c(self) -> list[str]:
        """RFC 7515 §4.1.6: standard (padded) base64 DER, leaf first."""
        return [base64.b64encode(der).decode("ascii") for der in self.der]

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        key = self.leaf.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise SigningError("the certificate's key is not RSA; Entra needs an RSA key")
        return key

    @property
    def not_before(self) -> dt.datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()


@runtime_checkable
class Signer(Protocol):
    """What the assertion builder needs: the chain, the bound algorithm, and a sign operation.

    ``sign`` receives the JWS signing input (``b64url(header) + "." + b64url(payload)``) and
    returns the raw signature; it raises ``SigningError`` on failure.
    """

    @property
    def chain(self) -> CertificateChain: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, signing_input: bytes) -> bytes: ...


def verify_signature(
    chain: CertificateChain, algorithm: str, signing_input: bytes, signature: bytes
) -> bool:
    """True when ``signature`` is valid for ``signing_input`` under the leaf's public key."""
    try:
        chain.public_key.verify(signature, signing_input, padding_for(algorithm), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class LocalCertificateSigner:
    """Signs with a private key held in this process (``Path`` and ``Base64Encoded`` sources)."""

    chain: CertificateChain
    private_key: rsa.RSAPrivateKey = field(repr=False)
    algorithm: str = "PS256"

    def __post_init__(self) -> None:
        if self.algorithm not in SUPPORTED_ALGORITHMS:
            raise SigningError(
                f"unsupported algorithm {self.algorithm!r}; expected one of PS256, RS256"
            )

    def __repr__(self) -> str:
        return (
            f"LocalCertificateSigner(subject={self.chain.subject!r}, "
            f"x5t#S256={self.chain.x5t_s256!r}, algorithm={self.algorithm!r})"
        )

    def sign(self, signing_input: bytes) -> bytes:
        return self.private_key.sign(signing_input, padding_for(self.algorithm), hashes.SHA256())

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        password: str | None = None,
        algorithm: str = "PS256",
        source: str = "certificate",
        now: dt.datetime | None = None,
    ) -> LocalCertificateSigner:
        """Load PEM (certificates and key in one file) or PFX/PKCS#12 bytes.

        Raises ``CredentialUnavailableError`` naming ``source`` for a wrong password, a missing
        key or certificate, a non-RSA key, a certificate that does not match the key, or a
        certificate outside its validity period.
        """
        if data.lstrip().startswith(b"-----BEGIN"):
            key, certificates = _load_pem(data, password, source)
        else:
            key, certificates = _load_pfx(data, password, source)
        return cls(
            chain=_order_chain(key, certificates, source, now),
            private_key=key,
            algorithm=algorithm,
        )


def _load_pem(
    data: bytes, password: str | None, source: str
) -> tuple[rsa.RSAPrivateKey, list[x509.Certificate]]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except x509.InvalidVersion:
        # Not a ValueError in cryptography: a certificate with a bad version field.
        raise CredentialUnavailableError(
            "the PEM holds a certificate with an invalid X.509 version", source=source
        ) from None
    except ValueError:
        certificates = []
    if not certificates:
        raise CredentialUnavailableError("no PEM certificate found", source=source)
    if b"PRIVATE KEY-----" not in data:
        raise CredentialUnavailableError(
            "no private key found: the PEM must hold the certificate and its private key",
            source=source,
        )
    secret = password.encode() if password else None
    try:
        key = serialization.load_pem_private_key(data, password=secret)
    except TypeError:
        # cryptography raises TypeError when the key is encrypted and no password was given, or
        # a password was given for an unencrypted key.
        problem = "the private key is encrypted" if secret is None else "the key is not encrypted"
        raise CredentialUnavailableError(
            f"{problem}; set or remove CertificatePassword accordingly", source=source
        ) from None
    except ValueError:
        raise CredentialUnavailableError(
            "could not decrypt the private key: wrong CertificatePassword or corrupt key",
            source=source,
        ) from None
    return _require_rsa(key, source), certificates


def _load_pfx(
    data: bytes, password: str | None, source: str
) -> tuple[rsa.RSAPrivateKey, list[x509.Certificate]]:
    secret = password.encode() if password else None
    try:
        key, leaf, extra = pkcs12.load_key_and_certificates(data, secret)
    except (ValueError, x509.InvalidVersion):
        if secret is None:
            # An empty password and no password are different PKCS#12 encodings; try both.
            try:
                key, leaf, extra = pkcs12.load_key_and_certificates(data, b"")
            except (ValueError, x509.InvalidVersion):
                key = None
        else:
            key = None
        if key is None:
            raise CredentialUnavailableError(
                "could not open the PFX: wrong CertificatePassword, or not a PFX/PEM file",
                source=source,
            ) from None
    if key is None:
        raise CredentialUnavailableError("the PFX holds no private key", source=source)
    certificates = ([leaf] if leaf is not None else []) + list(extra)
    if not certificates:
        raise CredentialUnavailableError("the PFX holds no certificate", source=source)
    return _require_rsa(key, source), certificates


def _require_rsa(key: object, source: str) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        kind = type(key).__name__.lstrip("_").replace("PrivateKey", "")
        raise CredentialUnavailableError(
            f"the private key is {kind or 'not RSA'}; Entra certificate credentials need RSA",
            source=source,
        )
    return key


def _order_chain(
    key: rsa.RSAPrivateKey,
    certificates: Sequence[x509.Certificate],
    source: str,
    now: dt.datetime | None,
) -> CertificateChain:
    public = key.public_key().public_numbers()
    leaves = [
        cert
        for cert in certificates
        if isinstance(cert.public_key(), rsa.RSAPublicKey)
        and cert.public_key().public_numbers() == public  # type: ignore[union-attr]
    ]
    if not leaves:
        raise CredentialUnavailableError(
            "no certificate matches the private key (certificate and key are from different pairs)",
            source=source,
        )
    leaf = leaves[0]
    moment = now or dt.datetime.now(dt.timezone.utc)
    if moment > leaf.not_valid_after_utc:
        raise CredentialUnavailableError(
            f"the certificate {leaf.subject.rfc4514_string()} expired on "
            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            source=source,
        )
    if moment < leaf.not_valid_before_utc:
        raise CredentialUnavailableError(
            f"the certificate {leaf.subject.rfc4514_string()} is not valid before "
            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            source=source,
        )
    rest = [cert for cert in certificates if cert is not leaf]
    return CertificateChain(
        der=tuple(cert.public_bytes(serialization.Encoding.DER) for cert in [leaf, *rest])
    )
