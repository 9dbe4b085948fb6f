"""The real, unmodified SDKs against the emulator over TLS: KeyClient, CryptographyClient and
CertificateClient, authenticated with azure-identity credentials. Client-side settings are only
what a user sets for a local emulator: the CA file (``connection_verify``),
``verify_challenge_resource=False`` and, for Entra credentials, ``authority`` plus
``disable_instance_discovery=True``. Every signature is checked with ``cryptography``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

import pytest
from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError
from azure.identity import (
    ClientAssertionCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
)
from azure.keyvault.keys import JsonWebKey, KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from kvassert.emulator.server import Emulator
from tests.certs import make_cert, rsa_key

HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def tls(emu: Emulator) -> dict[str, Any]:
    return {"connection_verify": emu.info.ca_file}


def key_client(emu: Emulator, credential: TokenCredential) -> KeyClient:
    return KeyClient(emu.info.vault_url, credential, verify_challenge_resource=False, **tls(emu))


def certificate_client(emu: Emulator, credential: TokenCredential) -> CertificateClient:
    return CertificateClient(
        emu.info.vault_url, credential, verify_challenge_resource=False, **tls(emu)
    )


def crypto_client(emu: Emulator, key: Any, credential: TokenCredential) -> CryptographyClient:
    return CryptographyClient(key, credential, verify_challenge_resource=False, **tls(emu))


@pytest.fixture
def mi(identity_env: Emulator) -> ManagedIdentityCredential:
    return ManagedIdentityCredential(**tls(identity_env))


def verify_with_cryptography(
    public: rsa.RSAPublicKey, algorithm: str, digest: bytes, signature: bytes
) -> None:
    hash_alg = HASH[algorithm[2:]]()
    pad: padding.AsymmetricPadding = (
        padding.PSS(padding.MGF1(HASH[algorithm[2:]]()), hash_alg.digest_size)
        if algorithm.startswith("PS")
        else padding.PKCS1v15()
    )
    public.verify(signature, digest, pad, Prehashed(hash_alg))


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ---- keys ---------------------------------------------------------------------------------


def test_key_client_create_get_and_versions(identity_env: Emulator, mi: TokenCredential) -> None:
    client = key_client(identity_env, mi)
    first = client.create_rsa_key("signer", size=2048)
    second = client.create_rsa_key("signer", size=3072, hardware_protected=True)
    assert second.key_type == "RSA-HSM" and second.properties.version != first.properties.version
    assert client.get_key("signer").id == second.id
    assert client.get_key("signer", first.properties.version).id == first.id
    versions = {p.version for p in client.list_properties_of_key_versions("signer")}
    assert versions == {first.properties.version, second.properties.version}


def test_import_key_and_sign_with_every_algorithm(
    identity_env: Emulator, mi: TokenCredential
) -> None:
    private = rsa_key(2048, 7)
    numbers = private.private_numbers()
    jwk = JsonWebKey(
        kty="RSA",
        n=numbers.public_numbers.n.to_bytes(256, "big"),
        e=numbers.public_numbers.e.to_bytes(3, "big"),
        d=numbers.d.to_bytes(256, "big"),
        p=numbers.p.to_bytes(128, "big"),
        q=numbers.q.to_bytes(128, "big"),
        dp=numbers.dmp1.to_bytes(128, "big"),
        dq=numbers.dmq1.to_bytes(128, "big"),
        qi=numbers.iqmp.to_bytes(128, "big"),
    )
    imported = key_client(identity_env, mi).import_key("imported", jwk)
    crypto = crypto_client(identity_env, imported.id, mi)
    for algorithm in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
        digest = hashlib.new(f"sha{algorithm[2:]}", b"payload").digest()
        result = crypto.sign(SignatureAlgorithm(algorithm), digest)
        assert result.key_id == imported.id
        verify_with_cryptography(private.public_key(), algorithm, digest, result.signature)
    assert len(identity_env.admin.log(operation="sign")) == 6


def test_throttled_sign_is_retried_because_retry_after_is_sent(
    identity_env: Emulator, mi: TokenCredential
) -> None:
    key = key_client(identity_env, mi).create_rsa_key("signer")
    crypto = crypto_client(identity_env, key, mi)
    crypto.sign(SignatureAlgorithm.ps256, hashlib.sha256(b"warm-up").digest())
    identity_env.admin.add_fault("sign", status=429, retry_after=0, count=1)
    result = crypto.sign(SignatureAlgorithm.ps256, hashlib.sha256(b"m").digest())
    assert result.key_id == key.id
    statuses = [e["status"] for e in identity_env.admin.log(operation="sign")]
    assert statuses[-2:] == [429, 200]


# ---- certificates -------------------------------------------------------------------------


def test_create_non_exportable_certificate_and_sign_with_its_key(
    identity_env: Emulator, mi: TokenCredential
) -> None:
    client = certificate_client(identity_env, mi)
    policy = CertificatePolicy(
        issuer_name="Self",
        subject="CN=kvassert-app",
        exportable=False,
        key_type="RSA",
        key_size=2048,
    )
    certificate = client.begin_create_certificate("app", policy).result()
    assert certificate.policy is not None and certificate.policy.exportable is False
    assert certificate.properties.version and certificate.key_id and certificate.secret_id
    assert identity_env.state is not None
    bound = identity_env.state.vault.certificates.get("app").key_version
    assert certificate.key_id.endswith(f"/keys/app/{bound}")
    assert certificate.cer is not None
    cert = x509.load_der_x509_certificate(bytes(certificate.cer))
    assert certificate.properties.x509_thumbprint == hashlib.sha1(certificate.cer).digest()
    digest = hashlib.sha256(b"header.claims").digest()
    signed = crypto_client(identity_env, certificate.key_id, mi).sign(
        SignatureAlgorithm.ps256, digest
    )
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    verify_with_cryptography(public, "PS256", digest, signed.signature)
    operations = [e["operation"] for e in identity_env.admin.log() if e["status"] < 400]
    assert operations[:3] == ["identity", "certificate_create", "certificate_pending"]


def test_import_pfx_with_password_and_pem(identity_env: Emulator, mi: TokenCredential) -> None:
    client = certificate_client(identity_env, mi)
    pfx_bundle = make_cert(cn="pfx-import", key=rsa_key(2048, 8))
    imported = client.import_certificate("pfx", pfx_bundle.pfx("pw"), password="pw")
    assert bytes(imported.cer or b"") == pfx_bundle.der
    pem_bundle = make_cert(cn="pem-import", key=rsa_key(2048, 9))
    pem_policy = CertificatePolicy(issuer_name="Unknown", content_type=CertificateContentType.pem)
    imported_pem = client.import_certificate("pem", pem_bundle.pem(), policy=pem_policy)
    assert bytes(imported_pem.cer or b"") == pem_bundle.der
    assert imported_pem.policy is not None
    assert imported_pem.policy.content_type == CertificateContentType.pem
    with pytest.raises(HttpResponseError) as caught:
        client.import_certificate("bad", pfx_bundle.pfx("pw"), password="wrong")
    assert caught.value.status_code == 400 and caught.value.error is not None
    assert caught.value.error.code == "BadParameter"


def test_rotation_versions_and_disabling_a_version(
    identity_env: Emulator, mi: TokenCredential
) -> None:
    client = certificate_client(identity_env, mi)
    policy = CertificatePolicy(issuer_name="Self", subject="CN=rotating", exportable=False)
    old = client.begin_create_certificate("rotating", policy).result()
    new = client.begin_create_certificate("rotating", policy).result()
    assert new.properties.version != old.properties.version and new.key_id != old.key_id
    versions = {p.version for p in client.list_properties_of_certificate_versions("rotating")}
    assert versions == {old.properties.version, new.properties.version}
    assert client.get_certificate("rotating").id == new.id
    assert old.properties.version is not None
    disabled = client.update_certificate_properties(
        "rotating", old.properties.version, enabled=False
    )
    assert disabled.properties.enabled is False
    assert (
        client.get_certificate_version("rotating", old.properties.version).properties.enabled
        is False
    )
    digest = hashlib.sha256(b"m").digest()
    with pytest.raises(HttpResponseError) as caught:
        crypto_client(identity_env, old.key_id, mi).sign(SignatureAlgorithm.ps256, digest)
    assert caught.value.status_code == 403
    assert crypto_client(identity_env, new.key_id, mi).sign(SignatureAlgorithm.ps256, digest)


# ---- other credentials and RBAC -------------------------------------------------------------


def test_client_secret_credential_and_a_missing_role(emu: Emulator) -> None:
    client_id, secret = str(uuid.uuid4()), "s3cret-value"
    app = emu.admin.register_application(client_id, secrets=[secret])
    credential = ClientSecretCredential(
        emu.info.tenant_id,
        client_id,
        secret,
        authority=emu.info.authority,
        disable_instance_discovery=True,
        **tls(emu),
    )
    keys = key_client(emu, credential)
    with pytest.raises(HttpResponseError) as caught:
        keys.create_rsa_key("k")
    assert caught.value.status_code == 403 and caught.value.error is not None
    assert caught.value.error.code == "Forbidden"
    assert caught.value.error.innererror == {"code": "ForbiddenByRbac"}
    emu.admin.assign_role(app["principal_id"], "Key Vault Crypto Officer")
    assert keys.create_rsa_key("k").key_type == "RSA"


def test_client_assertion_signed_by_key_vault(identity_env: Emulator, mi: TokenCredential) -> None:
    """kvassert's own flow, with the SDKs only: the app's certificate lives in the vault as
    non-exportable; the assertion digest is signed there (PS256); Entra accepts it."""
    emu = identity_env
    certificate = (
        certificate_client(emu, mi)
        .begin_create_certificate(
            "app-credential",
            CertificatePolicy(issuer_name="Self", subject="CN=app-credential", exportable=False),
        )
        .result()
    )
    client_id = str(uuid.uuid4())
    app = emu.admin.register_application(client_id, vault_certificates=["app-credential"])
    emu.admin.assign_role(app["principal_id"], "Key Vault Crypto User")
    signer = crypto_client(emu, certificate.key_id, mi)
    audience = f"{emu.info.authority}/{emu.info.tenant_id}/oauth2/v2.0/token"

    def assertion() -> str:
        now = int(time.time())
        thumbprint = b64u(hashlib.sha256(bytes(certificate.cer or b"")).digest())
        header = {"alg": "PS256", "typ": "JWT", "x5t#S256": thumbprint}
        claims = {"aud": audience, "iss": client_id, "sub": client_id, "jti": str(uuid.uuid4()),
                  "iat": now, "nbf": now, "exp": now + 600}  # fmt: skip
        signing_input = ".".join(
            b64u(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        digest = hashlib.sha256(signing_input.encode()).digest()
        return f"{signing_input}.{b64u(signer.sign(SignatureAlgorithm.ps256, digest).signature)}"

    credential = ClientAssertionCredential(
        emu.info.tenant_id,
        client_id,
        assertion,
        authority=emu.info.authority,
        disable_instance_discovery=True,
        **tls(emu),
    )
    key = key_client(emu, credential).create_rsa_key  # Crypto User cannot create keys
    with pytest.raises(HttpResponseError) as caught:
        key("not-allowed")
    assert caught.value.status_code == 403
    assert key_client(emu, credential).get_key("app-credential").id.startswith(emu.info.vault_url)
    # The app's own requests are authorised as its service principal.
    principals = {e["principal"] for e in emu.admin.log(operation="key_get") if e["status"] == 200}
    assert app["principal_id"] in principals


def test_default_azure_credential_through_the_identity_endpoint(
    identity_env: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", identity_env.info.ca_file)
    credential = DefaultAzureCredential(
        exclude_developer_cli_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_azd_cli_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_interactive_browser_credential=True,
    )
    client = key_client(identity_env, credential)
    created = client.create_rsa_key("via-dac")
    assert client.get_key("via-dac").id == created.id
    principals = {e["principal"] for e in identity_env.admin.log(operation="key_get")}
    assert identity_env.info.principal_id in principals
