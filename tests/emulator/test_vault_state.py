"""The vault state model called directly: keys, signatures, certificates, secrets, RBAC,
persistence and reset. No HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kvassert.emulator.clock import Clock
from kvassert.emulator.rbac import OPERATION_DATA_ACTIONS, Rbac, find_role
from kvassert.emulator.state import EmulatorState, Fault, Faults, LogEntry, RequestLog
from kvassert.emulator.vault import (
    PEM,
    SIGNATURE_ALGORITHMS,
    BadParameter,
    CertificateNotFound,
    Forbidden,
    KeyNotFound,
    SecretNotFound,
    Vault,
)
from tests.certs import make_cert, rsa_key
from tests.emulator.conftest import new_state, self_signed_policy

HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


@pytest.fixture
def vault() -> Vault:
    return Vault(Clock())


def local_verify(public: rsa.RSAPublicKey, alg: str, message: bytes, signature: bytes) -> None:
    """Verify the way a JWS consumer would (RFC 7518): PSS salt = hash length."""
    hash_alg = HASHES[alg[2:]]()
    pad: padding.AsymmetricPadding = (
        padding.PSS(padding.MGF1(HASHES[alg[2:]]()), hash_alg.digest_size)
        if alg.startswith("PS")
        else padding.PKCS1v15()
    )
    public.verify(signature, message, pad, hash_alg)


# ---- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", sorted(SIGNATURE_ALGORITHMS))
def test_signature_verifies_with_cryptography_for_every_algorithm(vault: Vault, alg: str) -> None:
    key = vault.keys.import_key("signer", rsa_key(2048, 1))
    message = b"header.claims"
    digest = hashlib.new(f"sha{alg[2:]}", message).digest()
    signed_by, signature = vault.keys.sign("signer", "", alg, digest)
    assert signed_by.version == key.version
    local_verify(rsa_key(2048, 1).public_key(), alg, message, signature)
    assert vault.keys.verify("signer", key.version, alg, digest, signature)[1] is True
    assert vault.keys.verify("signer", "", alg, digest, b"\0" * 256)[1] is False


def test_pss_salt_is_the_digest_length_not_the_maximum(vault: Vault) -> None:
    vault.keys.import_key("signer", rsa_key(2048, 1))
    digest = hashlib.sha256(b"x").digest()
    _, signature = vault.keys.sign("signer", "", "PS256", digest)
    public = rsa_key(2048, 1).public_key()
    with pytest.raises(InvalidSignature):
        public.verify(
            signature, b"x", padding.PSS(padding.MGF1(hashes.SHA256()), 222), hashes.SHA256()
        )
    public.verify(signature, b"x", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


@pytest.mark.parametrize("alg", sorted(SIGNATURE_ALGORITHMS))
@pytest.mark.parametrize("delta", [-1, 1])
def test_digest_length_must_match_the_algorithm(vault: Vault, alg: str, delta: int) -> None:
    vault.keys.import_key("signer", rsa_key(2048, 1))
    size = HASHES[alg[2:]]().digest_size + delta
    with pytest.raises(BadParameter, match=f"digest length {size}") as caught:
        vault.keys.sign("signer", "", alg, b"\1" * size)
    assert (caught.value.status, caught.value.code) == (400, "BadParameter")


def test_unknown_algorithm_is_bad_parameter(vault: Vault) -> None:
    vault.keys.import_key("signer", rsa_key(2048, 1))
    with pytest.raises(BadParameter, match="Invalid algorithm"):
        vault.keys.sign("signer", "", "ES256", b"\1" * 32)


@pytest.mark.parametrize("size", [3072, 4096])
def test_create_larger_rsa_keys_and_sign(vault: Vault, size: int) -> None:
    key = vault.keys.create("big", key_size=size, kty="RSA-HSM")
    assert (key.private_key.key_size, key.kty) == (size, "RSA-HSM")
    digest = hashlib.sha512(b"m").digest()
    _, signature = vault.keys.sign("big", key.version, "PS512", digest)
    local_verify(key.private_key.public_key(), "PS512", b"m", signature)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_size": 1024}, "Invalid key size"),
        ({"kty": "EC"}, "not supported"),
        ({"public_exponent": 17}, "public exponent"),
        ({"key_ops": ["sign", "fly"]}, "Unsupported key operation"),
    ],
)
def test_create_refuses_what_the_emulator_does_not_support(
    vault: Vault, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BadParameter, match=message):
        vault.keys.create("k", **kwargs)  # type: ignore[arg-type]
    assert vault.keys.names() == []


def test_versions_latest_and_not_found(vault: Vault) -> None:
    first = vault.keys.import_key("k", rsa_key(2048, 1))
    second = vault.keys.import_key("k", rsa_key(2048, 2))
    assert vault.keys.get("k").version == second.version
    assert vault.keys.get("k", first.version) is first
    assert [k.version for k in vault.keys.versions("k")] == [first.version, second.version]
    with pytest.raises(KeyNotFound) as caught:
        vault.keys.get("k", "0" * 32)
    assert (caught.value.status, caught.value.code) == (404, "KeyNotFound")
    assert "k/" + "0" * 32 in caught.value.message
    with pytest.raises(KeyNotFound):
        vault.keys.versions("missing")


def test_disabled_expired_and_sign_less_keys_refuse_to_sign(vault: Vault) -> None:
    digest = b"\1" * 32
    vault.keys.import_key("k", rsa_key(2048, 1))
    vault.keys.update("k", enabled=False)
    with pytest.raises(Forbidden) as caught:
        vault.keys.sign("k", "", "RS256", digest)
    assert caught.value.inner_code == "KeyDisabled"
    vault.keys.update("k", enabled=True, key_ops=["verify"])
    with pytest.raises(Forbidden) as caught:
        vault.keys.sign("k", "", "RS256", digest)
    assert caught.value.inner_code == "KeyOperationForbidden"
    past = int(vault.clock.now()) - 10
    vault.keys.update("k", key_ops=["sign", "verify"], expires=past)
    with pytest.raises(Forbidden) as caught:
        vault.keys.sign("k", "", "RS256", digest)
    assert caught.value.inner_code == "KeyExpired"
    # verify ignores nbf/exp, as the service does
    assert vault.keys.verify("k", "", "RS256", digest, b"\0" * 256)[1] is False


def test_the_clock_offset_decides_key_validity(vault: Vault) -> None:
    now = int(vault.clock.now())
    vault.keys.import_key("k", rsa_key(2048, 1))
    vault.keys.update("k", not_before=now + 3600)
    with pytest.raises(Forbidden, match="not yet valid"):
        vault.keys.sign("k", "", "RS256", b"\1" * 32)
    vault.clock.set_offset(7200)
    assert vault.keys.sign("k", "", "RS256", b"\1" * 32)[1]


# ---- certificates -------------------------------------------------------------------------


def test_create_is_in_progress_until_the_first_poll(vault: Vault) -> None:
    operation = vault.certificates.create("app", self_signed_policy())
    assert operation.status == "inProgress"
    assert vault.certificates.operation("app").status == "completed"
    assert vault.certificates.get("app").version == operation.target_version
    x509.load_der_x509_csr(operation.csr)


def test_self_signed_certificate_follows_the_policy(vault: Vault) -> None:
    policy = self_signed_policy(
        subject="CN=orders-api, O=Contoso",
        dns_names=("orders.example",),
        ekus=(ExtendedKeyUsageOID.CLIENT_AUTH.dotted_string,),
        key_usage=("digitalSignature",),
        validity_months=3,
        key_size=3072,
    )
    vault.certificates.create("app", policy)
    version = vault.certificates.get("app")
    cert = x509.load_der_x509_certificate(version.der)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "orders-api"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Contoso"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["orders.example"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 88 <= days <= 92
    key = vault.keys.get("app", version.key_version)
    assert key.managed and key.key_ops == ("sign", "verify")
    assert key.private_key.key_size == 3072
    assert cert.public_key().public_numbers() == key.private_key.public_key().public_numbers()
    _, signature = vault.keys.sign("app", version.key_version, "PS256", b"\2" * 32)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), 32)
    public.verify(signature, b"\2" * 32, pss, Prehashed(hashes.SHA256()))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kty": "RSA-HSM", "exportable": True}, "Exportable keys"),
        ({"issuer": "Unknown"}, "not supported by the emulator"),
        ({"subject": "not a dn"}, "Invalid subject"),
        ({"key_size": 1024}, "Invalid key size"),
        ({"validity_months": 0}, "validity_months"),
        ({"key_usage": ("signEverything",)}, "key usage"),
        ({"ekus": ("not-an-oid",)}, "OID"),
    ],
)
def test_invalid_policies_are_bad_parameter(
    vault: Vault, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(BadParameter, match=message):
        vault.certificates.create("app", self_signed_policy(**overrides))
    assert vault.certificates.names() == []


def test_first_version_needs_a_policy(vault: Vault) -> None:
    with pytest.raises(BadParameter, match="policy is required"):
        vault.certificates.create("app", None)


def test_rotation_makes_a_new_version_bound_to_a_new_key(vault: Vault) -> None:
    vault.certificates.create("app", self_signed_policy())
    old = vault.certificates.get("app")
    vault.certificates.create("app", None)
    new = vault.certificates.get("app")
    assert new.version != old.version and new.key_version != old.key_version
    assert [v.version for v in vault.certificates.versions("app")] == [old.version, new.version]
    old_key = vault.keys.get("app", old.key_version).private_key.public_key().public_numbers()
    new_key = vault.keys.get("app", new.key_version).private_key.public_key().public_numbers()
    assert old_key != new_key
    vault.certificates.create("app", self_signed_policy(reuse_key=True))
    reused = vault.keys.get("app", vault.certificates.get("app").key_version)
    assert reused.private_key.public_key().public_numbers() == new_key


def test_non_exportable_secret_holds_the_certificate_only(vault: Vault) -> None:
    vault.certificates.create("app", self_signed_policy(exportable=False))
    secret, value = vault.certificates.secret("app")
    key, cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
    assert key is None
    # Without a key the PFX's only certificate is not "the" key's certificate: it is a bag.
    certs = [
        c.public_bytes(serialization.Encoding.DER) for c in [*([cert] if cert else []), *extra]
    ]
    assert certs == [vault.certificates.get("app").der]
    assert secret.key_version == vault.certificates.get("app").key_version


def test_exportable_secret_holds_the_private_key_as_pfx_or_pem(vault: Vault) -> None:
    vault.certificates.create("pfx", self_signed_policy(exportable=True))
    _, value = vault.certificates.secret("pfx")
    key, _, _ = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    vault.certificates.create("pem", self_signed_policy(exportable=True, content_type=PEM))
    _, pem = vault.certificates.secret("pem")
    assert pem.startswith("-----BEGIN PRIVATE KEY-----") and "BEGIN CERTIFICATE" in pem
    vault.certificates.create("pem-public", self_signed_policy(content_type=PEM))
    _, public_only = vault.certificates.secret("pem-public")
    assert "PRIVATE KEY" not in public_only and public_only.startswith("-----BEGIN CERTIFICATE")


def test_disabling_a_version_disables_its_key_and_secret(vault: Vault) -> None:
    vault.certificates.create("app", self_signed_policy())
    version = vault.certificates.get("app")
    vault.certificates.update("app", version.version, enabled=False)
    assert vault.certificates.get("app", version.version).attributes.enabled is False
    with pytest.raises(Forbidden) as caught:
        vault.certificates.secret("app")
    assert (caught.value.inner_code, caught.value.status) == ("SecretDisabled", 403)
    with pytest.raises(Forbidden, match="disabled key"):
        vault.keys.sign("app", version.key_version, "RS256", b"\1" * 32)
    vault.certificates.update("app", version.version, enabled=True)
    assert vault.keys.sign("app", "", "RS256", b"\1" * 32)[1]


def test_import_pfx_with_password_and_chain(vault: Vault) -> None:
    ca = make_cert(cn="issuing-ca", key=rsa_key(2048, 3), ca=True)
    leaf = make_cert(cn="imported", key=rsa_key(2048, 4), issuer=ca)
    version = vault.certificates.import_certificate(
        "imported", leaf.pfx("s3cret"), password="s3cret"
    )
    assert version.der == leaf.der and version.chain == (ca.der,)
    policy = vault.certificates.policy("imported")
    assert (policy.issuer, policy.subject, policy.exportable) == ("Unknown", "CN=imported", True)
    _, value = vault.certificates.secret("imported")
    _, _, extra = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
    assert [c.public_bytes(serialization.Encoding.DER) for c in extra] == [ca.der]
    with pytest.raises(BadParameter, match="cannot be read"):
        vault.certificates.import_certificate("imported", leaf.pfx("s3cret"), password="wrong")


def test_import_pem(vault: Vault) -> None:
    leaf = make_cert(cn="pem-import", key=rsa_key(2048, 4))
    version = vault.certificates.import_certificate("pem", leaf.pem())
    assert version.der == leaf.der
    assert vault.certificates.policy("pem").content_type == PEM
    assert vault.keys.get("pem", version.key_version).managed


@pytest.mark.parametrize(
    ("material", "message"),
    [
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "cannot be read"),
        (b"not a pfx", "cannot be read"),
    ],
)
def test_import_garbage_is_bad_parameter(vault: Vault, material: bytes, message: str) -> None:
    with pytest.raises(BadParameter, match=message):
        vault.certificates.import_certificate("bad", material)


def test_import_needs_a_matching_private_key(vault: Vault) -> None:
    leaf = make_cert(cn="x", key=rsa_key(2048, 4))
    cert_only = leaf.cert.public_bytes(serialization.Encoding.PEM)
    with pytest.raises(BadParameter, match="no private key"):
        vault.certificates.import_certificate("bad", cert_only)
    other_key = rsa_key(2048, 5).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BadParameter, match="matches its private key"):
        vault.certificates.import_certificate("bad", cert_only + other_key)


def test_not_found_errors(vault: Vault) -> None:
    with pytest.raises(CertificateNotFound) as caught:
        vault.certificates.get("nope")
    assert (caught.value.status, caught.value.code) == (404, "CertificateNotFound")
    with pytest.raises(SecretNotFound):
        vault.certificates.secret("nope")
    with pytest.raises(CertificateNotFound):
        vault.certificates.operation("nope")


def test_a_certificate_owns_its_key_name(vault: Vault) -> None:
    vault.certificates.create("app", self_signed_policy())
    with pytest.raises(Forbidden, match="managed by the certificate"):
        vault.keys.create("app")


# ---- RBAC ---------------------------------------------------------------------------------

KEY_READ = {"key_get", "key_list", "key_list_versions"}
CERT_READ = {
    "certificate_get",
    "certificate_list",
    "certificate_list_versions",
    "certificate_policy_get",
    "certificate_pending",
}
CERT_WRITE = {"certificate_create", "certificate_import", "certificate_update"}
# What each built-in role grants, written out from Microsoft's role definitions (not derived
# from the emulator's own table).
GRANTS = {
    "Key Vault Administrator": set(OPERATION_DATA_ACTIONS),
    "Key Vault Crypto Officer": KEY_READ
    | {"key_create", "key_import", "key_update", "sign", "verify"},
    "Key Vault Crypto User": KEY_READ | {"key_update", "sign", "verify"},
    "Key Vault Certificates Officer": CERT_READ | CERT_WRITE,
    "Key Vault Certificate User": CERT_READ | KEY_READ | {"secret_get", "secret_list_versions"},
    "Key Vault Secrets User": {"secret_get", "secret_list_versions"},
    "Key Vault Reader": CERT_READ | KEY_READ | {"secret_list_versions"},
}


@pytest.mark.parametrize("role", sorted(GRANTS))
def test_built_in_roles_grant_exactly_their_operations(role: str) -> None:
    rbac = Rbac()
    rbac.assign("p", role)
    granted = {op for op in OPERATION_DATA_ACTIONS if rbac.allows("p", op)}
    assert granted == GRANTS[role]


def test_role_lookup_by_name_id_or_resource_id() -> None:
    crypto_user = "12338af0-0e69-4776-bea7-57ae8d297424"
    assert find_role("key vault crypto user") == find_role(crypto_user)
    assert find_role(f"/providers/Microsoft.Authorization/roleDefinitions/{crypto_user}")
    assert find_role("Owner") is None


def test_custom_roles_use_wildcards_and_ignore_case() -> None:
    rbac = Rbac()
    rbac.assign("p", data_actions=["microsoft.keyvault/vaults/keys/*"])
    assert rbac.allows("p", "sign") and rbac.allows("p", "key_create")
    assert not rbac.allows("p", "certificate_get")
    rbac.assign("q", data_actions=["Microsoft.KeyVault/vaults/keys/sign/action"])
    assert rbac.allows("q", "sign") and not rbac.allows("q", "key_get")


def test_check_raises_forbidden_by_rbac_naming_the_action() -> None:
    rbac = Rbac()
    with pytest.raises(Forbidden) as caught:
        rbac.check("p", "sign", caller="appid=a;oid=p")
    assert caught.value.inner_code == "ForbiddenByRbac"
    assert "Microsoft.KeyVault/vaults/keys/sign/action" in caught.value.message


def test_unassign_one_or_all() -> None:
    rbac = Rbac()
    rbac.assign("p", "Key Vault Crypto User")
    rbac.assign("p", data_actions=["Microsoft.KeyVault/vaults/certificates/read"])
    assert rbac.unassign("p", "Key Vault Crypto User") == 1
    assert not rbac.allows("p", "sign") and rbac.allows("p", "certificate_get")
    assert rbac.unassign("p") == 1 and rbac.assignments("p") == []
    with pytest.raises(ValueError, match="unknown role"):
        rbac.assign("p", "Owner")


# ---- faults, state, persistence -------------------------------------------------------------


def test_faults_apply_count_times_then_disappear() -> None:
    faults = Faults()
    faults.add(Fault("sign", status=429, count=2))
    faults.add(Fault("token", status=503))
    assert [faults.take("sign") is not None for _ in range(3)] == [True, True, False]
    assert all(faults.take("token") for _ in range(5))
    assert faults.clear("token") == 1 and faults.list() == []


def test_default_role_is_administrator_for_the_system_identity() -> None:
    state = new_state()
    principal = state.directory.system_identity.principal_id
    assert all(state.rbac.allows(principal, op) for op in OPERATION_DATA_ACTIONS)


def test_reset_keeps_the_published_identity_and_forgets_the_rest() -> None:
    state = new_state()
    directory = state.directory
    published = (directory.tenant_id, directory.identity_header, directory.system_identity)
    jwks = directory.jwks()
    state.vault.keys.create("k")
    state.rbac.unassign(directory.system_identity.principal_id)
    directory.register_application("app-1", secrets=["s"])
    state.clock.set_offset(60)
    state.reset()
    fresh = state.directory
    assert (fresh.tenant_id, fresh.identity_header, fresh.system_identity) == published
    assert fresh.jwks() == jwks  # tokens issued before the reset stay valid
    assert fresh.applications() == [] and state.vault.keys.names() == []
    assert state.rbac.allows(published[2].principal_id, "sign")
    assert state.clock.offset_seconds == 0


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    state = new_state()
    key = state.vault.keys.import_key("k", rsa_key(2048, 1))
    state.vault.certificates.create("app", self_signed_policy())
    state.vault.certificates.operation("app")
    state.rbac.assign("someone", "Key Vault Crypto User")
    app = state.directory.register_application("app-1", secrets=["s"])
    path = state.save(tmp_path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    loaded = EmulatorState.load(tmp_path)
    assert loaded.directory.tenant_id == state.directory.tenant_id
    assert loaded.directory.get_application("app-1") == app
    assert loaded.vault.keys.get("k").version == key.version
    digest = hashlib.sha256(b"m").digest()
    _, signature = loaded.vault.keys.sign("k", "", "PS256", digest)
    local_verify(rsa_key(2048, 1).public_key(), "PS256", b"m", signature)
    assert loaded.vault.certificates.get("app") == state.vault.certificates.get("app")
    secret, value = loaded.vault.certificates.secret("app")
    assert secret == state.vault.certificates.secret("app")[0]
    _, _, bag = pkcs12.load_key_and_certificates(base64.b64decode(value), None)
    assert [c.public_bytes(serialization.Encoding.DER) for c in bag] == [
        state.vault.certificates.get("app").der
    ]
    assert loaded.rbac.allows("someone", "sign") and not loaded.rbac.allows("someone", "key_create")


def test_load_refuses_unknown_formats(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="unknown state format"):
        EmulatorState.load(tmp_path)


def test_autosave_after_changes_and_flush(tmp_path: Path) -> None:
    state = EmulatorState.open(tmp_path)
    state.vault.keys.import_key("k", rsa_key(2048, 1))
    state.changed()
    state.flush()
    assert EmulatorState.load(tmp_path).vault.keys.names() == ["k"]
    state.vault.keys.import_key("direct", rsa_key(2048, 2))  # no changed(): flush saves anyway
    state.flush()
    assert EmulatorState.load(tmp_path).vault.keys.names() == ["k", "direct"]


def test_the_log_records_a_request_when_it_arrives() -> None:
    log = RequestLog()
    handle = log.begin(LogEntry(1.0, "POST", "/keys/k//sign", "sign", "keyvault"))
    assert [(e.operation, e.status) for e in log.entries(operation="sign")] == [("sign", None)]
    log.finish(handle, status=200, principal="p", fault=False)
    assert [(e.status, e.principal) for e in log.entries(principal="p")] == [(200, "p")]
