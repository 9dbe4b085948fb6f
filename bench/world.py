"""The benchmark's world on the in-process emulator: one app, two certificates, five APIs.

The app has a Key Vault certificate (non-exportable, for kvassert and the peers that sign in
Key Vault) and a local certificate (PEM on disk, for the peers that sign locally). The app's
managed identity keeps only ``certificates/read`` + ``keys/sign/action``, as README recommends.
Latency faults make every Key Vault ``sign`` and ``certificate_get`` and every token request
take ``latency_ms`` longer.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.peers import Setup

if TYPE_CHECKING:
    from kvassert.emulator import Emulator

VAULT_CERTIFICATE = "bench-app"
API_COUNT = 5
LATENCY_ROUTES = ("sign", "certificate_get", "token")
LEAST_PRIVILEGE = [
    "Microsoft.KeyVault/vaults/certificates/read",
    "Microsoft.KeyVault/vaults/keys/sign/action",
]


@contextmanager
def environment(values: Mapping[str, str], remove: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and remove) environment variables; restored after."""
    names = set(values) | set(remove)
    saved = {name: os.environ.get(name) for name in names}
    for name in remove:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def local_certificate(folder: Path) -> tuple[Path, bytes, str]:
    """A self-signed RSA certificate and key as one PEM file: (path, DER, SHA-1 hex)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvassert-bench-local")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ) + certificate.public_bytes(serialization.Encoding.PEM)
    path = folder / "local-cert.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return path, der, hashlib.sha1(der).hexdigest()  # noqa: S324 - the x5t thumbprint


def build_world(emulator: Emulator, folder: Path) -> Setup:
    """Register everything and write ``appsettings.json``; the process environment must already
    hold the emulator's managed-identity variables and CA (see ``identity_env``)."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient, CertificatePolicy

    info = emulator.info
    admin = emulator.admin
    operator = ManagedIdentityCredential(connection_verify=info.ca_file)
    with CertificateClient(
        info.vault_url, operator, verify_challenge_resource=False, connection_verify=info.ca_file
    ) as certificates:
        policy = CertificatePolicy(
            issuer_name="Self",
            subject=f"CN={VAULT_CERTIFICATE}",
            exportable=False,
            key_type="RSA",
            key_size=2048,
            reuse_key=False,
            validity_in_months=12,
        )
        certificates.begin_create_certificate(VAULT_CERTIFICATE, policy).result()
        key_id = certificates.get_certificate(VAULT_CERTIFICATE).key_id
    operator.close()
    pem_path, der, thumbprint = local_certificate(folder)
    scopes = []
    for index in range(API_COUNT):
        uri = f"api://kvassert-bench-{index}"
        admin.register_application(
            str(uuid.uuid4()), identifier_uris=[uri], app_roles=["Data.Read"]
        )
        scopes.append(f"{uri}/.default")
    client_id = str(uuid.uuid4())
    admin.register_application(
        client_id,
        certificates=[der],
        vault_certificates=[VAULT_CERTIFICATE],
        app_roles_granted={scope.removesuffix("/.default"): ["Data.Read"] for scope in scopes},
    )
    admin.remove_role(info.principal_id)
    admin.assign_role(info.principal_id, data_actions=LEAST_PRIVILEGE)
    settings_path = folder / "appsettings.json"
    settings_path.write_text(
        json.dumps(
            {
                "AzureAd": {
                    "Instance": info.authority.rstrip("/") + "/",
                    "TenantId": info.tenant_id,
                    "ClientId": client_id,
                    "ClientCredentials": [
                        {
                            "SourceType": "KeyVault",
                            "KeyVaultUrl": info.vault_url,
                            "KeyVaultCertificateName": VAULT_CERTIFICATE,
                        }
                    ],
                }
            },
            indent=2,
        )
    )
    return Setup(
        authority=info.authority.rstrip("/"),
        tenant_id=info.tenant_id,
        client_id=client_id,
        vault_url=info.vault_url,
        ca_file=info.ca_file,
        certificate_name=VAULT_CERTIFICATE,
        key_id=str(key_id),
        pem_path=str(pem_path),
        thumbprint=thumbprint,
        settings_path=str(settings_path),
        scopes=scopes,
        identity_endpoint=info.identity_endpoint,
        identity_header=info.identity_header,
    )


def identity_env(emulator: Emulator) -> dict[str, str]:
    """What App Service gives an app with a managed identity, plus the emulator's CA."""
    info = emulator.info
    return {**info.identity_environ(), "REQUESTS_CA_BUNDLE": info.ca_file}


def add_latency(emulator: Emulator, latency_ms: int) -> None:
    """Every Key Vault sign / certificate read and every token request takes ``latency_ms``."""
    emulator.admin.clear_faults()
    if latency_ms > 0:
        for route in LATENCY_ROUTES:
            emulator.admin.add_fault(route, latency_ms=latency_ms)


def operation_counts(entries: list[dict[str, Any]], since: float | None = None) -> dict[str, int]:
    """Requests by kind from the emulator's log (``admin.log()``), optionally from ``since``.

    ``token_requests`` counts every request that reached the token endpoint; ``signs`` counts
    signatures Key Vault made (status < 400; an SDK's unauthenticated challenge request is not
    a signature); ``keyvault_requests`` is every request to the vault, challenges included.
    """
    counts = {
        "token_requests": 0,
        "token_errors": 0,
        "signs": 0,
        "certificate_gets": 0,
        "identity_requests": 0,
        "keyvault_requests": 0,
    }
    for entry in entries:
        if since is not None and entry["time"] < since:
            continue
        operation, status = entry["operation"], entry["status"]
        ok = status is not None and 0 < status < 400
        if operation in ("token", "token_v1"):
            counts["token_requests"] += 1
            counts["token_errors"] += 0 if ok else 1
        elif operation == "identity":
            counts["identity_requests"] += 1
        if entry["service"] == "keyvault":
            counts["keyvault_requests"] += 1
            if operation == "sign" and ok:
                counts["signs"] += 1
            elif operation == "certificate_get" and ok:
                counts["certificate_gets"] += 1
    return counts
