"""Issue 4 end to end: SourceType KeyVault against the emulator, through the managed identity.

Counts come from the emulator's request log: what Key Vault and Entra actually served.
"""

from __future__ import annotations

import threading
import time

import jwt
import pytest

import kvassert
from kvassert.errors import KeyVaultError
from tests.e2e.conftest import API, OTHER_API, World


def claims_of(world: World, token: str) -> dict[str, object]:
    keys = jwt.PyJWKClient(
        f"{world.instance}{world.info.tenant_id}/discovery/v2.0/keys",
        ssl_context=__import__("ssl").create_default_context(cafile=world.info.ca_file),
    )
    return jwt.decode(
        token, keys.get_signing_key_from_jwt(token).key, algorithms=["RS256"], audience=API
    )


def test_first_token_costs_one_read_one_sign_one_request_and_hits_cost_nothing(
    world: World,
) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege()
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    world.admin.clear_log()
    with kvassert.from_appsettings(config) as credential:
        token = credential.get_token(f"{API}/.default")
        after_first = world.operations()
        for _ in range(50):
            assert credential.get_token(f"{API}/.default").token == token.token
        assert world.operations() == after_first
    assert after_first["certificate_get"] == 1
    assert after_first["sign"] == 1
    assert after_first["token"] == 1
    assert "secret_get" not in world.operations(ok_only=False)
    assert "key_get" not in world.operations(ok_only=False)
    claims = claims_of(world, token.token)
    assert claims["appid"] == client_id
    assert claims["appidacr"] == "2"  # certificate credential
    assert claims["roles"] == ["Data.Read"]


def test_32_cold_threads_cost_one_sign_and_one_token_request(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    world.admin.clear_log()
    world.admin.add_fault("token", latency_ms=200)  # keep the window open for all threads
    tokens: list[str] = []
    with kvassert.from_appsettings(config) as credential:
        barrier = threading.Barrier(32)

        def call() -> None:
            barrier.wait()
            tokens.append(credential.get_token(f"{API}/.default").token)

        threads = [threading.Thread(target=call) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(tokens) == 32 and len(set(tokens)) == 1
    counts = world.operations()
    assert counts["sign"] == 1
    assert counts["token"] == 1


def test_removing_sign_gives_an_actionable_error(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege(["Microsoft.KeyVault/vaults/certificates/read"])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config) as credential:
        with pytest.raises(KeyVaultError) as info:
            credential.get_token(f"{API}/.default")
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
    with kvassert.from_appsettings(config) as credential:
        with pytest.raises(kvassert.CredentialUnavailableError, match="certificates/read"):
            credential.get_token(f"{API}/.default")


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
    with kvassert.from_appsettings(config) as credential:
        assertion = credential.client_assertion()
        header = jwt.get_unverified_header(assertion)
        assert header["alg"] == algorithm
        assert ("x5c" in header) is send_x5c
        assert ("x5t#S256" in header) is (algorithm == "PS256")
        token = credential.get_token(f"{API}/.default")
    claims = claims_of(world, token.token)
    assert claims["appid"] == client_id
    assert claims["roles"] == ["Data.Read"]
    token_requests = [e for e in world.admin.log() if e["operation"] == "token"]
    expected = "/oauth2/token" if version == "v1" else "/oauth2/v2.0/token"
    assert token_requests[-1]["path"].endswith(expected)


def test_msal_and_azure_identity_use_the_assertion_callable(world: World) -> None:
    import msal
    from azure.identity import ClientAssertionCredential

    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    authority = f"{world.instance}{world.info.tenant_id}"
    with kvassert.from_appsettings(config) as credential:
        app = msal.ConfidentialClientApplication(
            client_id,
            authority=authority,
            client_credential={"client_assertion": credential.client_assertion},
            instance_discovery=False,
            verify=world.info.ca_file,
        )
        result = app.acquire_token_for_client(scopes=[f"{API}/.default"])
        assert "access_token" in result, result.get("error_description")
        assert claims_of(world, result["access_token"])["appid"] == client_id

        azure_credential = ClientAssertionCredential(
            world.info.tenant_id,
            client_id,
            func=credential.client_assertion,
            authority=world.instance,
            disable_instance_discovery=True,
            connection_verify=world.info.ca_file,
        )
        token = azure_credential.get_token(f"{API}/.default")
        assert claims_of(world, token.token)["appid"] == client_id


def test_rotation_is_picked_up_with_exactly_one_extra_token_request(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config) as credential:
        credential.get_token(f"{API}/.default")
        before = credential.token_requests
        # Rotate: a new version in the vault, registered on the app; the old one removed.
        rotated = world.create_certificate("app-cert")
        world.admin.register_application(
            client_id, certificates=[bytes(rotated.cer)], app_roles_granted={API: ["Data.Read"]}
        )
        token = credential.get_token(f"{OTHER_API}/.default")
        assert token.token
        assert credential.token_requests == before + 2  # rejected once, re-read, retried once
        versions = {
            e["path"].split("/")[3] for e in world.admin.log(operation="sign") if e["status"] == 200
        }
        assert len(versions) == 2  # signed with the old key version, then the new one


@pytest.mark.parametrize("offset", [600, -600])
def test_clock_skew_against_the_emulator(world: World, offset: int) -> None:
    world.admin.set_clock(offset)  # the whole cloud (vault and Entra) is off by `offset`
    try:
        world.create_certificate("app-cert")
        client_id = world.register_app(vault_certificates=("app-cert",))
        config = world.appsettings(client_id, [world.vault_entry("app-cert")])
        with kvassert.from_appsettings(config) as credential:
            credential.get_token(f"{API}/.default")
            if offset > 0:
                # Entra allows 5 minutes of skew: a 10-minute assertion whose exp is now at
                # the server is still accepted, with no correction needed.
                assert credential.token_requests == 1
            else:
                # nbf 10 minutes in the server's future: AADSTS700024, corrected from the Date
                # header, and accepted on the single retry.
                assert credential.token_requests == 2
                assert abs(credential.clock_offset - offset) < 5
            first = credential.token_requests
            credential.get_token(f"{OTHER_API}/.default")
            assert credential.token_requests == first + 1  # the learned offset is reused
    finally:
        world.admin.set_clock(0)


def test_an_unregistered_new_version_falls_back_to_the_accepted_one(world: World) -> None:
    """Key Vault makes a renewed version current at once; until its public key is registered,
    kvassert keeps signing with the version Entra last accepted."""
    first = world.create_certificate("app-cert")
    client_id = world.register_app(certificates=[bytes(first.cer)])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config, certificate_refresh_interval=1) as credential:
        credential.get_token(f"{API}/.default")
        world.create_certificate("app-cert")  # renewed in the vault, not registered on the app
        time.sleep(1.1)  # let the scheduled re-read fall due
        before = credential.token_requests
        token = credential.get_token(f"{OTHER_API}/.default")
        assert token.token
        # the scheduled re-read switched to the new version, Entra refused it, kvassert fell
        # back to the accepted version and retried once
        assert credential.token_requests == before + 2
        signed = [
            e["path"].split("/")[3] for e in world.admin.log(operation="sign") if e["status"] == 200
        ]
        assert signed[0] == signed[-1] != signed[-2]
