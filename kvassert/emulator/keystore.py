"""Key Vault keys with no HTTP: versions, RSA create and import, sign and verify a digest.

Also the vault's typed errors: each carries the HTTP status and Key Vault's error code (and inner
code), so the route layer only renders them. Identifiers are names and versions; the route layer
turns them into URLs.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from kvassert.emulator.clock import Clock

RSA_KEY_SIZES = (2048, 3072, 4096)
KEY_TYPES = ("RSA", "RSA-HSM")
DEFAULT_KEY_OPS = ("encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey")
HELP = "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")

# JWS algorithms (RFC 7518 sections 3.3 and 3.5) -> (hash, PSS?). Key Vault signs a digest the
# caller computed, so the digest length must equal the hash's output size.
SIGNATURE_ALGORITHMS: dict[str, tuple[type[hashes.HashAlgorithm], bool]] = {
    "RS256": (hashes.SHA256, False),
    "RS384": (hashes.SHA384, False),
    "RS512": (hashes.SHA512, False),
    "PS256": (hashes.SHA256, True),
    "PS384": (hashes.SHA384, True),
    "PS512": (hashes.SHA512, True),
}


class VaultError(Exception):
    """A Key Vault service error: ``status``, ``code`` and optional ``inner_code``."""

    status = 400
    code = "BadParameter"

    def __init__(self, message: str, *, inner_code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.inner_code = inner_code


class BadParameter(VaultError):
    pass


class KeyNotFound(VaultError):
    status, code = 404, "KeyNotFound"


class CertificateNotFound(VaultError):
    status, code = 404, "CertificateNotFound"


class SecretNotFound(VaultError):
    status, code = 404, "SecretNotFound"


class Forbidden(VaultError):
    status, code = 403, "Forbidden"


def new_version() -> str:
    return uuid.uuid4().hex


def check_name(name: str) -> str:
    """``name`` if Key Vault accepts it as an object name, else ``BadParameter``."""
    if not _NAME.match(name):
        raise BadParameter(
            f"The request URI contains an invalid name: {name[:130]!r}. Names are 1-127 "
            "characters of letters, digits and dashes."
        )
    return name


def latest(versions: Mapping[str, Any], version: str) -> Any:
    """``versions[version]`` or, for an empty version, the newest (dicts keep insertion order)."""
    if not version:
        return next(reversed(list(versions.values())), None)
    return versions.get(version)


@dataclass
class Attributes:
    """What every versioned object carries (times in epoch seconds)."""

    created: int
    updated: int
    enabled: bool = True
    not_before: int | None = None
    expires: int | None = None


@dataclass
class KeyVersion:
    name: str
    version: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    kty: str
    key_ops: tuple[str, ...]
    attributes: Attributes
    tags: dict[str, str] = field(default_factory=dict)
    managed: bool = False


class KeyStore:
    """Every key of one vault. Thread-safe (it shares the vault's lock)."""

    def __init__(self, clock: Clock, lock: threading.RLock | None = None) -> None:
        self.clock = clock
        self._lock = lock or threading.RLock()
        self._keys: dict[str, dict[str, KeyVersion]] = {}
        self.managed_names: set[str] = set()  # names owned by a certificate

    def attributes(
        self, enabled: bool = True, nbf: int | None = None, exp: int | None = None
    ) -> Attributes:
        now = int(self.clock.now())
        return Attributes(now, now, enabled, nbf, exp)

    def create(
        self,
        name: str,
        *,
        kty: str = "RSA",
        key_size: int | None = None,
        public_exponent: int | None = None,
        key_ops: Sequence[str] | None = None,
        attributes: Attributes | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyVersion:
        """A new version of key ``name``. Raises ``BadParameter`` for anything but RSA 2048,
        3072 or 4096, and ``Forbidden`` for a key a certificate owns."""
        self._check_new(name, kty)
        size = 2048 if key_size is None else key_size
        if size not in RSA_KEY_SIZES:
            raise BadParameter(f"Invalid key size {size}: expected one of {RSA_KEY_SIZES}.")
        exponent = 65537 if public_exponent is None else public_exponent
        if exponent not in (3, 65537):
            raise BadParameter(f"Invalid public exponent {exponent}: expected 3 or 65537.")
        private_key = rsa.generate_private_key(public_exponent=exponent, key_size=size)
        return self.add(name, private_key, kty, key_ops, attributes, tags)

    def import_key(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        *,
        kty: str = "RSA",
        key_ops: Sequence[str] | None = None,
        attributes: Attributes | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyVersion:
        """A new version of key ``name`` holding ``private_key``."""
        self._check_new(name, kty)
        if private_key.key_size not in RSA_KEY_SIZES:
            raise BadParameter(
                f"Invalid key size {private_key.key_size}: expected one of {RSA_KEY_SIZES}."
            )
        return self.add(name, private_key, kty, key_ops, attributes, tags)

    def _check_new(self, name: str, kty: str) -> None:
        check_name(name)
        if kty not in KEY_TYPES:
            raise BadParameter(
                f"Key type {kty[:20]!r} is not supported by the emulator: expected one of "
                f"{', '.join(KEY_TYPES)}."
            )
        if name in self.managed_names:
            raise Forbidden(
                f"Key {name} is managed by the certificate of the same name: create or import a "
                "certificate version instead.",
                inner_code="KeyManagedByCertificate",
            )

    def add(
        self,
        name: str,
        private_key: rsa.RSAPrivateKey,
        kty: str,
        key_ops: Sequence[str] | None,
        attributes: Attributes | None,
        tags: Mapping[str, str] | None,
        *,
        managed: bool = False,
    ) -> KeyVersion:
        """Store a new version (``managed``: it backs a certificate)."""
        ops = tuple(DEFAULT_KEY_OPS if key_ops is None else key_ops)
        unknown = sorted(set(ops) - set(DEFAULT_KEY_OPS))
        if unknown:
            # Text as in Azure/AzureKeyVault#22.
            raise BadParameter(
                f"Unsupported key operation(s): {', '.join(repr(op) for op in unknown)}. "
                f"Supported values are {', '.join(DEFAULT_KEY_OPS)}."
            )
        key = KeyVersion(
            name, new_version(), private_key, kty, ops,
            attributes or self.attributes(), dict(tags or {}), managed,
        )  # fmt: skip
        with self._lock:
            self._keys.setdefault(name, {})[key.version] = key
            if managed:
                self.managed_names.add(name)
        return key

    def get(self, name: str, version: str = "") -> KeyVersion:
        """The version, or the latest for ``""``. Raises ``KeyNotFound``."""
        with self._lock:
            key: KeyVersion | None = latest(self._keys.get(name, {}), version)
        if key is None:
            ident = f"{name}/{version}" if version else name
            raise KeyNotFound(
                f"A key with (name/id) {ident} was not found in this key vault. If you recently "
                "deleted this key you may be able to recover it using the correct recovery "
                f"command. {HELP}"
            )
        return key

    def versions(self, name: str) -> list[KeyVersion]:
        """Every version, oldest first. Raises ``KeyNotFound``."""
        self.get(name)
        with self._lock:
            return list(self._keys[name].values())

    def names(self) -> list[str]:
        with self._lock:
            return list(self._keys)

    def update(
        self,
        name: str,
        version: str = "",
        *,
        enabled: bool | None = None,
        not_before: int | None = None,
        expires: int | None = None,
        key_ops: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> KeyVersion:
        key = self.get(name, version)
        if key_ops is not None and set(key_ops) - set(DEFAULT_KEY_OPS):
            raise BadParameter(f"Unsupported key operation(s): {sorted(key_ops)}.")
        with self._lock:
            attrs = key.attributes
            attrs.enabled = attrs.enabled if enabled is None else enabled
            attrs.not_before = attrs.not_before if not_before is None else not_before
            attrs.expires = attrs.expires if expires is None else expires
            key.key_ops = key.key_ops if key_ops is None else tuple(key_ops)
            key.tags = key.tags if tags is None else dict(tags)
            attrs.updated = int(self.clock.now())
        return key

    def _usable(self, key: KeyVersion, operation: str, *, check_validity: bool) -> None:
        if not key.attributes.enabled:
            raise Forbidden(
                f"Operation {operation} is not allowed on a disabled key.", inner_code="KeyDisabled"
            )
        # Body as in Azure/azure-sdk-for-net#11518: 403 Forbidden, inner KeyOperationForbidden.
        if operation not in key.key_ops:
            raise Forbidden(
                f"Operation {operation} is not permitted on this key.",
                inner_code="KeyOperationForbidden",
            )
        # The service honours nbf/exp for sign, not for verify (Azure/azure-sdk-for-net#7677).
        now, attrs = self.clock.now(), key.attributes
        if check_validity and attrs.not_before is not None and now < attrs.not_before:
            raise Forbidden(
                f"Operation {operation} is not allowed on a key that is not yet valid.",
                inner_code="KeyNotYetValid",
            )
        if check_validity and attrs.expires is not None and now >= attrs.expires:
            raise Forbidden(
                f"Operation {operation} is not allowed on an expired key.", inner_code="KeyExpired"
            )

    def sign(
        self, name: str, version: str, algorithm: str, digest: bytes
    ) -> tuple[KeyVersion, bytes]:
        """Sign a digest the caller computed. Raises ``BadParameter`` for an unknown algorithm
        or a digest of the wrong length, ``Forbidden`` for a disabled, expired or sign-less key,
        ``KeyNotFound``."""
        key = self.get(name, version)
        hash_alg, pad = signature_scheme(algorithm, len(digest))
        self._usable(key, "sign", check_validity=True)
        return key, key.private_key.sign(digest, pad, Prehashed(hash_alg))

    def verify(
        self, name: str, version: str, algorithm: str, digest: bytes, signature: bytes
    ) -> tuple[KeyVersion, bool]:
        """Whether ``signature`` is valid for ``digest`` (raises as ``sign`` does)."""
        key = self.get(name, version)
        hash_alg, pad = signature_scheme(algorithm, len(digest))
        self._usable(key, "verify", check_validity=False)
        try:
            key.private_key.public_key().verify(signature, digest, pad, Prehashed(hash_alg))
        except InvalidSignature:
            return key, False
        return key, True

    # ---- persistence (private keys as PEM: this is a test emulator) ---------------------------

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {name: [_key_to_dict(k) for k in v.values()] for name, v in self._keys.items()}

    def load(self, data: Mapping[str, Any]) -> None:
        with self._lock:
            for name, versions in data.items():
                self._keys[name] = {v["version"]: _key_from_dict(name, v) for v in versions}
                if any(v["managed"] for v in versions):
                    self.managed_names.add(name)


def signature_scheme(
    algorithm: str, digest_length: int
) -> tuple[hashes.HashAlgorithm, padding.AsymmetricPadding]:
    """(hash, padding) for a JWS RSA algorithm. Raises ``BadParameter`` for an unknown
    algorithm or a digest length that is not the hash's output size."""
    scheme = SIGNATURE_ALGORITHMS.get(algorithm)
    if scheme is None:
        raise BadParameter(
            f"Invalid algorithm {algorithm[:20]!r} for an RSA key: expected one of "
            f"{', '.join(SIGNATURE_ALGORITHMS)}."
        )
    hash_alg = scheme[0]()
    if digest_length != hash_alg.digest_size:
        raise BadParameter(
            f"Invalid digest length {digest_length} for algorithm {algorithm}: expected "
            f"{hash_alg.digest_size} bytes."
        )
    if scheme[1]:
        # JWS PS256/384/512 (RFC 7518 section 3.5): MGF1 with the same hash, salt = hash size.
        return hash_alg, padding.PSS(padding.MGF1(scheme[0]()), hash_alg.digest_size)
    return hash_alg, padding.PKCS1v15()


def _key_to_dict(key: KeyVersion) -> dict[str, Any]:
    pem = key.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "version": key.version,
        "pem": pem.decode(),
        "kty": key.kty,
        "key_ops": list(key.key_ops),
        "attributes": vars(key.attributes).copy(),
        "tags": dict(key.tags),
        "managed": key.managed,
    }


def _key_from_dict(name: str, data: Mapping[str, Any]) -> KeyVersion:
    private_key = serialization.load_pem_private_key(data["pem"].encode(), password=None)
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise ValueError(f"stored key {name} is not RSA")
    return KeyVersion(
        name,
        data["version"],
        private_key,
        data["kty"],
        tuple(data["key_ops"]),
        Attributes(**data["attributes"]),
        dict(data["tags"]),
        bool(data["managed"]),
    )
