"""Prepare a running ``kvassert emulator`` for the samples, as an operator prepares Azure, and
print the settings the samples read, as shell assignments.

    kvassert emulator --state-dir .emulator > emulator.json &
    python samples/emulator_setup.py emulator.json > samples.env
    set -a; . ./samples.env; set +a

In the emulator this creates (again, harmlessly, when run twice):

- a non-exportable certificate ``samples-app-cert`` in the vault (a new version each run);
- the protected API's app registration, ``api://kvassert-samples-api``, defining the app role
  ``Data.Read``;
- the client app's registration, with the vault certificate's public part registered and
  ``Data.Read`` granted on the API;
- for the managed identity (App Service's, in real life), only ``certificates/read`` and
  ``keys/sign/action`` on the vault.

The samples' tests use the same ``prepare`` and ``environment``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from kvassert.emulator import AdminClient, EmulatorInfo

API_URI = "api://kvassert-samples-api"
ROLE = "Data.Read"
CERTIFICATE = "samples-app-cert"
LEAST_PRIVILEGE = [
    "Microsoft.KeyVault/vaults/certificates/read",
    "Microsoft.KeyVault/vaults/keys/sign/action",
]
# Fixed ids, so that a second run (or a restarted emulator with --state-dir) keeps them.
API_CLIENT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, API_URI))
APP_CLIENT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "kvassert-samples-client"))
DEFAULT_API_URL = "http://127.0.0.1:5001"


@dataclass(frozen=True)
class Prepared:
    api_client_id: str
    app_client_id: str
    app_principal_id: str


def create_certificate(info: EmulatorInfo, name: str = CERTIFICATE) -> None:
    """Create (or rotate) ``name`` with the real SDK, signed in as the emulator's managed
    identity, which is Key Vault Administrator until ``prepare`` takes that away."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient, CertificatePolicy

    environ = {**info.identity_environ(), "REQUESTS_CA_BUNDLE": info.ca_file}
    policy = CertificatePolicy(
        issuer_name="Self",
        subject=f"CN={name}",
        exportable=False,
        key_type="RSA",
        key_size=2048,
        validity_in_months=12,
    )
    with (
        mock.patch.dict(os.environ, environ),
        ManagedIdentityCredential() as operator,
        CertificateClient(info.vault_url, operator, verify_challenge_resource=False) as client,
    ):
        client.begin_create_certificate(name, policy).result()


def prepare(info: EmulatorInfo, admin: AdminClient) -> Prepared:
    """The vault certificate, both app registrations and least privilege (see the module)."""
    admin.remove_role(info.principal_id)
    admin.assign_role(info.principal_id, "Key Vault Administrator")
    create_certificate(info)
    admin.register_application(API_CLIENT_ID, identifier_uris=[API_URI], app_roles=[ROLE])
    app = admin.register_application(
        APP_CLIENT_ID, vault_certificates=[CERTIFICATE], app_roles_granted={API_URI: [ROLE]}
    )
    admin.remove_role(info.principal_id)
    admin.assign_role(info.principal_id, data_actions=LEAST_PRIVILEGE)
    return Prepared(API_CLIENT_ID, APP_CLIENT_ID, str(app["principal_id"]))


def environment(info: EmulatorInfo, prepared: Prepared, api_url: str) -> dict[str, str]:
    """What each sample reads: the client's ``AzureAd`` app settings and ``DOWNSTREAM_API_*``,
    the API's ``API_*``, what App Service sets for a managed identity, and the emulator's CA."""
    instance = info.authority.rstrip("/") + "/"
    return {
        "AzureAd__Instance": instance,
        "AzureAd__TenantId": info.tenant_id,
        "AzureAd__ClientId": prepared.app_client_id,
        "AzureAd__ClientCredentials__0__KeyVaultUrl": info.vault_url,
        "AzureAd__ClientCredentials__0__KeyVaultCertificateName": CERTIFICATE,
        "DOWNSTREAM_API_URL": api_url,
        "DOWNSTREAM_API_SCOPE": f"{API_URI}/.default",
        "API_AUDIENCE": f"{API_URI},{prepared.api_client_id}",
        "API_TENANT_ID": info.tenant_id,
        "API_INSTANCE": instance,
        "API_REQUIRED_ROLE": ROLE,
        **info.identity_environ(),
        "REQUESTS_CA_BUNDLE": info.ca_file,
    }


def read_startup_line(path: Path, timeout: float) -> EmulatorInfo:
    """The emulator's JSON startup line from ``path``, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return EmulatorInfo.from_mapping(json.loads(text.splitlines()[0]))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} holds no emulator startup line after {timeout:g} s")
        time.sleep(0.2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("startup_line", type=Path, help="file with the emulator's startup line")
    parser.add_argument(
        "--api-url",
        default=DEFAULT_API_URL,
        help=f"where the protected API will listen (default {DEFAULT_API_URL})",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="wait this long for the file")
    args = parser.parse_args(argv)
    try:
        info = read_startup_line(args.startup_line, args.timeout)
        with AdminClient(info.admin_url, verify=info.ca_file) as admin:
            prepared = prepare(info, admin)
    except Exception as exc:  # one line for any failure: file, admin API, Key Vault
        print(f"emulator_setup: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    for name, value in environment(info, prepared, args.api_url).items():
        print(f"{name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
