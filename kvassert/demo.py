"""``kvassert demo``: the whole job on the embedded emulator, through the path a real app takes.

The emulator plays Key Vault, Entra ID and App Service's managed identity. The demo creates a
non-exportable certificate with the real ``CertificateClient``, registers an app with the
certificate's public part, leaves the app's managed identity only ``certificates/read`` and
``keys/sign/action``, writes an ``appsettings.json``, and gets a token with
``kvassert.from_appsettings`` exactly as an App Service app would. The report shows the
assertion, the Key Vault operations (no secret read) and the token's claims.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CERTIFICATE_NAME = "kvassert-demo"
API_URI = "api://kvassert-demo-api"
LEAST_PRIVILEGE = (
    "Microsoft.KeyVault/vaults/certificates/read",
    "Microsoft.KeyVault/vaults/keys/sign/action",
)


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """What App Service sets for a managed identity, plus the emulator's CA; restored after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 72 - len(title)))


def _show(data: Mapping[str, Any]) -> None:
    for line in json.dumps(data, indent=2).splitlines():
        print(f"   {line}")


def run_demo(keep: str | None = None) -> int:
    """Run the demo and print its report; returns 0 when everything worked."""
    import jwt
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient, CertificatePolicy, KeyType

    import kvassert
    from kvassert.emulator import Emulator

    with Emulator() as emulator:
        info = emulator.info
        admin = emulator.admin
        environment = {
            "IDENTITY_ENDPOINT": info.identity_endpoint,
            "IDENTITY_HEADER": info.identity_header,
            "REQUESTS_CA_BUNDLE": info.ca_file,
        }
        with _environment(environment):
            _section("1. Emulator")
            print(f"   Key Vault:          {info.vault_url}")
            print(f"   Entra ID authority: {info.authority}")
            print(f"   managed identity:   {info.identity_endpoint}")
            print(f"   its principal id:   {info.principal_id}")

            _section("2. A non-exportable certificate in Key Vault (as an operator would)")
            operator = ManagedIdentityCredential()
            with CertificateClient(
                info.vault_url, operator, verify_challenge_resource=False
            ) as certificates:
                policy = CertificatePolicy(
                    issuer_name="Self",
                    subject="CN=kvassert-demo",
                    exportable=False,
                    key_type=KeyType.rsa,
                    key_size=2048,
                    reuse_key=False,
                    validity_in_months=12,
                )
                certificates.begin_create_certificate(CERTIFICATE_NAME, policy).result()
                created = certificates.get_certificate(CERTIFICATE_NAME)
            exportable = created.policy.exportable if created.policy else None
            print(f"   {created.id}")
            print(f"   key: {created.key_id} (exportable: {exportable})")

            _section("3. App registration and least-privilege access")
            client_id = str(uuid.uuid4())
            admin.register_application(
                str(uuid.uuid4()), identifier_uris=[API_URI], app_roles=["Data.Read"]
            )
            admin.register_application(
                client_id,
                vault_certificates=[CERTIFICATE_NAME],
                app_roles_granted={API_URI: ["Data.Read"]},
            )
            admin.remove_role(info.principal_id)
            admin.assign_role(info.principal_id, data_actions=list(LEAST_PRIVILEGE))
            print(f"   app {client_id}: the vault certificate's public part is registered")
            print(f"   managed identity {info.principal_id} may only: {', '.join(LEAST_PRIVILEGE)}")

            # The startup line's authority is the emulator's instance (login host) URL.
            instance = info.authority.rstrip("/")
            if instance.endswith(info.tenant_id):
                instance = instance[: -len(info.tenant_id)].rstrip("/")
            folder = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="kvassert-demo-"))
            folder.mkdir(parents=True, exist_ok=True)
            settings_file = folder / "appsettings.json"
            appsettings = {
                "AzureAd": {
                    "Instance": instance + "/",
                    "TenantId": info.tenant_id,
                    "ClientId": client_id,
                    "ClientCredentials": [
                        {
                            "SourceType": "KeyVault",
                            "KeyVaultUrl": info.vault_url,
                            "KeyVaultCertificateName": CERTIFICATE_NAME,
                        }
                    ],
                }
            }
            settings_file.write_text(json.dumps(appsettings, indent=2))
            _section(f"4. {settings_file}")
            _show(appsettings)

            _section("5. The app: kvassert.from_appsettings(...).get_token(...)")
            admin.clear_log()
            with kvassert.from_appsettings(settings_file) as credential:
                token = credential.get_token(f"{API_URI}/.default")
                for _ in range(99):
                    credential.get_token(f"{API_URI}/.default")
                print(f"   100 get_token calls -> {credential.token_requests} token request(s)")
                log = admin.log()
                operations = Counter(entry["operation"] for entry in log if entry["status"] < 400)
                print("   Key Vault and Entra operations that succeeded:")
                for operation, count in sorted(operations.items()):
                    print(f"     {operation:<24} x{count}")
                secret_reads = sum(1 for entry in log if entry["operation"] == "secret_get")
                print(f"   secret reads: {secret_reads} (the private key never left the vault)")

                _section("6. A client assertion as kvassert builds it (signature elided)")
                assertion = credential.client_assertion()
                header, payload, _ = assertion.split(".")
                _show(jwt.get_unverified_header(assertion))
                _show(jwt.decode(assertion, options={"verify_signature": False}))
                print(f"   {header[:16]}...{payload[-16:]}.<signature by Key Vault>")

            _section("7. The access token's claims (verified with the tenant's JWKS)")
            keys = jwt.PyJWKClient(
                f"{instance}/{info.tenant_id}/discovery/v2.0/keys",
                ssl_context=_ssl_context(info.ca_file),
            )
            claims = jwt.decode(
                token.token,
                keys.get_signing_key_from_jwt(token.token).key,
                algorithms=["RS256"],
                audience=API_URI,
            )
            _show({k: claims[k] for k in sorted(claims) if k not in ("uti", "rh")})

        ok = secret_reads == 0 and operations.get("sign") == 1 and claims.get("roles")
        _section("Result: " + ("OK" if ok else "UNEXPECTED"))
        return 0 if ok else 1


def _ssl_context(ca_file: str) -> Any:
    import ssl

    return ssl.create_default_context(cafile=ca_file)
