"""The async credential end to end against the emulator: the sync credential's tests
(``test_keyvault_signing``, ``test_sources``) with ``kvassert.aio``.

Counts come from the emulator's request log: what Key Vault and Entra actually served.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest

import kvassert
import kvassert.aio
from kvassert.errors import KeyVaultError
from tests.certs import make_cert
from tests.e2e.conftest import API, LEAST_PRIVILEGE, OTHER_API, World
from tests.e2e.test_keyvault_signing import claims_of

SCOPE = f"{API}/.default"
T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def appid_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["appid"])


def vault_app(world: World, *, least_privilege: bool = True) -> tuple[str, Path]:
    """An app whose credential is the vault certificate ``app-cert``: (client id, appsettings)."""
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    if least_privilege:
        world.least_privilege()
    return client_id, world.appsettings(client_id, [world.vault_entry("app-cert")])


def test_first_token_costs_one_read_one_sign_one_request_and_hits_cost_nothing(
    world: World,
) -> None:
    client_id, config = vault_app(world)
    world.admin.clear_log()

    async def main() -> tuple[Any, Any, dict[str, int]]:
        async with kvassert.aio.from_appsettings(config) as credential:
            token = await credential.get_token(SCOPE)
            after_first = world.operations()
            for _ in range(50):
                assert (await credential.get_token(SCOPE)).token == token.token
            info = await credential.get_token_info(SCOPE)
            assert world.operations() == after_first
            return token, info, after_first

    token, info, after_first = run(main())
    assert after_first["certificate_get"] == 1
    assert after_first["sign"] == 1
    assert after_first["token"] == 1
    assert "secret_get" not in world.operations(ok_only=False)
    assert "key_get" not in world.operations(ok_only=False)
    assert info.token == token.token and token.expires_on > info.refresh_on > time.time()
    claims = claims_of(world, token.token)
    assert claims["appid"] == client_id
    assert claims["appidacr"] == "2"  # certificate credential
    assert claims["roles"] == ["Data.Read"]


def test_64_cold_coroutines_cost_one_sign_and_one_token_request(world: World) -> None:
    _, config = vault_app(world, least_privilege=False)
    world.admin.clear_log()
    world.admin.add_fault("token", latency_ms=200)  # keep the window open for every coroutine

    async def main() -> list[str]:
        async with kvassert.aio.from_appsettings(config) as credential:
            tokens = await asyncio.gather(*(credential.get_token(SCOPE) for _ in range(64)))
            return [t.token for t in tokens]

    tokens = run(main())
    assert len(tokens) == 64 and len(set(tokens)) == 1
    counts = world.operations()
    assert counts["certificate_get"] == 1
    assert counts["sign"] == 1
    assert counts["token"] == 1


def test_removing_sign_gives_an_actionable_error(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege(["Microsoft.KeyVault/vaults/certificates/read"])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])

    async def main() -> None:
        async with kvassert.aio.from_appsettings(config) as credential:
            await credential.get_token(SCOPE)

    with pytest.raises(KeyVaultError) as info:
        run(main())
    err = info.value
    assert err.status == 403 and err.inner_code == "ForbiddenByRbac"
    assert "grant Key Vault Crypto User" in str(err)
    assert world.info.principal_id in str(err)
    assert world.info.vault_url in str(err)


def test_missing_certificate_read_is_reported_as_unavailable(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege(["Microsoft.KeyVault/vaults/keys/sign/action"])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])

    async def main() -> None:
        async with kvassert.aio.from_appsettings(config) as credential:
            await credential.get_token(SCOPE)

    with pytest.raises(kvassert.CredentialUnavailableError, match="certificates/read"):
        run(main())


@pytest.mark.parametrize(
    ("route", "body", "outcome", "match"),
    [
        (
            "certificate_get",
            "<html>maintenance</html>",
            kvassert.CredentialUnavailableError,
            "not a certificate",
        ),
        ("sign", '{"kid": "x", "val', KeyVaultError, "Key Vault sign on .* (failed|answered)"),
    ],
)
def test_garbage_vault_bodies_are_clear_errors(
    world: World, route: str, body: str, outcome: type[Exception], match: str
) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    world.admin.add_fault(route, status=200, body=body)

    async def main() -> None:
        async with kvassert.aio.from_appsettings(config) as credential:
            await credential.get_token(SCOPE)

    try:
        with pytest.raises(outcome, match=match):
            run(main())
    finally:
        world.admin.clear_faults()


@pytest.mark.parametrize(
    ("key_type", "key_size", "algorithm", "send_x5c", "version"),
    [
        ("RSA", 2048, "PS256", False, "v2"),
        ("RSA-HSM", 2048, "PS256", True, "v2"),
        ("RSA", 2048, "RS256", False, "v1"),
        ("RSA-HSM", 4096, "RS256", True, "v1"),
    ],
)
def test_key_types_sizes_algorithms_x5c_and_v1(
    world: World, key_type: str, key_size: int, algorithm: str, send_x5c: bool, version: str
) -> None:
    certificate = world.create_certificate("app-cert", key_type=key_type, key_size=key_size)
    assert certificate.policy.exportable is False
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege()
    config = world.appsettings(
        client_id,
        [world.vault_entry("app-cert")],
        SendX5C=send_x5c,
        Kvassert={"SigningAlgorithm": algorithm, "TokenVersion": version},
    )

    async def main() -> tuple[str, str]:
        async with kvassert.aio.from_appsettings(config) as credential:
            assertion = await credential.client_assertion()
            return assertion, (await credential.get_token(SCOPE)).token

    assertion, token = run(main())
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == algorithm
    assert ("x5c" in header) is send_x5c
    assert ("x5t#S256" in header) is (algorithm == "PS256")
    claims = claims_of(world, token)
    assert claims["appid"] == client_id
    assert claims["roles"] == ["Data.Read"]
    token_requests = [e for e in world.admin.log() if e["operation"] == "token"]
    expected = "/oauth2/token" if version == "v1" else "/oauth2/v2.0/token"
    assert token_requests[-1]["path"].endswith(expected)


def test_the_async_assertion_is_accepted_by_entra_through_msal(world: World) -> None:
    import msal

    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])

    async def main() -> str:
        async with kvassert.aio.from_appsettings(config) as credential:
            return await credential.client_assertion()

    assertion = run(main())
    app = msal.ConfidentialClientApplication(
        client_id,
        authority=f"{world.instance}{world.info.tenant_id}",
        client_credential={"client_assertion": lambda: assertion},
        instance_discovery=False,
        verify=world.info.ca_file,
    )
    result = app.acquire_token_for_client(scopes=[SCOPE])
    assert "access_token" in result, result.get("error_description")
    assert claims_of(world, result["access_token"])["appid"] == client_id


def test_rotation_is_picked_up_with_exactly_one_extra_token_request(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])

    async def main() -> None:
        async with kvassert.aio.from_appsettings(config) as credential:
            await credential.get_token(SCOPE)
            before = credential.token_requests
            # Rotate: a new version in the vault, registered on the app; the old one removed.
            rotated = world.create_certificate("app-cert")
            world.admin.register_application(
                client_id,
                certificates=[bytes(rotated.cer)],
                app_roles_granted={API: ["Data.Read"]},
            )
            assert (await credential.get_token(f"{OTHER_API}/.default")).token
            assert credential.token_requests == before + 2  # rejected, re-read, retried once

    run(main())
    versions = {
        e["path"].split("/")[3] for e in world.admin.log(operation="sign") if e["status"] == 200
    }
    assert len(versions) == 2  # signed with the old key version, then the new one


def test_an_unregistered_new_version_falls_back_to_the_accepted_one(world: World) -> None:
    """Key Vault makes a renewed version current at once; until its public key is registered,
    kvassert keeps signing with the version Entra last accepted."""
    first = world.create_certificate("app-cert")
    client_id = world.register_app(certificates=[bytes(first.cer)])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])

    async def main() -> None:
        async with kvassert.aio.from_appsettings(
            config, certificate_refresh_interval=1
        ) as credential:
            await credential.get_token(SCOPE)
            world.create_certificate("app-cert")  # renewed in the vault, not registered
            await asyncio.sleep(1.1)  # let the scheduled re-read fall due
            before = credential.token_requests
            assert (await credential.get_token(f"{OTHER_API}/.default")).token
            # the scheduled re-read switched to the new version, Entra refused it, kvassert
            # fell back to the accepted version and retried once
            assert credential.token_requests == before + 2

    run(main())
    signed = [
        e["path"].split("/")[3] for e in world.admin.log(operation="sign") if e["status"] == 200
    ]
    assert signed[0] == signed[-1] != signed[-2]


@pytest.mark.parametrize("offset", [600, -600])
def test_clock_skew_against_the_emulator(world: World, offset: int) -> None:
    world.admin.set_clock(offset)  # the whole cloud (vault and Entra) is off by `offset`
    try:
        world.create_certificate("app-cert")
        client_id = world.register_app(vault_certificates=("app-cert",))
        config = world.appsettings(client_id, [world.vault_entry("app-cert")])

        async def main() -> None:
            async with kvassert.aio.from_appsettings(config) as credential:
                await credential.get_token(SCOPE)
                if offset > 0:
                    # Entra allows 5 minutes of skew: a 10-minute assertion whose exp is now
                    # at the server is still accepted, with no correction needed.
                    assert credential.token_requests == 1
                else:
                    # nbf 10 minutes in the server's future: AADSTS700024, corrected from the
                    # Date header, and accepted on the single retry.
                    assert credential.token_requests == 2
                    assert abs(credential.clock_offset - offset) < 5
                first = credential.token_requests
                await credential.get_token(f"{OTHER_API}/.default")
                assert credential.token_requests == first + 1  # the learned offset is reused

        run(main())
    finally:
        world.admin.set_clock(0)


def test_claims_challenge_bypasses_the_cache(world: World) -> None:
    _, config = vault_app(world)
    claims = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'

    async def main() -> tuple[str, str, str, int]:
        async with kvassert.aio.from_appsettings(config) as credential:
            first = (await credential.get_token(SCOPE)).token
            challenged = (await credential.get_token(SCOPE, claims=claims)).token
            after = (await credential.get_token(SCOPE)).token
            return first, challenged, after, credential.token_requests

    world.admin.clear_log()
    first, challenged, after, requests_sent = run(main())
    assert requests_sent == 2 and world.operations()["token"] == 2
    assert challenged != first and after == challenged  # the fresh token replaced the cached one


def test_fallback_over_vault_403_disabled_certificate_and_rejected_certificate(
    world: World, tmp_path: Path
) -> None:
    world.create_certificate("forbidden")
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
    config = world.appsettings(client_id, entries)

    async def main() -> tuple[str, int]:
        async with kvassert.aio.from_appsettings(config) as credential:
            return (await credential.get_token(SCOPE)).token, credential.token_requests

    token, requests_sent = run(main())
    assert appid_of(token) == client_id
    assert requests_sent == 2  # the unregistered cert was tried and refused


def test_all_failing_lists_each_credential_and_why(world: World, tmp_path: Path) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app()  # no credential registered
    entries = [
        {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pfx")},
        world.vault_entry("app-cert"),
    ]
    config = world.appsettings(client_id, entries)

    async def main() -> None:
        async with kvassert.aio.from_appsettings(config) as credential:
            await credential.get_token(SCOPE)

    with pytest.raises(kvassert.AllCredentialsFailedError) as info:
        run(main())
    labels = [label for label, _ in info.value.failures]
    assert [label.split(" ")[0] for label in labels] == [
        "AzureAd:ClientCredentials:0",
        "AzureAd:ClientCredentials:1",
    ]
    assert "missing.pfx" in info.value.failures[0][1]
    assert "700027" in info.value.failures[1][1]


def test_local_secret_and_file_sources(world: World, tmp_path: Path) -> None:
    leaf = make_cert(days=365)
    token_file = tmp_path / "azure-identity-token"
    client_id = world.register_app(
        certificates=[leaf.der],
        secrets=["s3cr3t-value"],
        federated_identities=[world.info.principal_id],
    )
    pem = tmp_path / "client.pem"
    pem.write_bytes(leaf.pem("pem-pass"))
    entries: list[dict[str, Any]] = [
        {"SourceType": "Path", "CertificateDiskPath": str(pem), "CertificatePassword": "pem-pass"},
        {
            "SourceType": "Base64Encoded",
            "Base64EncodedValue": base64.b64encode(leaf.pfx()).decode(),
        },
        {"SourceType": "ClientSecret", "ClientSecret": "s3cr3t-value"},
        {"SourceType": "SignedAssertionFilePath", "SignedAssertionFileDiskPath": str(token_file)},
    ]

    async def main(entry: dict[str, Any]) -> str:
        async with kvassert.aio.from_appsettings(world.appsettings(client_id, [entry])) as cred:
            return (await cred.get_token(SCOPE)).token

    # What the kubelet does: write a projected token (here, the managed identity's) to the file.
    from azure.identity import ManagedIdentityCredential

    with ManagedIdentityCredential(connection_verify=world.info.ca_file) as identity:
        token_file.write_text(identity.get_token("api://AzureADTokenExchange/.default").token)
    stamp = time.time() + 5
    os.utime(token_file, (stamp, stamp))
    acrs = []
    for entry in entries:
        token = run(main(entry))
        assert appid_of(token) == client_id, entry["SourceType"]
        acrs.append(jwt.decode(token, options={"verify_signature": False})["appidacr"])
    assert acrs == ["2", "2", "1", "2"]


def test_signed_assertion_from_managed_identity(world: World) -> None:
    client_id = world.register_app(federated_identities=[world.info.principal_id])
    config = world.appsettings(client_id, [{"SourceType": "SignedAssertionFromManagedIdentity"}])

    async def main() -> str:
        async with kvassert.aio.from_appsettings(config) as credential:
            return (await credential.get_token(SCOPE)).token

    assert appid_of(run(main())) == client_id
    identity_calls = world.admin.log(operation="identity")
    assert {e["principal"] for e in identity_calls} == {world.info.principal_id}


def test_user_assigned_identity_is_selected_by_managed_identity_client_id(world: World) -> None:
    uami = world.admin.create_identity()
    world.admin.assign_role(uami["principal_id"], data_actions=LEAST_PRIVILEGE)
    world.create_certificate("app-cert")
    world.admin.remove_role(world.info.principal_id)  # the system identity can do nothing now
    client_id = world.register_app(vault_certificates=("app-cert",))
    entry = {**world.vault_entry("app-cert"), "ManagedIdentityClientId": uami["client_id"]}
    config = world.appsettings(client_id, [entry])
    world.admin.clear_log()

    async def main() -> str:
        async with kvassert.aio.from_appsettings(config) as credential:
            return (await credential.get_token(SCOPE)).token

    assert appid_of(run(main())) == client_id
    signers = {e["principal"] for e in world.admin.log(operation="sign") if e["status"] == 200}
    assert signers == {uami["principal_id"]}


def test_windows_store_sources_fail_clearly_and_skip_is_honoured(
    world: World, tmp_path: Path
) -> None:
    leaf = make_cert(days=365)
    client_id = world.register_app(certificates=[leaf.der])
    pem = tmp_path / "c.pem"
    pem.write_bytes(leaf.pem())
    store = {
        "SourceType": "StoreWithThumbprint",
        "CertificateStorePath": "CurrentUser/My",
        "CertificateThumbprint": "ABC",
    }
    skipped = {**world.vault_entry("never-read"), "Skip": True}
    world.admin.clear_log()

    async def main(entries: list[dict[str, Any]]) -> str:
        async with kvassert.aio.from_appsettings(world.appsettings(client_id, entries)) as cred:
            return (await cred.get_token(SCOPE)).token

    path_entry = {"SourceType": "Path", "CertificateDiskPath": str(pem)}
    assert appid_of(run(main([store, skipped, path_entry]))) == client_id
    assert not world.admin.log(operation="certificate_get")  # the skipped entry was never used
    with pytest.raises(
        kvassert.CredentialUnavailableError, match="Windows certificate store is not available"
    ):
        run(main([store]))
