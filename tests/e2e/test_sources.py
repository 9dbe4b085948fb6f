"""Issue 5: every SourceType end to end against the emulator, and ordered fallback."""

from __future__ import annotations

import base64
import os
import time
import uuid
from pathlib import Path

import jwt
import pytest
from azure.identity import ManagedIdentityCredential

import kvassert
from tests.certs import make_cert
from tests.e2e.conftest import API, World

SCOPE = f"{API}/.default"


def appid_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["appid"])


def test_path_pem_and_pfx(world: World, tmp_path: Path) -> None:
    leaf = make_cert(days=365)
    client_id = world.register_app(certificates=[leaf.der])
    pem = tmp_path / "client.pem"
    pem.write_bytes(leaf.pem("pem-pass"))
    pfx = tmp_path / "client.pfx"
    pfx.write_bytes(leaf.pfx("pfx-pass"))
    for path, password in ((pem, "pem-pass"), (pfx, "pfx-pass")):
        entry = {
            "SourceType": "Path",
            "CertificateDiskPath": str(path),
            "CertificatePassword": password,
        }
        with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
            assert appid_of(credential.get_token(SCOPE).token) == client_id


def test_base64_encoded(world: World) -> None:
    leaf = make_cert(days=365)
    client_id = world.register_app(certificates=[leaf.der])
    entry = {
        "SourceType": "Base64Encoded",
        "Base64EncodedValue": base64.b64encode(leaf.pfx()).decode(),
    }
    with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
        assert appid_of(credential.get_token(SCOPE).token) == client_id


def test_client_secret_as_list_entry_and_top_level(world: World) -> None:
    client_id = world.register_app(secrets=["s3cr3t-value"])
    entry = {"SourceType": "ClientSecret", "ClientSecret": "s3cr3t-value"}
    with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
        token = credential.get_token(SCOPE).token
    assert jwt.decode(token, options={"verify_signature": False})["appidacr"] == "1"
    config = world.appsettings(client_id, [], ClientSecret="s3cr3t-value")
    with kvassert.from_appsettings(config) as credential:
        assert appid_of(credential.get_token(SCOPE).token) == client_id


def test_signed_assertion_file_is_reread_when_it_changes(world: World, tmp_path: Path) -> None:
    identity = ManagedIdentityCredential()
    client_id = world.register_app(federated_identities=[world.info.principal_id])
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("not-a-jwt")
    entry = {
        "SourceType": "SignedAssertionFilePath",
        "SignedAssertionFileDiskPath": str(token_file),
    }
    with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
        with pytest.raises(kvassert.CredentialUnavailableError, match="compact JWT"):
            credential.get_token(SCOPE)
        # What the kubelet does: write a fresh projected token into the same file.
        token_file.write_text(identity.get_token("api://AzureADTokenExchange/.default").token)
        stamp = time.time() + 5
        os.utime(token_file, (stamp, stamp))
        assert appid_of(credential.get_token(SCOPE).token) == client_id


def test_signed_assertion_from_managed_identity(world: World) -> None:
    client_id = world.register_app(federated_identities=[world.info.principal_id])
    entry = {"SourceType": "SignedAssertionFromManagedIdentity"}
    with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
        token = credential.get_token(SCOPE).token
    assert appid_of(token) == client_id
    # The assertion was the managed identity's own token: the identity endpoint served it.
    identity_calls = world.admin.log(operation="identity")
    assert {e["principal"] for e in identity_calls} == {world.info.principal_id}


def test_user_assigned_identity_is_selected_by_managed_identity_client_id(world: World) -> None:
    uami = world.admin.create_identity()
    world.admin.assign_role(
        uami["principal_id"],
        data_actions=[
            "Microsoft.KeyVault/vaults/certificates/read",
            "Microsoft.KeyVault/vaults/keys/sign/action",
        ],
    )
    world.create_certificate("app-cert")
    world.admin.remove_role(world.info.principal_id)  # the system identity can do nothing now
    client_id = world.register_app(vault_certificates=("app-cert",))
    entry = {**world.vault_entry("app-cert"), "ManagedIdentityClientId": uami["client_id"]}
    world.admin.clear_log()
    with kvassert.from_appsettings(world.appsettings(client_id, [entry])) as credential:
        assert appid_of(credential.get_token(SCOPE).token) == client_id
    signers = {e["principal"] for e in world.admin.log(operation="sign") if e["status"] == 200}
    assert signers == {uami["principal_id"]}


def test_windows_store_sources_fail_clearly_and_skip_is_honoured(
    world: World, tmp_path: Path
) -> None:
    leaf = make_cert(days=365)
    client_id = world.register_app(certificates=[leaf.der])
    pem = tmp_path / "c.pem"
    pem.write_bytes(leaf.pem())
    entries = [
        {
            "SourceType": "StoreWithThumbprint",
            "CertificateStorePath": "CurrentUser/My",
            "CertificateThumbprint": "ABC",
        },
        {
            "SourceType": "KeyVault",
            "KeyVaultUrl": world.info.vault_url,
            "KeyVaultCertificateName": "never-read",
            "Skip": True,
        },
        {"SourceType": "Path", "CertificateDiskPath": str(pem)},
    ]
    world.admin.clear_log()
    with kvassert.from_appsettings(world.appsettings(client_id, entries)) as credential:
        assert appid_of(credential.get_token(SCOPE).token) == client_id
    assert not world.admin.log(operation="certificate_get")  # the skipped entry was never used
    only_store = world.appsettings(client_id, entries[:1])
    with kvassert.from_appsettings(only_store) as credential:
        with pytest.raises(
            kvassert.CredentialUnavailableError, match="Windows certificate store is not available"
        ):
            credential.get_token(SCOPE)


def test_fallback_over_vault_403_disabled_certificate_and_rejected_certificate(
    world: World, tmp_path: Path
) -> None:
    world.create_certificate("forbidden")
    world.create_certificate("disabled")
    world.least_privilege(["Microsoft.KeyVault/vaults/keys/sign/action"])  # no cert read
    unregistered = make_cert(days=365)
    good = make_cert(days=365, cn="good")
    client_id = world.register_app(certificates=[good.der])
    bad_pem, good_pem = tmp_path / "bad.pem", tmp_path / "good.pem"
    bad_pem.write_bytes(unregistered.pem())
    good_pem.write_bytes(good.pem())
    entries = [
        world.vault_entry("forbidden"),
        {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pfx")},
        {"SourceType": "Path", "CertificateDiskPath": str(bad_pem)},
        {"SourceType": "Path", "CertificateDiskPath": str(good_pem)},
    ]
    with kvassert.from_appsettings(world.appsettings(client_id, entries)) as credential:
        assert appid_of(credential.get_token(SCOPE).token) == client_id
        assert credential.token_requests == 2  # the unregistered cert was tried and refused


def test_all_failing_lists_each_credential_and_why(world: World, tmp_path: Path) -> None:
    client_id = world.register_app()
    entries = [
        {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pfx")},
        {"SourceType": "ClientSecret", "ClientSecret": "wrong-" + uuid.uuid4().hex},
    ]
    with kvassert.from_appsettings(world.appsettings(client_id, entries)) as credential:
        with pytest.raises(kvassert.TokenRequestError) as info:
            credential.get_token(SCOPE)
    # A wrong secret is not a "credential problem" code: it is reported as itself, at once.
    assert info.value.aadsts == 7000215
    assert "wrong-" not in str(info.value)
