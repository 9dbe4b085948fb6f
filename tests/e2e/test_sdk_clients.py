"""The kvassert credential as the credential of real Azure SDK clients (and of BearerAuth)
against the emulated vault.

The app's own identity is a registered app whose credential is a vault certificate, granted Key
Vault Crypto User on the vault; the managed identity keeps only what signing needs
(certificates/read, keys/sign). So a key read that succeeds was authorised with the app's token,
the one kvassert obtained with a Key Vault signature.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests
from azure.core.credentials import TokenCredential

import kvassert
import kvassert.aio
from tests.e2e.conftest import World

VAULT_SCOPE = "https://vault.azure.net/.default"


def app_with_vault_role(world: World) -> tuple[str, Path]:
    """(the app's service principal id, its appsettings.json)."""
    world.create_certificate("app-cert")
    client_id = str(uuid.uuid4())
    app = world.admin.register_application(client_id, vault_certificates=["app-cert"])
    world.admin.assign_role(app["principal_id"], "Key Vault Crypto User")
    world.least_privilege()
    return app["principal_id"], world.appsettings(client_id, [world.vault_entry("app-cert")])


def key_readers(world: World) -> set[str]:
    return {e["principal"] for e in world.admin.log(operation="key_get") if e["status"] == 200}


def test_key_client_with_the_kvassert_credential(world: World) -> None:
    from azure.keyvault.keys import KeyClient

    principal, config = app_with_vault_role(world)
    world.admin.clear_log()
    with (
        kvassert.from_appsettings(config) as credential,
        KeyClient(
            world.info.vault_url,
            credential=credential,
            verify_challenge_resource=False,
            connection_verify=world.info.ca_file,
        ) as client,
    ):
        key = client.get_key("app-cert")
        client.get_key("app-cert")
        assert credential.token_requests == 1  # the SDK's second call used the cached token
    assert key.id.startswith(f"{world.info.vault_url}/keys/app-cert/")
    assert key_readers(world) == {principal}
    assert world.operations()["sign"] == 1


def test_async_key_client_with_the_async_kvassert_credential(world: World) -> None:
    from azure.keyvault.keys.aio import KeyClient

    principal, config = app_with_vault_role(world)
    world.admin.clear_log()

    async def main() -> tuple[str, int]:
        async with (
            kvassert.aio.from_appsettings(config) as credential,
            KeyClient(
                world.info.vault_url,
                credential=credential,
                verify_challenge_resource=False,
                connection_verify=world.info.ca_file,
            ) as client,
        ):
            key = await client.get_key("app-cert")
            await client.get_key("app-cert")
            return key.id, credential.token_requests

    key_id, token_requests = asyncio.run(main())
    assert key_id.startswith(f"{world.info.vault_url}/keys/app-cert/")
    assert token_requests == 1
    assert key_readers(world) == {principal}
    assert world.operations()["sign"] == 1


def test_a_missing_role_is_the_sdk_s_403_not_a_kvassert_error(world: World) -> None:
    """kvassert gets the token; what the token allows is the vault's call."""
    from azure.core.exceptions import HttpResponseError
    from azure.keyvault.keys import KeyClient

    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))  # no vault role
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with (
        kvassert.from_appsettings(config) as credential,
        KeyClient(
            world.info.vault_url,
            credential=credential,
            verify_challenge_resource=False,
            connection_verify=world.info.ca_file,
        ) as client,
        pytest.raises(HttpResponseError) as info,
    ):
        client.get_key("app-cert")
    assert info.value.status_code == 403


@pytest.mark.parametrize("kind", ["kvassert", "azure-identity"])
def test_bearer_auth_calls_the_vault_rest_api(world: World, kind: str) -> None:
    from azure.identity import ClientAssertionCredential

    principal, config = app_with_vault_role(world)
    world.admin.clear_log()
    with ExitStack() as stack:
        kv_credential = stack.enter_context(kvassert.from_appsettings(config))
        credential: TokenCredential = kv_credential
        if kind == "azure-identity":
            credential = stack.enter_context(
                ClientAssertionCredential(
                    world.info.tenant_id,
                    kv_credential.settings.client_id,
                    func=kv_credential.client_assertion,
                    authority=world.instance,
                    disable_instance_discovery=True,
                    connection_verify=world.info.ca_file,
                )
            )
        auth = kvassert.BearerAuth(credential, VAULT_SCOPE)
        with requests.Session() as session:
            for _ in range(3):
                response = session.get(
                    f"{world.info.vault_url}/keys/app-cert",
                    params={"api-version": "7.5"},
                    auth=auth,
                    verify=world.info.ca_file,
                    timeout=10,
                )
                assert response.status_code == 200, response.text
    assert response.json()["key"]["kid"].startswith(f"{world.info.vault_url}/keys/app-cert/")
    assert key_readers(world) == {principal}
    assert world.operations()["token"] == 1  # three calls, one token: the credential's cache
