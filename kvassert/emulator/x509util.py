"""X.509 material for the emulator: certificate policies, self-signed issue, PFX/PEM import,
certificate-backed secret values, and the CA and server certificate the emulator serves TLS with.

Everything here is pure (no state, no HTTP). Parse failures raise ``ValueError`` with a message
fit for a service error; the vault turns them into ``BadParameter``.
"""

from __future__ import annotations

import base64
import calendar
import datetime as dt
import hashlib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
UPN_OID = ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")
KEY_USAGES = (
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
)
# Key Vault's defaults for a self-signed policy: server and client authentication EKUs,
# digitalSignature + keyEncipherment, one year, AutoRenew at 80 % of the lifetime.
DEFAULT_EKUS = (
    ExtendedKeyUsageOID.SERVER_AUTH.dotted_string,
    ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,
)
DEFAULT_KEY_USAGE = ("digitalSignature", "keyEncipherment")
_RDN_SPLIT = re.compile(r"(?<!\\)[,;]")
_PEM_KEY = re.compile(
    rb"-----BEGIN (?:RSA |ENCRYPTED |EC )?PRIVATE KEY-----.+?-----END [A-Z ]*-----", re.S
)


@dataclass(frozen=True)
class LifetimeAction:
    trigger: str  # "lifetime_percentage" or "days_before_expiry"
    value: int
    action: str  # "AutoRenew" or "EmailContacts"


@dataclass(frozen=True)
class CertificatePolicy:
    """A certificate policy with Key Vault's defaults; ``validated()`` checks it."""

    subject: str = "CN=DefaultPolicy"
    dns_names: tuple[str, ...] = ()
    emails: tuple[str, ...] = ()
    upns: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    ekus: tuple[str, ...] = DEFAULT_EKUS
    key_usage: tuple[str, ...] = DEFAULT_KEY_USAGE
    validity_months: int = 12
    issuer: str = "Self"
    certificate_type: str | None = None
    certificate_transparency: bool | None = None
    exportable: bool = True
    kty: str = "RSA"
    key_size: int = 2048
    reuse_key: bool = False
    content_type: str = PKCS12
    lifetime_actions: tuple[LifetimeAction, ...] = (
        LifetimeAction("lifetime_percentage", 80, "AutoRenew"),
    )
    enabled: bool = True
    created: int = 0
    updated: int = 0

    def validated(self) -> CertificatePolicy:
        """Itself, or ``ValueError`` naming the first invalid field."""
        if self.kty not in ("RSA", "RSA-HSM"):
            raise ValueError(
                f"Key type {self.kty!r} is not supported by the emulator: use RSA or RSA-HSM."
            )
        if self.key_size not in (2048, 3072, 4096):
            raise ValueError(f"Invalid key size {self.key_size}: expected 2048, 3072 or 4096.")
        if self.kty == "RSA-HSM" and self.exportable:
            raise ValueError("Exportable keys are not supported for key type RSA-HSM.")
        if self.content_type not in (PKCS12, PEM):
            raise ValueError(
                f"Invalid content type {self.content_type!r}: expected {PKCS12} or {PEM}."
            )
        if not 1 <= self.validity_months <= 1200:
            raise ValueError(f"Invalid validity_months {self.validity_months}: expected 1-1200.")
        unknown = sorted(set(self.key_usage) - set(KEY_USAGES))
        if unknown:
            raise ValueError(f"Invalid key usage(s): {', '.join(unknown)}.")
        for eku in self.ekus:
            _oid(eku)
        parse_subject(self.subject)
        for ip in self.ip_addresses:
            _ip(ip)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CertificatePolicy:
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if f.name == "lifetime_actions":
                value = tuple(LifetimeAction(**a) for a in value)
            elif isinstance(value, list):
                value = tuple(value)
            values[f.name] = value
        return cls(**values)


def _oid(dotted: str) -> ObjectIdentifier:
    try:
        return ObjectIdentifier(dotted)
    except ValueError:
        raise ValueError(f"Invalid extended key usage OID {dotted[:64]!r}.") from None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"Invalid IP address {text[:64]!r} in subject alternative names."
        ) from None


