"""The real SDKs, unmodified, against the emulator over TLS: msal's ConfidentialClientApplication
and azure-identity's certificate, assertion, secret, managed-identity and default credentials.

Client settings a user needs for the emulator (also in docs/emulator-entra.md):
msal ``authority=f"{base}/{tenant}"``, ``instance_discovery=False``, ``verify=<CA file>``;
azure-identity ``authority=base``, ``disable_instance_discovery=True``,
``connection_verify=<CA file>``; managed identity via ``IDENTITY_ENDPOINT={base}/msi/token`` and
``IDENTITY_HEADER``, with the CA in ``REQUESTS_CA_BUNDLE`` (or ``connection_verify``).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import jwt
import msal
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    CertificateCredential,
    ClientAssertionCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
)

from kvassert.emulator.directory import Directory
from kvassert.emulator.server import Emulator
from tests.certs import CertBundle, make_cert, rsa_key
from tests.emulator.entra_support import assertion

VAULT_SCOPE = "https://vault.azure.net/.default"


class Stack:
    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self.base_url = emulator.info.authority
        self.ca_path = emulator.info.ca_file
        self.tenant = emulator.info.tenant_id

    @property
    def directory(self) -> Directory:
        assert self.emulator.state is not None
        return self.emulator.state.directory


@pytest.fixture
def stack(emu: Emulator) -> Stack:
    """The session's emulator (``emu`` in conftest.py), reset for this test."""
    return Stack(emu)


@pytest.fixture(autouse=True)
def trust_the_emulator(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override Session.verify (which is what
    # msal's verify= sets), so a CI-wide bundle would hide the emulator's CA.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", stack.ca_path)
    monkeypatch.setenv("CURL_CA_BUNDLE", stack.ca_path)


@pytest.fixture(scope="module")
def cert() -> CertBundle:
    return make_cert(cn="kvassert-sdk", key=rsa_key(2048, 3))


def register(stack: Stack, cert: CertBundle | None = None, **kwargs: Any) -> str:
    client_id = str(uuid.uuid4())
    stack.directory.register_application(
        client_id, certificates=[cert.der] if cert else [], **kwargs
    )
    return client_id


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def msal_app(stack: Stack, client_id: str, credential: Any) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id,
        client_credential=credential,
        authority=f"{stack.base_url}/{stack.tenant}",
        instance_discovery=False,
        verify=stack.ca_path,
    )


def identity_kwargs(stack: Stack) -> dict[str, Any]:
    return {
        "authority": stack.base_url,
        "disable_instance_discovery": True,
        "connection_verify": stack.ca_path,
    }


# -- msal ----------------------------------------------------------------------------------------
def test_msal_certificate_with_sha1_thumbprint(stack: Stack, cert: CertBundle) -> None:
    client_id = register(stack, cert)
    key_pem = cert.pem(with_chain=False).split(b"-----END CERTIFICATE-----")[-1].strip()
    sha1 = hashlib.sha1(cert.der).hexdigest()  # the thumbprint msal expects
    app = msal_app(stack, client_id, {"private_key": key_pem.decode(), "thumbprint": sha1})
    result = app.acquire_token_for_client([VAULT_SCOPE])
    assert "access_token" in result, result
    claims = claims_of(result["access_token"])
    assert claims["appid"] == client_id and claims["appidacr"] == "2"


def test_msal_certificate_with_public_certificate_sends_ps256_and_x5c(
    stack: Stack, cert: CertBundle
) -> None:
    client_id = register(stack, cert)
    pem = cert.pem(with_chain=False).decode()
    key_pem = pem[pem.index("-----BEGIN PRIVATE KEY") :]
    cert_pem = pem[: pem.index("-----BEGIN PRIVATE KEY")]
    app = msal_app(stack, client_id, {"private_key": key_pem, "public_certificate": cert_pem})
    result = app.acquire_token_for_client([VAULT_SCOPE])
    assert "access_token" in result, result


def test_msal_with_a_client_assertion_callable(stack: Stack, cert: CertBundle) -> None:
    client_id = register(stack, cert)
    endpoint = f"{stack.base_url}/{stack.tenant}/oauth2/v2.0/token"

    def make() -> str:
        return assertion(cert, client_id=client_id, aud=endpoint, now=stack.directory.clock.now())

    result = msal_app(stack, client_id, {"client_assertion": make}).acquire_token_for_client(
        [VAULT_SCOPE]
    )
    assert "access_token" in result, result


def test_msal_with_validate_authority_off_instead(stack: Stack) -> None:
    client_id = register(stack, secrets=["s3cret"])
    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential="s3cret",
        authority=f"{stack.base_url}/{stack.tenant}",
        validate_authority=False,
        verify=stack.ca_path,
    )
    assert "access_token" in app.acquire_token_for_client([VAULT_SCOPE])


