"""The Entra and managed-identity routes over raw HTTP (werkzeug's test client, no server):
response and error shapes, OIDC discovery, JWKS, and tokens checked with PyJWT."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import jwt
import pytest
from werkzeug.test import Client, TestResponse

from kvassert.emulator.clock import Clock
from kvassert.emulator.directory import Directory
from kvassert.emulator.entra import EntraWireError
from tests.certs import CertBundle, make_cert, rsa_key
from tests.emulator.entra_support import BASE, assertion, http_client, make_directory

CLIENT = "0a1b2c3d-0000-4000-8000-00000000c11e"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(clock: Clock) -> Directory:
    return make_directory(clock)


@pytest.fixture(scope="module")
def cert() -> CertBundle:
    return make_cert(cn="kvassert-http", key=rsa_key(2048, 1))


@pytest.fixture
def client(directory: Directory, clock: Clock, cert: CertBundle) -> Client:
    directory.register_application(CLIENT, certificates=[cert.der], secrets=["s3cret"])
    return http_client(directory, clock)


def v2(directory: Directory) -> str:
    return f"/{directory.tenant_id}/oauth2/v2.0/token"


def v1(directory: Directory) -> str:
    return f"/{directory.tenant_id}/oauth2/token"


def signed(directory: Directory, cert: CertBundle, path: str, **kwargs: Any) -> str:
    return assertion(
        cert, client_id=CLIENT, aud=f"{BASE}{path}", now=directory.clock.now(), **kwargs
    )


def post(
    client: Client, path: str, headers: dict[str, str] | None = None, **form: str
) -> TestResponse:
    return client.post(path, data=form, headers=headers or {})


def jwk_key(client: Client, token: str, tenant: str) -> Any:
    keys = client.get(f"/{tenant}/discovery/v2.0/keys").get_json()["keys"]
    kid = jwt.get_unverified_header(token)["kid"]
    return jwt.PyJWK(next(k for k in keys if k["kid"] == kid)).key


def assert_entra_error(resp: TestResponse, status: int, error: str, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    body: dict[str, Any] = resp.get_json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    lines = body["error_description"].split("\r\n")
    assert lines[-3:] == [
        f"Trace ID: {body['trace_id']}",
        f"Correlation ID: {body['correlation_id']}",
        f"Timestamp: {body['timestamp']}",
    ]
    assert STAMP.match(body["timestamp"])
    assert uuid.UUID(body["trace_id"]) and uuid.UUID(body["correlation_id"])
    assert body["error_uri"] == f"{BASE}/error?code={code}"
    assert resp.headers["x-ms-request-id"] == body["trace_id"]
    return body


# -- token endpoint: success shapes --------------------------------------------------------------
def test_v2_client_secret(client: Client, directory: Directory) -> None:
    resp = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
        scope="https://vault.azure.net/.default",
    )
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store, no-cache"
    body = resp.get_json()
    assert list(body) == ["token_type", "expires_in", "ext_expires_in", "access_token"]
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3599
    token = body["access_token"]
    claims = jwt.decode(
        token,
        jwk_key(client, token, directory.tenant_id),
        algorithms=["RS256"],
        audience="https://vault.azure.net",
        issuer=f"{BASE}/{directory.tenant_id}/",
    )
    assert claims["appidacr"] == "1" and claims["appid"] == CLIENT


def test_v1_client_assertion(client: Client, directory: Directory, cert: CertBundle) -> None:
    path = v1(directory)
    resp = post(
        client,
        path,
        grant_type="client_credentials",
        client_id=CLIENT,
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=signed(directory, cert, path),
        resource="https://vault.azure.net",
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    body = resp.get_json()
    for name in ("expires_in", "ext_expires_in", "expires_on", "not_before"):
        assert isinstance(body[name], str) and body[name].isdigit()
    assert body["resource"] == "https://vault.azure.net" and body["expires_in"] == "3599"
    assert int(body["expires_on"]) - int(body["not_before"]) == 3600
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["ver"] == "1.0" and claims["appidacr"] == "2"


def test_v2_token_for_a_v2_api_has_roles(client: Client, directory: Directory) -> None:
    api = directory.register_application(
        str(uuid.uuid4()),
        identifier_uris=["api://orders"],
        app_roles=["Data.Read"],
        access_token_version=2,
    )
    directory.register_application(
        CLIENT, secrets=["s3cret"], app_roles_granted={"api://orders": ["Data.Read"]}
    )
    resp = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
        scope="api://orders/.default",
    )
    token = resp.get_json()["access_token"]
    claims = jwt.decode(
        token,
        jwk_key(client, token, directory.tenant_id),
        algorithms=["RS256"],
        audience=api.client_id,
        issuer=f"{BASE}/{directory.tenant_id}/v2.0",
    )
    assert claims["roles"] == ["Data.Read"] and claims["azp"] == CLIENT


def test_client_secret_basic(client: Client, directory: Directory) -> None:
    basic = base64.b64encode(f"{CLIENT}:s3cret".encode()).decode()
    headers = {"Authorization": f"Basic {basic}"}
    resp = post(
        client,
        v2(directory),
        headers,
        grant_type="client_credentials",
        scope="https://vault.azure.net/.default",
    )
    assert resp.status_code == 200
    resp = post(
        client,
        v2(directory),
        headers,
        grant_type="client_credentials",
        client_secret="s3cret",
        scope="https://vault.azure.net/.default",
    )
    assert_entra_error(resp, 400, "invalid_request", 90023)


def test_tokens_and_dates_follow_the_emulator_clock(
    client: Client, directory: Directory, clock: Clock
) -> None:
    clock.set_offset(-86400)
    resp = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
        scope="https://vault.azure.net/.default",
    )
    claims = jwt.decode(resp.get_json()["access_token"], options={"verify_signature": False})
    assert abs(claims["iat"] - clock.now()) < 5
    # Clients learn their skew from the Date of an AADSTS700024 answer.
    refused = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="nope",
        scope="https://vault.azure.net/.default",
    )
    for answer in (resp, refused, msi(client, directory)):
        assert answer.date is not None
        assert abs(answer.date.timestamp() - clock.now()) < 5


# -- token endpoint: errors ----------------------------------------------------------------------
def test_error_shape_echoes_the_client_request_id(client: Client, directory: Directory) -> None:
    correlation = str(uuid.uuid4())
    headers = {"client-request-id": correlation, "return-client-request-id": "true"}
    resp = post(
        client,
        v2(directory),
        headers,
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="nope",
        scope="https://vault.azure.net/.default",
    )
    body = assert_entra_error(resp, 401, "invalid_client", 7000215)
    assert body["correlation_id"] == correlation == resp.headers["client-request-id"]
    assert list(body) == [
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    ]


@pytest.mark.parametrize(
    ("changes", "status", "error", "code"),
    [
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"grant_type": None}, 400, "invalid_request", 900144),
        ({"client_id": None}, 400, "invalid_request", 900144),
        ({"scope": None}, 400, "invalid_request", 900144),
        ({"scope": "https://vault.azure.net/keys.sign"}, 400, "invalid_scope", 1002012),
        ({"scope": "openid https://vault.azure.net/.default"}, 400, "invalid_scope", 1002012),
        (
            {"scope": "https://vault.azure.net/.default api://x/.default"},
            400,
            "invalid_scope",
            700022,
        ),
        ({"scope": "api://nobody/.default"}, 400, "invalid_resource", 500011),
        ({"client_secret": None}, 401, "invalid_client", 7000218),
        ({"client_id": str(uuid.uuid4())}, 400, "unauthorized_client", 700016),
        ({"client_secret": None, "client_assertion": "x.y.z"}, 400, "invalid_request", 900144),
        (
            {
                "client_secret": None,
                "client_assertion": "x.y",
                "client_assertion_type": ASSERTION_TYPE,
            },
            400,
            "invalid_request",
            50027,
        ),
    ],
)
def test_token_request_errors(
    client: Client,
    directory: Directory,
    changes: dict[str, str | None],
    status: int,
    error: str,
    code: int,
) -> None:
    form: dict[str, str | None] = {
        "grant_type": "client_credentials",
        "client_id": CLIENT,
        "client_secret": "s3cret",
        "scope": "https://vault.azure.net/.default",
    }
    form.update(changes)
    data = {k: v for k, v in form.items() if v is not None}
    assert_entra_error(client.post(v2(directory), data=data), status, error, code)


def test_v1_needs_a_resource(client: Client, directory: Directory) -> None:
    resp = post(
        client,
        v1(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
    )
    assert_entra_error(resp, 400, "invalid_request", 900144)


def test_assertion_audience_is_the_endpoint_actually_called(
    client: Client, directory: Directory, cert: CertBundle
) -> None:
    for_v2 = signed(directory, cert, v2(directory))
    resp = post(
        client,
        v1(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=for_v2,
        resource="https://vault.azure.net",
    )
    assert_entra_error(resp, 401, "invalid_client", 700023)


@pytest.mark.parametrize(
    ("tenant", "error", "code"),
    [
        (str(uuid.uuid4()), "invalid_tenant", 90002),
        ("contoso.onmicrosoft.com", "invalid_tenant", 90002),
        ("not_a_tenant", "invalid_request", 900023),
        ("common", "invalid_request", 50059),
        ("organizations", "invalid_request", 50059),
    ],
)
def test_token_endpoint_tenants(client: Client, tenant: str, error: str, code: int) -> None:
    resp = post(
        client,
        f"/{tenant}/oauth2/v2.0/token",
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
        scope="https://vault.azure.net/.default",
    )
    assert_entra_error(resp, 400, error, code)


def test_tenant_guid_in_any_case(client: Client, directory: Directory) -> None:
    resp = post(
        client,
        f"/{directory.tenant_id.upper()}/oauth2/v2.0/token",
        grant_type="client_credentials",
        client_id=CLIENT,
        client_secret="s3cret",
        scope="https://vault.azure.net/.default",
    )
    assert resp.status_code == 200


def test_token_endpoint_only_accepts_post(client: Client, directory: Directory) -> None:
    assert_entra_error(client.get(v2(directory)), 400, "invalid_request", 900561)


def test_injected_fault_error_has_entra_shape() -> None:
    resp = EntraWireError("Service busy", status=503).response()
    body = json.loads(resp.get_data())
    assert resp.status_code == 503 and body["error"] == "temporarily_unavailable"
    assert body["error_codes"] == [90033] and body["error_description"].startswith("AADSTS90033")
    throttled = json.loads(EntraWireError("Slow down", status=429).response().get_data())
    assert throttled["error_codes"] == [90055] and throttled["error"] == "temporarily_unavailable"


# -- discovery and keys --------------------------------------------------------------------------
def test_openid_configuration_v2(client: Client, directory: Directory) -> None:
    tid = directory.tenant_id
    doc = client.get(f"/{tid}/v2.0/.well-known/openid-configuration").get_json()
    assert doc["issuer"] == f"{BASE}/{tid}/v2.0"
    assert doc["token_endpoint"] == f"{BASE}/{tid}/oauth2/v2.0/token"
    assert doc["authorization_endpoint"] == f"{BASE}/{tid}/oauth2/v2.0/authorize"
    assert doc["jwks_uri"] == f"{BASE}/{tid}/discovery/v2.0/keys"
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]


def test_openid_configuration_v1_and_common(client: Client, directory: Directory) -> None:
    tid = directory.tenant_id
    doc = client.get(f"/{tid}/.well-known/openid-configuration").get_json()
    assert doc["issuer"] == f"{BASE}/{tid}/"
    assert doc["token_endpoint"] == f"{BASE}/{tid}/oauth2/token"
    common = client.get("/common/v2.0/.well-known/openid-configuration").get_json()
    assert common["issuer"] == f"{BASE}/{{tenantid}}/v2.0"
    assert common["token_endpoint"] == f"{BASE}/common/oauth2/v2.0/token"


def test_openid_configuration_of_an_unknown_tenant(client: Client) -> None:
    resp = client.get(f"/{uuid.uuid4()}/v2.0/.well-known/openid-configuration")
    assert_entra_error(resp, 400, "invalid_tenant", 90002)


def test_jwks_at_both_paths(client: Client, directory: Directory) -> None:
    one = client.get("/common/discovery/keys").get_json()
    two = client.get(f"/{directory.tenant_id}/discovery/v2.0/keys").get_json()
    assert one == two == directory.jwks()
    key = two["keys"][0]
    assert key["kty"] == "RSA" and key["use"] == "sig" and key["kid"] == key["x5t"]
    assert jwt.PyJWK(key).key is not None


# -- managed identity endpoint -------------------------------------------------------------------
def msi(
    client: Client, directory: Directory, header: str | None = "", **params: str
) -> TestResponse:
    query = {"api-version": "2019-08-01", "resource": "https://vault.azure.net", **params}
    headers = {} if header is None else {"X-IDENTITY-HEADER": header or directory.identity_header}
    return client.get("/msi/token", query_string=query, headers=headers)


def test_system_assigned_identity(client: Client, directory: Directory) -> None:
    resp = msi(client, directory)
    assert resp.status_code == 200
    body = resp.get_json()
    assert set(body) == {
        "access_token",
        "expires_on",
        "not_before",
        "resource",
        "token_type",
        "client_id",
    }
    assert body["expires_on"].isdigit() and body["token_type"] == "Bearer"
    assert body["resource"] == "https://vault.azure.net"
    assert body["client_id"] == directory.system_identity.client_id
    claims = directory.validate_access_token(
        body["access_token"], audiences={"https://vault.azure.net"}
    )
    assert claims["oid"] == directory.system_identity.principal_id
    assert claims["exp"] == int(body["expires_on"])


def test_user_assigned_identity_by_each_selector(client: Client, directory: Directory) -> None:
    uai = directory.create_user_assigned_identity()
    for selector in (
        {"client_id": uai.client_id},
        {"principal_id": uai.principal_id},
        {"object_id": uai.principal_id},
        {"mi_res_id": uai.resource_id},
    ):
        body = msi(client, directory, **selector).get_json()
        assert body["client_id"] == uai.client_id, selector


@pytest.mark.parametrize(
    ("header", "params", "status", "message"),
    [
        (None, {}, 401, "X-IDENTITY-HEADER"),
        ("wrong", {}, 401, "X-IDENTITY-HEADER"),
        ("", {"client_id": str(uuid.uuid4())}, 400, "Unable to load the proper Managed Identity."),
        ("", {"resource": ""}, 400, "resource"),
        ("", {"api-version": "2017-09-01"}, 400, "api-version"),
        ("", {"client_id": "a", "mi_res_id": "b"}, 400, "Only one of"),
        ("", {"resource": "https://nowhere.example"}, 500, "AADSTS500011"),
    ],
)
def test_managed_identity_errors(
    client: Client,
    directory: Directory,
    header: str | None,
    params: dict[str, str],
    status: int,
    message: str,
) -> None:
    resp = msi(client, directory, header, **params)
    assert resp.status_code == status
    body = resp.get_json()
    assert body["statusCode"] == status and message in body["message"]
    assert uuid.UUID(body["correlationId"])


def test_managed_identity_as_federated_credential(client: Client, directory: Directory) -> None:
    uai = directory.create_user_assigned_identity()
    directory.register_application(CLIENT, federated_identities=[uai.client_id])
    mi_token = msi(
        client, directory, resource="api://AzureADTokenExchange", client_id=uai.client_id
    ).get_json()["access_token"]
    resp = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=mi_token,
        scope="https://vault.azure.net/.default",
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)
    vault_token = resp.get_json()["access_token"]
    claims = directory.validate_access_token(vault_token, audiences={"https://vault.azure.net"})
    assert claims["appid"] == CLIENT
    other = directory.create_user_assigned_identity()
    foreign = msi(
        client, directory, resource="api://AzureADTokenExchange", client_id=other.client_id
    ).get_json()["access_token"]
    resp = post(
        client,
        v2(directory),
        grant_type="client_credentials",
        client_id=CLIENT,
        client_assertion_type=ASSERTION_TYPE,
        client_assertion=foreign,
        scope="https://vault.azure.net/.default",
    )
    assert_entra_error(resp, 401, "invalid_client", 700213)