def parse_subject(subject: str) -> x509.Name:
    """A .NET-style distinguished name (``CN=app, O=Contoso``) as an ``x509.Name``."""
    parts = [p.strip() for p in _RDN_SPLIT.split(subject) if p.strip()]
    try:
        name = x509.Name.from_rfc4514_string(
            ",".join(parts),
            {"E": NameOID.EMAIL_ADDRESS, "S": NameOID.STATE_OR_PROVINCE_NAME},
        )
    except ValueError:
        raise ValueError(
            f"Invalid subject {subject[:200]!r}: expected e.g. 'CN=name, O=org'."
        ) from None
    if not parts or len(name) == 0:
        raise ValueError(f"Invalid subject {subject[:200]!r}: expected e.g. 'CN=name, O=org'.")
    return name


def _add_months(moment: dt.datetime, months: int) -> dt.datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def _san(policy: CertificatePolicy) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in policy.dns_names]
    names += [x509.RFC822Name(e) for e in policy.emails]
    names += [x509.UniformResourceIdentifier(u) for u in policy.uris]
    names += [x509.IPAddress(_ip(i)) for i in policy.ip_addresses]
    names += [x509.OtherName(UPN_OID, _der_utf8(u)) for u in policy.upns]
    return names


def _der_utf8(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 127:
        raise ValueError("A UPN longer than 127 bytes is not supported by the emulator.")
    return bytes([0x0C, len(raw)]) + raw


def _key_usage(usages: Sequence[str]) -> x509.KeyUsage:
    flags = {name: name in usages for name in KEY_USAGES}
    return x509.KeyUsage(
        digital_signature=flags["digitalSignature"],
        content_commitment=flags["nonRepudiation"],
        key_encipherment=flags["keyEncipherment"],
        data_encipherment=flags["dataEncipherment"],
        key_agreement=flags["keyAgreement"],
        key_cert_sign=flags["keyCertSign"],
        crl_sign=flags["cRLSign"],
        encipher_only=flags["encipherOnly"] and flags["keyAgreement"],
        decipher_only=flags["decipherOnly"] and flags["keyAgreement"],
    )


def issue_self_signed(
    private_key: rsa.RSAPrivateKey, policy: CertificatePolicy, now: float
) -> bytes:
    """A self-signed certificate (DER) with the policy's subject, SANs, EKUs, key usage and
    validity, starting at ``now`` (the emulator's clock)."""
    name = parse_subject(policy.subject)
    start = dt.datetime.fromtimestamp(int(now), dt.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(_add_months(start, policy.validity_months))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(private_key.public_key()), critical=False
        )
    )
    if policy.key_usage:
        builder = builder.add_extension(_key_usage(policy.key_usage), critical=True)
    if policy.ekus:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([_oid(e) for e in policy.ekus]), critical=False
        )
    san = _san(policy)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(private_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def csr(private_key: rsa.RSAPrivateKey, policy: CertificatePolicy) -> bytes:
    """The certificate signing request (DER) a create operation reports."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(parse_subject(policy.subject))
    san = _san(policy)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(private_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def load_material(
    material: bytes, password: str | None
) -> tuple[rsa.RSAPrivateKey, bytes, tuple[bytes, ...], bool]:
    """(private key, leaf DER, chain DERs, is PEM) from PFX or PEM bytes.

    Raises ``ValueError`` when the material is unreadable, holds no RSA private key, or no
    certificate matches the key."""
    secret = password.encode() if password else None
    is_pem = material.lstrip().startswith(b"-----BEGIN")
    try:
        if is_pem:
            certs = x509.load_pem_x509_certificates(material)
            match = _PEM_KEY.search(material)
            if match is None:
                raise ValueError("The PEM content holds no private key.")
            key: Any = serialization.load_pem_private_key(match.group(0), secret)
        else:
            if secret is not None and b"\x00" in secret:
                # cryptography's PKCS#12 loader panics (PanicException, not an Exception) on a
                # password with a NUL; PKCS#12 passwords are NUL-terminated, so none has one.
                raise ValueError("the password holds a NUL character")
            key, leaf, extra = pkcs12.load_key_and_certificates(material, secret)
            certs = ([leaf] if leaf is not None else []) + list(extra)
    except (ValueError, TypeError) as exc:
        kind = "PEM" if is_pem else "PFX"
        raise ValueError(
            f"The specified {kind} content cannot be read (wrong password or malformed): {exc}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(
            "The certificate must hold an RSA private key (the emulator supports RSA only)."
        )
    public = key.public_key().public_numbers()
    leaves = [c for c in certs if _public_numbers(c) == public]
    if not leaves:
        raise ValueError("No certificate in the content matches its private key.")
    der = leaves[0].public_bytes(serialization.Encoding.DER)
    chain = tuple(c.public_bytes(serialization.Encoding.DER) for c in certs if c is not leaves[0])
    return key, der, chain, is_pem


def _public_numbers(cert: x509.Certificate) -> rsa.RSAPublicNumbers | None:
    public = cert.public_key()
    return public.public_numbers() if isinstance(public, rsa.RSAPublicKey) else None


def policy_from_certificate(
    base: CertificatePolicy, der: bytes, key_size: int
) -> CertificatePolicy:
    """The policy an imported certificate gets: the caller's key and secret properties, the
    certificate's own X.509 properties, issuer ``Unknown``."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = x509.SubjectAlternativeName([])
    try:
        ekus = tuple(
            o.dotted_string
            for o in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        )
    except x509.ExtensionNotFound:
        ekus = ()
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        key_usage = tuple(name for name in KEY_USAGES if _has_usage(usage, name))
    except x509.ExtensionNotFound:
        key_usage = ()
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    months = max(1, round((end - start).days / 30.44))
    return CertificatePolicy(
        subject=cert.subject.rfc4514_string(),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        emails=tuple(san.get_values_for_type(x509.RFC822Name)),
        uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        ip_addresses=tuple(str(i) for i in san.get_values_for_type(x509.IPAddress)),
        ekus=ekus,
        key_usage=key_usage,
        validity_months=min(months, 1200),
        issuer="Unknown",
        exportable=base.exportable,
        kty=base.kty,
        key_size=key_size,
        reuse_key=base.reuse_key,
        content_type=base.content_type,
        lifetime_actions=(LifetimeAction("lifetime_percentage", 80, "EmailContacts"),),
    )


def _has_usage(usage: x509.KeyUsage, name: str) -> bool:
    attribute = {
        "digitalSignature": "digital_signature",
        "nonRepudiation": "content_commitment",
        "keyEncipherment": "key_encipherment",
        "dataEncipherment": "data_encipherment",
        "keyAgreement": "key_agreement",
        "keyCertSign": "key_cert_sign",
        "cRLSign": "crl_sign",
    }.get(name)
    return bool(attribute and getattr(usage, attribute))


def validity(der: bytes) -> tuple[int, int]:
    cert = x509.load_der_x509_certificate(der)
    return int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp())


def sha1(der: bytes) -> bytes:
    return hashlib.sha1(der).digest()  # noqa: S324 - x5t is defined as SHA-1 (RFC 7515 4.1.7)


def secret_value(
    content_type: str, key: rsa.RSAPrivateKey | None, der: bytes, chain: Sequence[bytes]
) -> str:
    """The certificate-backed secret's value: base64 PFX or PEM text; ``key`` None leaves the
    private key out (non-exportable policy)."""
    certs = [x509.load_der_x509_certificate(c) for c in (der, *chain)]
    if content_type == PEM:
        parts = []
        if key is not None:
            parts.append(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
        parts += [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        return b"".join(parts).decode()
    pfx = pkcs12.serialize_key_and_certificates(
        None, key, certs[0], certs[1:] or None, serialization.NoEncryption()
    )
    return base64.b64encode(pfx).decode()


# ---- TLS material for the emulator's own HTTPS endpoint -------------------------------------


def make_ca(now: dt.datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A CA for the emulator's server certificate (10 years)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvassert emulator CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_certificate(
    ca_key: rsa.RSAPrivateKey, ca_cert: x509.Certificate, now: dt.datetime
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """A server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` issued by the CA."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert
