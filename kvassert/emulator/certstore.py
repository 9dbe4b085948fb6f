"""Key Vault certificates and their secrets with no HTTP: policy, versions, the pending operation
of a create, self-signed issue, PFX/PEM import, enable/disable, certificate-backed secrets.

As in the service, each certificate version is bound to its own key version (a managed key of
the same name: the bundle's ``kid``) and its own secret version (``sid``).
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from kvassert.emulator import x509util
from kvassert.emulator.keystore import (
    DEFAULT_KEY_OPS,
    HELP,
    RSA_KEY_SIZES,
    Attributes,
    BadParameter,
    CertificateNotFound,
    Forbidden,
    KeyStore,
    SecretNotFound,
    check_name,
    latest,
    new_version,
)
from kvassert.emulator.x509util import PEM, PKCS12, CertificatePolicy

# Certificate key usage -> the backing key's key_ops (a policy without key usage allows all).
# The service enforces them: Azure/azure-sdk-for-net#11518 shows a certificate key refusing
# decrypt with 403 KeyOperationForbidden.
_USAGE_OPS = {
    "digitalSignature": ("sign", "verify"),
    "nonRepudiation": ("sign", "verify"),
    "keyCertSign": ("sign", "verify"),
    "cRLSign": ("sign", "verify"),
    "keyEncipherment": ("wrapKey", "unwrapKey"),
    "dataEncipherment": ("encrypt", "decrypt"),
}


def key_ops_for(key_usage: Sequence[str]) -> tuple[str, ...]:
    if not key_usage:
        return DEFAULT_KEY_OPS
    ops = {op for usage in key_usage for op in _USAGE_OPS.get(usage, ())}
    return tuple(op for op in DEFAULT_KEY_OPS if op in ops)


@dataclass
class CertificateVersion:
    name: str
    version: str
    der: bytes
    chain: tuple[bytes, ...]
    key_version: str
    secret_version: str
    attributes: Attributes
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class SecretVersion:
    """A certificate-backed secret version; its value is rendered from the key and certificate."""

    name: str
    version: str
    content_type: str
    key_version: str
    certificate_version: str
    attributes: Attributes


@dataclass
class CertificateOperation:
    """A create's pending operation: ``inProgress`` in the 202, ``completed`` once polled."""

    request_id: str
    csr: bytes
    target_version: str
    issuer: str
    status: str = "inProgress"


@dataclass
class Certificate:
    name: str
    policy: CertificatePolicy
    versions: dict[str, CertificateVersion] = field(default_factory=dict)
    operation: CertificateOperation | None = None


