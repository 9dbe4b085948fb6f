"""The protected API under gunicorn, called over HTTP with tokens from the emulated Entra ID:
what it accepts, what it refuses and with which answer, and how often it asks Entra for keys."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from _testing import Cloud, ServerProcess, closed_port, json_of
from cryptography.hazmat.primitives.asymmetric import rsa


def get_data(api: ServerProcess, token: str | None = None, scheme: str = "Bearer") -> Any:
    headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
    return requests.get(f"{api.url}/data", headers=headers, timeout=10)


def assert_refused(answer: requests.Response, status: int, error: str, reason: str) -> None:
    """``status``, ``WWW-Authenticate: Bearer error="<error>", error_description="..."`` that
    contains ``reason``, and the same in the JSON body."""
    assert answer.status_code == status, answer.text
    challenge = answer.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer error="{error}", error_description="'), challenge
    assert reason in challenge
    body = json_of(answer)
    assert body["error"] == error
    assert reason in body["error_description"]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def with_payload(token: str, **changes: Any) -> str:
    """``token`` with claims changed and its original signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"


@pytest.fixture(scope="module")
def client(cloud: Cloud) -> tuple[str, str]:
    """A client app (secret credential) granted Data.Read on the API."""
    return cloud.register_client(roles=[cloud.role])


@pytest.fixture(scope="module")
def good_token(cloud: Cloud, client: tuple[str, str]) -> str:
    return cloud.token(*client)


def test_health_needs_no_token(protected_api: ServerProcess) -> None:
    answer = requests.get(f"{protected_api.url}/healthz", timeout=10)
    assert answer.status_code == 200
    assert json_of(answer) == {"status": "ok"}


def test_v1_token_with_the_role_gets_the_data(
    cloud: Cloud, protected_api: ServerProcess, client: tuple[str, str], good_token: str
) -> None:
    answer = get_data(protected_api, good_token)
    assert answer.status_code == 200, answer.text
    body = json_of(answer)
    assert [item["name"] for item in body["items"]] == ["alpha", "beta", "gamma"]
    assert body["caller"]["appid"] == client[0]
    assert body["caller"]["roles"] == [cloud.role]
    assert body["caller"]["tid"] == cloud.info.tenant_id
    assert body["caller"]["ver"] == "1.0"


def test_v2_token_for_the_api_client_id_gets_the_data(
    cloud: Cloud, protected_api: ServerProcess, client: tuple[str, str]
) -> None:
    """An API registered with accessTokenAcceptedVersion 2 gets v2 tokens: aud is its client
    id, iss the v2 issuer, the client is in azp."""
    api = {"identifier_uris": [cloud.api_uri], "app_roles": [cloud.role]}
    cloud.admin.register_application(cloud.api_client_id, access_token_version=2, **api)
    try:
        token = cloud.token(*client, version=2)
    finally:
        cloud.admin.register_application(cloud.api_client_id, **api)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["aud"] == cloud.api_client_id
    assert claims["iss"].endswith("/v2.0")
    answer = get_data(protected_api, token)
    assert answer.status_code == 200, answer.text
    caller = json_of(answer)["caller"]
    assert (caller["appid"], caller["ver"], caller["roles"]) == (client[0], "2.0", [cloud.role])


def test_no_token_is_401_with_a_bare_challenge(protected_api: ServerProcess) -> None:
    answer = get_data(protected_api)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert json_of(answer) == {"error_description": "a bearer token is required"}


def test_another_scheme_is_401(protected_api: ServerProcess, good_token: str) -> None:
    answer = get_data(protected_api, good_token, scheme="Basic")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == "Bearer"


RS256_NO_KID = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"  # {"alg":"RS256","typ":"JWT"}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("abc", "malformed"),
        ("a.b.c", "malformed"),
        ("x" * 50, "malformed"),
        ("e30.e30.", "not signed with RS256"),  # {} as header
        (f"{RS256_NO_KID}.e30.c2ln", "names no signing key (kid)"),
    ],
    ids=["one-part", "not-base64", "no-dots", "empty-header", "no-kid"],
)
def test_malformed_token_is_401(protected_api: ServerProcess, token: str, reason: str) -> None:
    assert_refused(get_data(protected_api, token), 401, "invalid_token", reason)


def test_token_for_another_audience_is_401(cloud: Cloud, protected_api: ServerProcess) -> None:
    # A client granted Data.Read on another API: a valid token with the right role name, but
    # for the other API.
    client_id, secret = str(uuid.uuid4()), "other-audience-secret"
    cloud.admin.register_application(
        client_id, secrets=[secret], app_roles_granted={cloud.other_api_uri: [cloud.role]}
    )
    token = cloud.token(client_id, secret, resource=cloud.other_api_uri)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["aud"], claims["roles"]) == (cloud.other_api_uri, [cloud.role])
    assert_refused(get_data(protected_api, token), 401, "invalid_token", "not for this API (aud)")


def test_token_without_the_role_is_403(cloud: Cloud, protected_api: ServerProcess) -> None:
    token = cloud.token(*cloud.register_client())
    assert "roles" not in jwt.decode(token, options={"verify_signature": False})
    assert_refused(get_data(protected_api, token), 403, "insufficient_scope", "app role Data.Read")


