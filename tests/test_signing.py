"""Local certificate loading: PEM and PFX, passwords, chains, and every refusal."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from kvassert.errors import CredentialUnavailableError, SigningError
from kvassert.signing import LocalCertificateSigner, verify_signature
from tests.certs import make_cert, rsa_key


def test_pem_without_password_loads_and_signs() -> None:
    leaf = make_cert()
    signer = LocalCertificateSigner.from_bytes(leaf.pem())
    assert signer.chain.der[0] == leaf.der
    signature = signer.sign(b"abc")
    assert verify_signature(signer.chain, "PS256", b"abc", signature)
    assert not verify_signature(signer.chain, "PS256", b"abd", signature)


def test_encrypted_pem_needs_the_right_password() -> None:
    leaf = make_cert()
    data = leaf.pem("s3cret-pem")
    assert LocalCertificateSigner.from_bytes(data, password="s3cret-pem").chain.der[0] == leaf.der
    with pytest.raises(CredentialUnavailableError, match="encrypted"):
        LocalCertificateSigner.from_bytes(data)
    with pytest.raises(CredentialUnavailableError, match="wrong CertificatePassword") as info:
        LocalCertificateSigner.from_bytes(data, password="nope-canary")
    assert "nope-canary" not in str(info.value)


@pytest.mark.parametrize("password", [None, "pfx-pass"])
def test_pfx_with_and_without_password(password: str | None) -> None:
    leaf = make_cert()
    signer = LocalCertificateSigner.from_bytes(leaf.pfx(password), password=password)
    assert signer.chain.der == (leaf.der,)


def test_pfx_wrong_password_is_a_clear_error_without_the_password() -> None:
    leaf = make_cert()
    with pytest.raises(CredentialUnavailableError, match="wrong CertificatePassword") as info:
        LocalCertificateSigner.from_bytes(leaf.pfx("right"), password="wrong-canary", source="X")
    assert "wrong-canary" not in str(info.value)
    assert str(info.value).startswith("X: ")


def test_chain_is_ordered_leaf_first_whatever_the_file_order() -> None:
    root = make_cert(cn="root", key=rsa_key(2048, 1), ca=True)
    leaf = make_cert(cn="leaf", issuer=root)
    # PEM with the issuer first: the leaf is the certificate that matches the key.
    from cryptography.hazmat.primitives import serialization

    swapped = (
        root.cert.public_bytes(serialization.Encoding.PEM)
        + leaf.cert.public_bytes(serialization.Encoding.PEM)
        + leaf.pem(with_chain=False).split(b"-----END CERTIFICATE-----\n")[-1]
    )
    signer = LocalCertificateSigner.from_bytes(swapped)
    assert signer.chain.der[0] == leaf.der
    assert signer.chain.der[1] == root.der
    assert LocalCertificateSigner.from_bytes(leaf.pfx("p"), password="p").chain.der == (
        leaf.der,
        root.der,
    )


def test_non_rsa_key_is_refused() -> None:
    leaf = make_cert(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CredentialUnavailableError, match="need RSA"):
        LocalCertificateSigner.from_bytes(leaf.pem())


def test_certificate_that_does_not_match_the_key_is_refused() -> None:
    leaf = make_cert()
    other = make_cert(key=rsa_key(2048, 2))
    mixed = (
        leaf.pem().split(b"-----BEGIN PRIVATE KEY-----")[0]
        + other.pem().split(b"-----END CERTIFICATE-----\n")[-1]
    )
    with pytest.raises(CredentialUnavailableError, match="no certificate matches"):
        LocalCertificateSigner.from_bytes(mixed)


def test_expired_and_not_yet_valid_certificates_are_refused() -> None:
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)
    with pytest.raises(CredentialUnavailableError, match="expired on"):
        LocalCertificateSigner.from_bytes(make_cert(not_before=past, days=10).pem())
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2)
    with pytest.raises(CredentialUnavailableError, match="not valid before"):
        LocalCertificateSigner.from_bytes(make_cert(not_before=future).pem())


def test_pem_without_key_and_garbage_are_refused() -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = make_cert()
    with pytest.raises(CredentialUnavailableError, match="no private key"):
        LocalCertificateSigner.from_bytes(leaf.cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CredentialUnavailableError, match="not a PFX/PEM"):
        LocalCertificateSigner.from_bytes(b"\x00garbage")


def test_rs256_signer_uses_pkcs1v15() -> None:
    leaf = make_cert()
    signer = LocalCertificateSigner.from_bytes(leaf.pem(), algorithm="RS256")
    signature = signer.sign(b"msg")
    signer.chain.public_key.verify(signature, b"msg", padding.PKCS1v15(), hashes.SHA256())


def test_unsupported_algorithm_and_repr_hides_the_key() -> None:
    leaf = make_cert()
    with pytest.raises(SigningError, match="unsupported algorithm"):
        LocalCertificateSigner.from_bytes(leaf.pem(), algorithm="HS256")
    signer = LocalCertificateSigner.from_bytes(leaf.pem())
    assert "private" not in repr(signer).lower()
    assert signer.chain.x5t_s256 in repr(signer)


def test_a_certificate_with_an_invalid_version_is_a_clear_error() -> None:
    from cryptography.hazmat.primitives import serialization

    leaf = make_cert()
    # TBSCertificate version: [0] EXPLICIT INTEGER 2 (v3); 7 is no X.509 version.
    der = leaf.der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x07", 1)
    assert der != leaf.der
    import base64

    body = base64.encodebytes(der).decode()
    pem = f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n".encode()
    key = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(CredentialUnavailableError, match=r"invalid X\.509 version"):
        LocalCertificateSigner.from_bytes(pem + key)
