"""One emulated Key Vault: its keys and its certificates (with their secrets), sharing one lock.

The verbs live in ``keystore`` (keys, sign, verify, and the vault's typed errors) and
``certstore`` (certificates and certificate-backed secrets); X.509 work is in ``x509util``.
This module re-exports what the route layer and tests use.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from kvassert.emulator.certstore import (
    CertificateOperation,
    CertificateStore,
    CertificateVersion,
    SecretVersion,
    key_ops_for,
)
from kvassert.emulator.clock import Clock
from kvassert.emulator.keystore import (
    SIGNATURE_ALGORITHMS,
    Attributes,
    BadParameter,
    CertificateNotFound,
    Forbidden,
    KeyNotFound,
    KeyStore,
    KeyVersion,
    SecretNotFound,
    VaultError,
)
from kvassert.emulator.x509util import PEM, PKCS12, CertificatePolicy, LifetimeAction

__all__ = [
    "PEM",
    "PKCS12",
    "SIGNATURE_ALGORITHMS",
    "Attributes",
    "BadParameter",
    "CertificateNotFound",
    "CertificateOperation",
    "CertificatePolicy",
    "CertificateStore",
    "CertificateVersion",
    "Forbidden",
    "KeyNotFound",
    "KeyStore",
    "KeyVersion",
    "LifetimeAction",
    "SecretNotFound",
    "SecretVersion",
    "Vault",
    "VaultError",
    "key_ops_for",
]


class Vault:
    """``keys`` and ``certificates`` of one vault. Thread-safe."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._lock = threading.RLock()
        self.keys = KeyStore(clock, self._lock)
        self.certificates = CertificateStore(self.keys, self._lock)

    def summary(self) -> dict[str, int]:
        return {"keys": len(self.keys.names()), "certificates": len(self.certificates.names())}

    def to_dict(self) -> dict[str, Any]:
        # One snapshot under the shared lock: a certificate version created between the two
        # halves would be saved without its key version.
        with self._lock:
            return {"keys": self.keys.to_dict(), **self.certificates.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Clock) -> Vault:
        vault = cls(clock)
        vault.keys.load(data.get("keys", {}))
        vault.certificates.load(data)
        return vault
