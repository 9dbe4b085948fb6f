"""End-to-end fixtures: the in-process emulator, an App Service-like environment, and helpers
that create vault certificates and app registrations the way an operator would."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvassert.emulator import Emulator

API = "api://kvassert-e2e-api"
OTHER_API = "api://kvassert-e2e-other"
LEAST_PRIVILEGE = [
    "Microsoft.KeyVault/vaults/certificates/read",
    "Microsoft.KeyVault/vaults/keys/sign/action",
]


@pytest.fixture(scope="session")
def emulator() -> Iterator[Emulator]:
    with Emulator() as running:
        yield running


@dataclass
class World:
    emulator: Emulator
    tmp_path: Path

    @property
    def info(self) -> Any:
        return self.emulator.info

    @property
    def admin(self) -> Any:
        return self.emulator.admin

    @property
    def instance(self) -> str:
        return self.info.authority.rstrip("/") + "/"

    def create_certificate(
        self,
        name: str,
        *,
        key_type: str = "RSA",
        key_size: int = 2048,
        exportable: bool = False,
    ) -> Any:
        """Create (or rotate) a certificate with the real SDK, as an operator."""
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.certificates import CertificateClient, CertificatePolicy

        operator = ManagedIdentityCredential()
        with CertificateClient(
            self.info.vault_url, operator, verify_challenge_resource=False
        ) as client:
            policy = CertificatePolicy(
                issuer_name="Self",
                subject=f"CN={name}",
                exportable=exportable,
                key_type=key_type,
                key_size=key_size,
                reuse_key=False,
                validity_in_months=12,
            )
            return client.begin_create_certificate(name, policy).result()

    def register_app(self, *, vault_certificates: tuple[str, ...] = (), **extra: Any) -> str:
        client_id = str(uuid.uuid4())
        self.admin.register_application(
            client_id,
            vault_certificates=list(vault_certificates),
            app_roles_granted={API: ["Data.Read"]},
            **extra,
        )
        return client_id

    def least_privilege(self, actions: list[str] | None = None) -> None:
        """Leave the app's managed identity only ``actions`` on the vault."""
        self.admin.remove_role(self.info.principal_id)
        self.admin.assign_role(self.info.principal_id, data_actions=actions or LEAST_PRIVILEGE)

    def appsettings(self, client_id: str, credentials: list[dict[str, Any]], **extra: Any) -> Path:
        doc = {
            "AzureAd": {
                "Instance": self.instance,
                "TenantId": self.info.tenant_id,
                "ClientId": client_id,
                "ClientCredentials": credentials,
                **extra,
            }
        }
        path = self.tmp_path / "appsettings.json"
        path.write_text(json.dumps(doc))
        return path

    def vault_entry(self, name: str) -> dict[str, str]:
        return {
            "SourceType": "KeyVault",
            "KeyVaultUrl": self.info.vault_url,
            "KeyVaultCertificateName": name,
        }

    def operations(self, *, ok_only: bool = True) -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in self.admin.log():
            if ok_only and entry["status"] >= 400:
                continue
            counts[entry["operation"]] = counts.get(entry["operation"], 0) + 1
        return counts


@pytest.fixture
def world(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A clean emulator and the environment App Service gives an app with a managed identity
    (plus the emulator's CA for TLS)."""
    assert emulator.state is not None
    emulator.state.reset()
    for name, value in emulator.info.identity_environ().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", emulator.info.ca_file)
    monkeypatch.delenv("AZURE_CLIENT_ID", raising=False)
    world = World(emulator, tmp_path)
    for uri in (API, OTHER_API):
        world.admin.register_application(
            str(uuid.uuid4()), identifier_uris=[uri], app_roles=["Data.Read"]
        )
    yield world
