"""Test certificates made on the fly: self-signed or CA-issued RSA/EC leaves, as PEM or PFX."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertBundle:
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    issuers: tuple[x509.Certificate, ...] = ()

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    def pem(self, password: str | None = None, *, with_chain: bool = True) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        key = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        certs = [self.cert, *(self.issuers if with_chain else ())]
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs) + key

    def pfx(self, password: str | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            b"test", self.key, self.cert, list(self.issuers) or None, encryption
        )


@lru_cache(maxsize=8)
def rsa_key(bits: int = 2048, slot: int = 0) -> rsa.RSAPrivateKey:
    """RSA keygen is slow on a 2-core machine: tests share keys by (size, slot)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def make_cert(
    *,
    cn: str = "kvassert-test",
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    issuer: CertBundle | None = None,
    not_before: dt.datetime | None = None,
    days: int = 30,
    ca: bool = False,
) -> CertBundle:
    key = key or rsa_key()
    now = dt.datetime.now(dt.timezone.utc)
    start = not_before or now - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signing_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(signing_key, hashes.SHA256())
    chain = (issuer.cert, *issuer.issuers) if issuer else ()
    return CertBundle(key=key, cert=cert, issuers=chain)