class CertificateStore:
    """Every certificate (and certificate-backed secret) of one vault. Thread-safe."""

    def __init__(self, keys: KeyStore, lock: threading.RLock | None = None) -> None:
        self.keys = keys
        self.clock = keys.clock
        self._lock = lock or threading.RLock()
        self._certs: dict[str, Certificate] = {}
        self._secrets: dict[str, dict[str, SecretVersion]] = {}

    def _now(self) -> int:
        return int(self.clock.now())

    def _policy(self, policy: CertificatePolicy) -> CertificatePolicy:
        try:
            return replace(policy.validated(), updated=self._now())
        except ValueError as exc:
            raise BadParameter(str(exc)) from None

    def create(
        self,
        name: str,
        policy: CertificatePolicy | None,
        *,
        enabled: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> CertificateOperation:
        """Issue a new self-signed version now and return its pending operation (``inProgress``).

        Without ``policy`` the current one is used (rotation); ``reuse_key`` keeps the key
        material. Raises ``BadParameter`` for an invalid policy, an issuer other than ``Self``,
        or a first version without a policy."""
        check_name(name)
        with self._lock:
            existing = self._certs.get(name)
        if policy is None:
            if existing is None:
                raise BadParameter("The certificate policy is required for a new certificate.")
            policy = existing.policy
        policy = self._policy(policy)
        if policy.issuer != "Self":
            raise BadParameter(
                f"Issuer {policy.issuer[:40]!r} is not supported by the emulator: use 'Self'."
            )
        if policy.reuse_key and existing is not None and existing.versions:
            current = latest(existing.versions, "")
            private_key = self.keys.get(name, current.key_version).private_key
        else:
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=policy.key_size)
        try:
            der = x509util.issue_self_signed(private_key, policy, self.clock.now())
            csr = x509util.csr(private_key, policy)
        except ValueError as exc:
            raise BadParameter(str(exc)) from None
        version = self._add_version(name, policy, private_key, der, (), enabled, tags)
        operation = CertificateOperation(new_version(), csr, version.version, policy.issuer)
        with self._lock:
            self._certs[name].operation = operation
        return replace(operation)

    def operation(self, name: str) -> CertificateOperation:
        """The pending operation; reading it completes it (the SDK poller needs the 202 itself
        to say ``inProgress``; the first poll may then say ``completed``)."""
        certificate = self._get(name)
        with self._lock:
            if certificate.operation is None:
                raise CertificateNotFound(f"Pending certificate not found: {name}")
            certificate.operation.status = "completed"
            return replace(certificate.operation)

    def import_certificate(
        self,
        name: str,
        material: bytes,
        *,
        password: str | None = None,
        policy: CertificatePolicy | None = None,
        enabled: bool = True,
        tags: Mapping[str, str] | None = None,
    ) -> CertificateVersion:
        """A new version from PFX or PEM bytes that hold the private key.

        Raises ``BadParameter`` when the material cannot be read (wrong password included), has
        no RSA private key, or no certificate in it matches the key."""
        check_name(name)
        try:
            private_key, der, chain, is_pem = x509util.load_material(material, password)
        except ValueError as exc:
            raise BadParameter(str(exc)) from None
        if private_key.key_size not in RSA_KEY_SIZES:
            raise BadParameter(
                f"Invalid key size {private_key.key_size}: expected one of {RSA_KEY_SIZES}."
            )
        base = policy or CertificatePolicy(content_type=PEM if is_pem else PKCS12)
        imported = self._policy(x509util.policy_from_certificate(base, der, private_key.key_size))
        with self._lock:
            existing = self._certs.get(name)
            if existing is not None:
                existing.operation = None
        return self._add_version(name, imported, private_key, der, chain, enabled, tags)

    def _add_version(
        self,
        name: str,
        policy: CertificatePolicy,
        private_key: rsa.RSAPrivateKey,
        der: bytes,
        chain: tuple[bytes, ...],
        enabled: bool,
        tags: Mapping[str, str] | None,
    ) -> CertificateVersion:
        nbf, exp = x509util.validity(der)
        attributes = self.keys.attributes(enabled, nbf, exp)
        with self._lock:
            key = self.keys.add(
                name, private_key, policy.kty, key_ops_for(policy.key_usage),
                replace(attributes), None, managed=True,
            )  # fmt: skip
            version = CertificateVersion(
                name, new_version(), der, chain, key.version, new_version(),
                replace(attributes), dict(tags or {}),
            )  # fmt: skip
            secret = SecretVersion(
                name, version.secret_version, policy.content_type, key.version,
                version.version, replace(attributes),
            )  # fmt: skip
            certificate = self._certs.setdefault(name, Certificate(name, policy))
            certificate.policy = policy
            certificate.versions[version.version] = version
            self._secrets.setdefault(name, {})[secret.version] = secret
        return version

    def _get(self, name: str) -> Certificate:
        with self._lock:
            certificate = self._certs.get(name)
        if certificate is None:
            raise CertificateNotFound(
                f"A certificate with (name/id) {name} was not found in this key vault. If you "
                "recently deleted this certificate you may be able to recover it using the "
                f"correct recovery command. {HELP}"
            )
        return certificate

    def get(self, name: str, version: str = "") -> CertificateVersion:
        """The version, or the latest for ``""``. Raises ``CertificateNotFound``."""
        certificate = self._get(name)
        with self._lock:
            found: CertificateVersion | None = latest(certificate.versions, version)
        if found is None:
            raise CertificateNotFound(
                f"A certificate with (name/id) {name}/{version} was not found in this key vault. "
                f"{HELP}"
            )
        return found

    def policy(self, name: str) -> CertificatePolicy:
        return self._get(name).policy

    def versions(self, name: str) -> list[CertificateVersion]:
        """Every version, oldest first. Raises ``CertificateNotFound``."""
        certificate = self._get(name)
        with self._lock:
            return list(certificate.versions.values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._certs)

    def update(
        self,
        name: str,
        version: str = "",
        *,
        enabled: bool | None = None,
        tags: Mapping[str, str] | None = None,
        policy: CertificatePolicy | None = None,
    ) -> CertificateVersion:
        """Update a version; ``enabled`` also applies to its key and secret versions, as in the
        service (a disabled certificate's secret answers 403 SecretDisabled)."""
        found = self.get(name, version)
        new_policy = None if policy is None else self._policy(policy)
        with self._lock:
            now = self._now()
            if enabled is not None:
                key = self.keys.get(name, found.key_version)
                secret = self._secrets[name][found.secret_version]
                for attrs in (found.attributes, key.attributes, secret.attributes):
                    attrs.enabled, attrs.updated = enabled, now
            if tags is not None:
                found.tags = dict(tags)
            if new_policy is not None:
                self._certs[name].policy = new_policy
            found.attributes.updated = now
        return found

    def _secret_not_found(self, ident: str) -> SecretNotFound:
        return SecretNotFound(
            f"A secret with (name/id) {ident} was not found in this key vault. If you recently "
            "deleted this secret you may be able to recover it using the correct recovery "
            f"command. {HELP}"
        )

    def secret_versions(self, name: str) -> list[SecretVersion]:
        """Every version of a certificate-backed secret, oldest first."""
        with self._lock:
            versions = list(self._secrets.get(name, {}).values())
        if not versions:
            raise self._secret_not_found(name)
        return versions

    def secret(self, name: str, version: str = "") -> tuple[SecretVersion, str]:
        """The certificate-backed secret and its value (base64 PFX or PEM text).

        For a non-exportable policy the value holds the certificate only: "If the policy
        indicates that the key is non-exportable, then the private key isn't a part of the value
        when it's retrieved as a secret" (learn.microsoft.com/azure/key-vault/certificates/
        about-certificates#exportable-or-non-exportable-key). Raises ``SecretNotFound``, and
        ``Forbidden``/SecretDisabled for a disabled version (Azure/azure-sdk-for-js#24756)."""
        with self._lock:
            found: SecretVersion | None = latest(self._secrets.get(name, {}), version)
        if found is None:
            raise self._secret_not_found(f"{name}/{version}" if version else name)
        if not found.attributes.enabled:
            raise Forbidden(
                "Operation get is not allowed on a disabled secret.", inner_code="SecretDisabled"
            )
        cert = self.get(name, found.certificate_version)
        exportable = self.policy(name).exportable
        key = self.keys.get(name, found.key_version).private_key if exportable else None
        return found, x509util.secret_value(found.content_type, key, cert.der, cert.chain)

    # ---- persistence ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "certificates": {n: _cert_to_dict(c) for n, c in self._certs.items()},
                "secrets": {
                    n: [{**vars(s), "attributes": vars(s.attributes).copy()} for s in v.values()]
                    for n, v in self._secrets.items()
                },
            }

    def load(self, data: Mapping[str, Any]) -> None:
        with self._lock:
            for name, cert in data.get("certificates", {}).items():
                self._certs[name] = _cert_from_dict(name, cert)
            for name, versions in data.get("secrets", {}).items():
                self._secrets[name] = {
                    v["version"]: SecretVersion(
                        **{**v, "attributes": Attributes(**v["attributes"])}
                    )
                    for v in versions
                }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _cert_to_dict(cert: Certificate) -> dict[str, Any]:
    op = cert.operation
    return {
        "policy": cert.policy.to_dict(),
        "operation": None if op is None else {**vars(op), "csr": _b64(op.csr)},
        "versions": [
            {
                **vars(v),
                "der": _b64(v.der),
                "chain": [_b64(c) for c in v.chain],
                "attributes": vars(v.attributes).copy(),
                "tags": dict(v.tags),
            }
            for v in cert.versions.values()
        ],
    }


def _cert_from_dict(name: str, data: Mapping[str, Any]) -> Certificate:
    op = data.get("operation")
    operation = None
    if op is not None:
        operation = CertificateOperation(**{**op, "csr": base64.b64decode(op["csr"])})
    cert = Certificate(name, CertificatePolicy.from_dict(data["policy"]), operation=operation)
    for v in data["versions"]:
        cert.versions[v["version"]] = CertificateVersion(
            **{
                **v,
                "der": base64.b64decode(v["der"]),
                "chain": tuple(base64.b64decode(c) for c in v["chain"]),
                "attributes": Attributes(**v["attributes"]),
            }
        )
    return cert