def test_msal_reports_entra_errors(stack: Stack, cert: CertBundle) -> None:
    client_id = register(stack, secrets=["right"])
    result = msal_app(stack, client_id, "wrong").acquire_token_for_client([VAULT_SCOPE])
    assert result["error"] == "invalid_client" and result["error_codes"] == [7000215]
    unregistered = make_cert(cn="other", key=rsa_key(2048, 4))
    other = register(stack, cert)
    pem = unregistered.pem(with_chain=False).decode()
    app = msal_app(
        stack,
        other,
        {
            "private_key": pem[pem.index("-----BEGIN PRIVATE KEY") :],
            "public_certificate": pem[: pem.index("-----BEGIN PRIVATE KEY")],
        },
    )
    result = app.acquire_token_for_client([VAULT_SCOPE])
    assert result["error_codes"] == [700027]


# -- azure-identity ------------------------------------------------------------------------------
def test_certificate_credential(stack: Stack, cert: CertBundle) -> None:
    client_id = register(stack, cert)
    for send_chain in (False, True):
        credential = CertificateCredential(
            stack.tenant,
            client_id,
            certificate_data=cert.pem(with_chain=False),
            send_certificate_chain=send_chain,
            **identity_kwargs(stack),
        )
        token = credential.get_token(VAULT_SCOPE)
        assert claims_of(token.token)["appid"] == client_id


def test_client_assertion_credential(stack: Stack, cert: CertBundle) -> None:
    client_id = register(stack, cert)
    endpoint = f"{stack.base_url}/{stack.tenant}/oauth2/v2.0/token"
    credential = ClientAssertionCredential(
        stack.tenant,
        client_id,
        lambda: assertion(cert, client_id=client_id, aud=endpoint, now=stack.directory.clock.now()),
        **identity_kwargs(stack),
    )
    assert claims_of(credential.get_token(VAULT_SCOPE).token)["appidacr"] == "2"


def test_client_secret_credential(stack: Stack) -> None:
    client_id = register(stack, secrets=["s3cret"])
    good = ClientSecretCredential(stack.tenant, client_id, "s3cret", **identity_kwargs(stack))
    assert claims_of(good.get_token(VAULT_SCOPE).token)["appidacr"] == "1"
    bad = ClientSecretCredential(stack.tenant, client_id, "nope", **identity_kwargs(stack))
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        bad.get_token(VAULT_SCOPE)


@pytest.fixture
def app_service(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    for name, value in stack.emulator.info.identity_environ().items():
        monkeypatch.setenv(name, value)
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "MSI_ENDPOINT",
        "IDENTITY_SERVER_THUMBPRINT",
    ):
        monkeypatch.delenv(name, raising=False)
    return stack


def test_managed_identity_system_and_user_assigned(app_service: Stack) -> None:
    directory = app_service.directory
    system = ManagedIdentityCredential().get_token(VAULT_SCOPE)
    assert claims_of(system.token)["oid"] == directory.system_identity.principal_id
    uai = directory.create_user_assigned_identity()
    user = ManagedIdentityCredential(client_id=uai.client_id).get_token(VAULT_SCOPE)
    assert claims_of(user.token)["oid"] == uai.principal_id
    # azure-identity's keys; msal sends them as mi_res_id and object_id.
    for config in ({"resource_id": uai.resource_id}, {"object_id": uai.principal_id}):
        credential = ManagedIdentityCredential(identity_config=config)
        assert claims_of(credential.get_token(VAULT_SCOPE).token)["oid"] == uai.principal_id


def test_default_credential_uses_the_app_service_identity(app_service: Stack) -> None:
    token = DefaultAzureCredential(
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
    ).get_token(VAULT_SCOPE)
    claims = claims_of(token.token)
    assert claims["oid"] == app_service.directory.system_identity.principal_id
    assert abs(token.expires_on - claims["exp"]) <= 2


def test_managed_identity_with_a_wrong_header(
    app_service: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-header")
    with pytest.raises(ClientAuthenticationError):
        ManagedIdentityCredential().get_token(VAULT_SCOPE)


# -- through the admin API -----------------------------------------------------------------------
def test_admin_registration_roles_clock_and_log(stack: Stack, cert: CertBundle) -> None:
    admin = stack.emulator.admin
    api = str(uuid.uuid4())
    admin.register_application(api, identifier_uris=["api://reports"], app_roles=["Reports.Read"])
    client_id = str(uuid.uuid4())
    registered = admin.register_application(
        client_id, certificates=[cert.der], app_roles_granted={"api://reports": ["Reports.Read"]}
    )
    pem = cert.pem(with_chain=False).decode()
    split = pem.index("-----BEGIN PRIVATE KEY")
    credential = {"private_key": pem[split:], "public_certificate": pem[:split]}
    result = msal_app(stack, client_id, credential).acquire_token_for_client(
        ["api://reports/.default"]
    )
    assert claims_of(result["access_token"])["roles"] == ["Reports.Read"]
    entries = admin.log(operation="token", principal=registered["principal_id"])
    assert entries and entries[-1]["status"] == 200
    admin.set_clock(3600)  # the emulator runs an hour ahead: a fresh assertion is "expired"
    try:
        late = msal_app(stack, client_id, credential).acquire_token_for_client([VAULT_SCOPE])
    finally:
        admin.set_clock(0)
    assert late["error_codes"] == [700024]
