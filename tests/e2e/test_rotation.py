"""Issue 5 rotation details: disabled versions skipped, expiry warning, one re-reader at a time."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

import kvassert
from tests.e2e.conftest import API, World


def test_a_disabled_newest_version_is_skipped(world: World) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    first = world.create_certificate("app-cert")
    second = world.create_certificate("app-cert")
    with CertificateClient(
        world.info.vault_url, ManagedIdentityCredential(), verify_challenge_resource=False
    ) as client:
        client.update_certificate_properties(
            "app-cert", version=second.properties.version, enabled=False
        )
    client_id = world.register_app(certificates=[bytes(first.cer)])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config) as credential:
        assert credential.get_token(f"{API}/.default").token
        signer = credential.sources[0].vault_signer  # type: ignore[attr-defined]
        assert signer.certificate.version == first.properties.version


def test_expiry_within_the_warning_window_is_logged_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.create_certificate("app-cert")  # valid for 12 months
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config, expiry_warning_days=30) as credential:
        credential.get_token(f"{API}/.default")
    assert "expires on" not in caplog.text
    with kvassert.from_appsettings(config, expiry_warning_days=400) as credential:
        credential.get_token(f"{API}/.default")
        credential.sources[0].reload()
    warnings = [r for r in caplog.records if "expires on" in r.getMessage()]
    assert len(warnings) == 1
    assert "rotate it in Key Vault" in warnings[0].getMessage()


def test_only_one_thread_rereads_the_certificate(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    apis = [f"api://kvassert-e2e-extra-{n}" for n in range(6)]
    for uri in apis:
        world.admin.register_application(
            str(uuid.uuid4()), identifier_uris=[uri], app_roles=["Data.Read"]
        )
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config, certificate_refresh_interval=1) as credential:
        credential.get_token(f"{API}/.default")
        time.sleep(1.1)  # the certificate metadata is now due for a re-read
        world.admin.add_fault("certificate_get", latency_ms=300)  # keep the re-read in flight
        before = len(world.admin.log(operation="certificate_get"))
        barrier = threading.Barrier(len(apis))

        def call(uri: str) -> None:
            barrier.wait()
            credential.get_token(f"{uri}/.default")

        threads = [threading.Thread(target=call, args=(uri,)) for uri in apis]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        world.admin.clear_faults()
    assert len(world.admin.log(operation="certificate_get")) - before == 1
