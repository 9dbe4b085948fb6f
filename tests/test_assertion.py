"""Every header and claim rule of DESIGN section 2, checked with PyJWT and cryptography."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import given, settings
from hypothesis import strategies as st

from kvassert.assertion import build_assertion, decode_unverified
from kvassert.signing import LocalCertificateSigner
from tests.certs import CertBundle, make_cert, rsa_key

AUD = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
CLIENT = "00000000-0000-0000-0000-0000000000c1"


@pytest.fixture(scope="module")
def leaf() -> CertBundle:
    root = make_cert(cn="issuer", key=rsa_key(2048, 1), ca=True)
    return make_cert(cn="client", issuer=root)


def signer_for(leaf: CertBundle, algorithm: str = "PS256") -> LocalCertificateSigner:
    return LocalCertificateSigner.from_bytes(leaf.pem(), algorithm=algorithm)


def segments(token: str) -> tuple[bytes, bytes, bytes]:
    def dec(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    h, p, s = token.split(".")
    return dec(h), dec(p), dec(s)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_default_is_ps256_with_x5t_s256(leaf: CertBundle) -> None:
    token = build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD)
    header, _ = decode_unverified(token)
    assert header == {
        "alg": "PS256",
        "typ": "JWT",
        "x5t#S256": b64url(hashlib.sha256(leaf.der).digest()),
    }


def test_rs256_mode_uses_sha1_x5t(leaf: CertBundle) -> None:
    token = build_assertion(signer_for(leaf, "RS256"), client_id=CLIENT, audience=AUD)
    header, _ = decode_unverified(token)
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": b64url(hashlib.sha1(leaf.der).digest())}


def test_x5c_only_when_asked_leaf_first_standard_base64(leaf: CertBundle) -> None:
    signer = LocalCertificateSigner.from_bytes(leaf.pfx("p"), password="p")
    token = build_assertion(signer, client_id=CLIENT, audience=AUD, send_x5c=True)
    header, _ = decode_unverified(token)
    root_der = leaf.issuers[0].public_bytes(serialization.Encoding.DER)
    assert header["x5c"] == [
        base64.b64encode(leaf.der).decode(),
        base64.b64encode(root_der).decode(),
    ]
    plain, _ = decode_unverified(build_assertion(signer, client_id=CLIENT, audience=AUD))
    assert "x5c" not in plain


def test_claims_are_exact_and_integers(leaf: CertBundle) -> None:
    token = build_assertion(
        signer_for(leaf), client_id=CLIENT, audience=AUD, now=1_700_000_000.9, jti="j-1"
    )
    _, payload, _ = segments(token)
    claims = json.loads(payload)
    assert claims == {
        "aud": AUD,
        "iss": CLIENT,
        "sub": CLIENT,
        "jti": "j-1",
        "iat": 1_700_000_000,
        "nbf": 1_700_000_000,
        "exp": 1_700_000_600,
    }
    assert all(type(claims[name]) is int for name in ("iat", "nbf", "exp"))


def test_lifetime_is_configurable_and_bounded(leaf: CertBundle) -> None:
    token = build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD, lifetime=300, now=10)
    assert decode_unverified(token)[1]["exp"] == 310
    for bad in (0, -5, 3601):
        with pytest.raises(ValueError, match="lifetime"):
            build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD, lifetime=bad)
    with pytest.raises(ValueError, match="client_id"):
        build_assertion(signer_for(leaf), client_id="", audience=AUD)
    with pytest.raises(ValueError, match="audience"):
        build_assertion(signer_for(leaf), client_id=CLIENT, audience="")


def test_every_assertion_gets_a_fresh_uuid_jti(leaf: CertBundle) -> None:
    signer = signer_for(leaf)
    jtis = {
        decode_unverified(build_assertion(signer, client_id=CLIENT, audience=AUD))[1]["jti"]
        for _ in range(20)
    }
    assert len(jtis) == 20
    for value in jtis:
        uuid.UUID(value)


def test_header_and_payload_are_compact_json(leaf: CertBundle) -> None:
    header, payload, _ = segments(build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD))
    for segment in (header, payload):
        assert segment == json.dumps(json.loads(segment), separators=(",", ":")).encode()


def test_pyjwt_verifies_ps256_and_rs256(leaf: CertBundle) -> None:
    public = leaf.cert.public_key()
    for alg in ("PS256", "RS256"):
        token = build_assertion(signer_for(leaf, alg), client_id=CLIENT, audience=AUD)
        claims = jwt.decode(token, public, algorithms=[alg], audience=AUD, issuer=CLIENT)
        assert claims["sub"] == CLIENT


def test_cryptography_verifies_pss_salt_32_mgf1_sha256(leaf: CertBundle) -> None:
    token = build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD)
    signing_input = token.rsplit(".", 1)[0].encode()
    _, _, signature = segments(token)
    public = leaf.cert.public_key()
    pss32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    public.verify(signature, signing_input, pss32, hashes.SHA256())  # type: ignore[union-attr]
    # A signature made with any other salt length would fail the verification above; prove the
    # check is sensitive by verifying with the wrong salt.
    with pytest.raises(InvalidSignature):
        public.verify(  # type: ignore[union-attr]
            signature,
            signing_input,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=64),
            hashes.SHA256(),
        )
    with pytest.raises(InvalidSignature):
        public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]


def test_cryptography_verifies_rs256_pkcs1v15(leaf: CertBundle) -> None:
    token = build_assertion(signer_for(leaf, "RS256"), client_id=CLIENT, audience=AUD)
    signing_input = token.rsplit(".", 1)[0].encode()
    _, _, signature = segments(token)
    leaf.cert.public_key().verify(  # type: ignore[union-attr]
        signature, signing_input, padding.PKCS1v15(), hashes.SHA256()
    )


def test_the_signer_receives_exactly_the_jws_signing_input(leaf: CertBundle) -> None:
    seen: list[bytes] = []
    inner = signer_for(leaf)

    class Recording:
        chain = inner.chain
        algorithm = "PS256"

        def sign(self, signing_input: bytes) -> bytes:
            seen.append(signing_input)
            return inner.sign(signing_input)

    token = build_assertion(Recording(), client_id=CLIENT, audience=AUD)
    assert seen == [token.rsplit(".", 1)[0].encode()]


def test_pyjwt_global_algorithms_are_untouched(leaf: CertBundle) -> None:
    build_assertion(signer_for(leaf), client_id=CLIENT, audience=AUD)
    with pytest.raises(Exception):  # noqa: B017 - any PyJWT key error proves PS256 is not ours
        jwt.encode({"a": 1}, signer_for(leaf), algorithm="PS256")  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(client_id=st.text(min_size=1, max_size=40), tenant=st.text(min_size=1, max_size=30))
def test_no_segment_is_ever_padded(client_id: str, tenant: str) -> None:
    signer = LocalCertificateSigner.from_bytes(make_cert().pem())
    token = build_assertion(signer, client_id=client_id, audience=f"https://h/{tenant}/token")
    assert "=" not in token
    assert token.count(".") == 2
    assert jwt.decode(token, options={"verify_signature": False})["iss"] == client_id