def test_token_with_another_role_is_403(cloud: Cloud, protected_api: ServerProcess) -> None:
    # The API defines only Data.Read; an app granted a role it does not define gets none.
    api = {"identifier_uris": [cloud.api_uri], "app_roles": [cloud.role, "Data.Write"]}
    cloud.admin.register_application(cloud.api_client_id, **api)
    try:
        token = cloud.token(*cloud.register_client(roles=["Data.Write"]))
    finally:
        cloud.admin.register_application(
            cloud.api_client_id, identifier_uris=[cloud.api_uri], app_roles=[cloud.role]
        )
    assert jwt.decode(token, options={"verify_signature": False})["roles"] == ["Data.Write"]
    assert_refused(get_data(protected_api, token), 403, "insufficient_scope", "Data.Read")


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-7200, "has expired"), (3600, "not valid yet")],
    ids=["expired", "early"],
)
def test_expired_or_early_token_is_401(
    cloud: Cloud, protected_api: ServerProcess, client: tuple[str, str], offset: int, reason: str
) -> None:
    cloud.admin.set_clock(offset)  # Entra's clock off by `offset`: the token's times are too
    try:
        token = cloud.token(*client)
    finally:
        cloud.admin.set_clock(0)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert abs(claims["nbf"] - (time.time() + offset)) < 60
    assert_refused(get_data(protected_api, token), 401, "invalid_token", reason)


def test_token_signed_by_another_key_with_the_tenant_kid_is_401(
    cloud: Cloud, protected_api: ServerProcess, good_token: str
) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = jwt.get_unverified_header(good_token)
    claims = jwt.decode(good_token, options={"verify_signature": False})
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": header["kid"]})
    assert_refused(get_data(protected_api, forged), 401, "invalid_token", "does not verify")


def test_claims_changed_after_signing_is_401(cloud: Cloud, protected_api: ServerProcess) -> None:
    token = cloud.token(*cloud.register_client())  # no role...
    forged = with_payload(token, roles=[cloud.role])  # ...until someone adds one
    assert_refused(get_data(protected_api, forged), 401, "invalid_token", "does not verify")


def test_unknown_signing_key_is_401(protected_api: ServerProcess, good_token: str) -> None:
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(good_token, options={"verify_signature": False})
    forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": "forged-key"})
    assert_refused(get_data(protected_api, forged), 401, "invalid_token", "not signed by a key")


@pytest.mark.parametrize("alg", ["none", "HS256", "PS256"])
def test_algorithms_other_than_rs256_are_401(
    protected_api: ServerProcess, good_token: str, alg: str
) -> None:
    header = {**jwt.get_unverified_header(good_token), "alg": alg}
    _, payload, signature = good_token.split(".")
    forged = f"{b64url(json.dumps(header).encode())}.{payload}.{'' if alg == 'none' else signature}"
    assert_refused(get_data(protected_api, forged), 401, "invalid_token", "RS256")


def test_token_from_another_tenant_is_401(cloud: Cloud, protected_api: ServerProcess) -> None:
    tenant = str(uuid.uuid4())
    cloud.admin.register_application(
        str(uuid.uuid4()), tenant_id=tenant, identifier_uris=[cloud.api_uri], app_roles=[cloud.role]
    )
    token = cloud.token(
        *cloud.register_client(roles=[cloud.role], tenant_id=tenant), tenant_id=tenant
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert (claims["tid"], claims["aud"], claims["roles"]) == (tenant, cloud.api_uri, [cloud.role])
    assert_refused(get_data(protected_api, token), 401, "invalid_token", "tenant (iss)")


def test_metadata_and_keys_are_fetched_once_per_worker(
    cloud: Cloud,
    start_protected_api: Callable[..., ServerProcess],
    client: tuple[str, str],
    good_token: str,
) -> None:
    api = start_protected_api(workers=1)
    cloud.admin.clear_log()
    for _ in range(10):
        assert get_data(api, good_token).status_code == 200
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = jwt.decode(good_token, options={"verify_signature": False})
    for n in range(5):
        forged = jwt.encode(claims, forger, algorithm="RS256", headers={"kid": f"forged-{n}"})
        assert get_data(api, forged).status_code == 401
    operations = cloud.operations()
    # the v2 and v1 OpenID documents once, the key set once: unknown kids do not refetch it
    assert operations.get("openid_configuration") == 2
    assert operations.get("jwks") == 1


def test_unreachable_identity_provider_is_503(
    start_protected_api: Callable[..., ServerProcess], good_token: str
) -> None:
    with closed_port() as sock:
        api = start_protected_api(
            workers=1, API_INSTANCE=f"https://127.0.0.1:{sock.getsockname()[1]}/"
        )
        answer = get_data(api, good_token)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "10"
    assert json_of(answer)["error"] == "temporarily_unavailable"


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("API_TENANT_ID", "contoso.com", "API_TENANT_ID: found 'contoso.com'; expected"),
        ("API_AUDIENCE", "", "API_AUDIENCE: found nothing"),
        ("API_REQUIRED_ROLE", " ", "API_REQUIRED_ROLE: found nothing"),
        ("API_CLOCK_SKEW_SECONDS", "600", "API_CLOCK_SKEW_SECONDS: found '600'"),
    ],
    ids=["tenant", "audience", "role", "skew"],
)
def test_bad_setting_stops_the_api_with_its_name(
    start_protected_api: Callable[..., ServerProcess], setting: str, value: str, message: str
) -> None:
    with pytest.raises(RuntimeError, match="exited with") as failure:
        start_protected_api(workers=1, **{setting: value})
    assert message in str(failure.value)
