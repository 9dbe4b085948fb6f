"""Key Vault signer rules that need no server: version choice and the local signature check."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest

from kvassert.errors import SigningError
from kvassert.signing import CertificateChain, LocalCertificateSigner
from kvassert.vault_signer import KeyVaultSigner, VaultCertificate, newest_usable, usable
from tests.certs import make_cert, rsa_key

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.timezone.utc)


def version(
    name: str, *, enabled: bool = True, nbf: int = -10, exp: int = 100, created: int = 0
) -> Any:
    day = dt.timedelta(days=1)
    return SimpleNamespace(
        version=name,
        enabled=enabled,
        not_before=NOW + nbf * day,
        expires_on=NOW + exp * day,
        created_on=NOW + created * day,
    )


def test_version_choice_skips_disabled_early_and_expired() -> None:
    versions = [
        version("old", created=-30),
        version("disabled", enabled=False, created=-1),
        version("future", nbf=2, created=0),
        version("expired", exp=-1, created=-20),
    ]
    assert [v.version for v in versions if usable(v, NOW)] == ["old"]
    assert newest_usable(versions, NOW).version == "old"
    assert newest_usable([versions[1]], NOW) is None
    assert newest_usable([version("a", created=-5), version("b", created=-2)], NOW).version == "b"


class FakeCrypto:
    def __init__(self, signer: LocalCertificateSigner) -> None:
        self.signer = signer
        self.calls = 0

    def sign(self, algorithm: Any, digest: bytes) -> Any:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import utils

        from kvassert.signing import padding_for

        self.calls += 1
        signature = self.signer.private_key.sign(
            digest, padding_for("PS256"), utils.Prehashed(hashes.SHA256())
        )
        return SimpleNamespace(signature=signature)

    def close(self) -> None:
        pass


def signer_with(key_owner: LocalCertificateSigner, certificate_der: bytes) -> KeyVaultSigner:
    signer = KeyVaultSigner("https://kv.vault.azure.net", "c", credential=None)  # type: ignore[arg-type]
    signer._certificate = VaultCertificate(  # the part load() would fill from the vault
        vault_url=signer.vault_url,
        name="c",
        version="v1",
        key_id="https://kv.vault.azure.net/keys/c/v1",
        chain=CertificateChain(der=(certificate_der,)),
        enabled=True,
        not_before=None,
        expires_on=None,
    )
    signer._crypto = FakeCrypto(key_owner)  # type: ignore[assignment]
    return signer


def test_vault_signature_is_verified_against_the_certificate() -> None:
    leaf = make_cert()
    local = LocalCertificateSigner.from_bytes(leaf.pem())
    signer = signer_with(local, leaf.der)
    signature = signer.sign(b"header.payload")
    assert len(signature) == 256


def test_a_key_that_is_not_the_certificates_is_caught_before_sending() -> None:
    leaf = make_cert()
    other = LocalCertificateSigner.from_bytes(make_cert(key=rsa_key(2048, 4)).pem())
    signer = signer_with(other, leaf.der)
    with pytest.raises(SigningError, match="does not verify against certificate"):
        signer.sign(b"header.payload")


def test_repr_names_the_vault_and_version_only() -> None:
    leaf = make_cert()
    signer = signer_with(LocalCertificateSigner.from_bytes(leaf.pem()), leaf.der)
    assert repr(signer) == (
        "KeyVaultSigner(vault_url='https://kv.vault.azure.net', certificate='c', "
        "version='v1', algorithm='PS256')"
    )
