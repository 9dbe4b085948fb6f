"""Raw HTTP against the Key Vault routes (werkzeug test client, no sockets): the challenge,
bearer validation, RBAC per built-in role, wire shapes, error bodies, limits, garbage input."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvassert.emulator.keyvault import ROUTES
from kvassert.emulator.rbac import OPERATION_DATA_ACTIONS
from kvassert.emulator.state import EmulatorState, Fault
from tests.certs import make_cert, rsa_key
from tests.emulator.conftest import (
    BASE,
    Http,
    error_of,
    new_state,
    self_signed_policy,
    vault_token,
)
from tests.emulator.test_vault_state import GRANTS


def b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk(key: Any) -> dict[str, str]:
    numbers = key.private_numbers()

    def enc(value: int) -> str:
        return b64u(value.to_bytes((value.bit_length() + 7) // 8, "big"))

    return {
        "kty": "RSA",
        "n": enc(numbers.public_numbers.n),
        "e": enc(numbers.public_numbers.e),
        "d": enc(numbers.d),
        "p": enc(numbers.p),
        "q": enc(numbers.q),
    }


# ---- challenge and bearer validation --------------------------------------------------------


def test_no_token_gets_key_vaults_challenge(http: Http) -> None:
    # The SDK's first request carries no token and no body.
    response = http.call("POST", "/keys/k//sign", auth=False)
    assert response.status_code == 401
    tenant = http.state.directory.tenant_id
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{BASE}/{tenant}", resource="https://vault.azure.net"'
    )
    assert error_of(response) == {
        "code": "Unauthorized",
        "message": "AKV10000: Request is missing a Bearer or PoP token.",
    }
    log = http.state.log.entries()
    assert [(e.operation, e.status, e.principal) for e in log] == [("sign", 401, "")]


@pytest.mark.parametrize("header", ["Bearer", "Bearer   ", "Basic abc", "bearer not.a.jwt"])
def test_malformed_bearer_is_401_with_the_challenge(http: Http, header: str) -> None:
    response = http.call("GET", "/keys/k", auth=False, headers={"Authorization": header})
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers
    assert error_of(response)["code"] == "Unauthorized"


def test_token_for_another_audience_is_refused(http: Http) -> None:
    graph = vault_token(http.state, resource="https://graph.microsoft.com")
    response = http.call("GET", "/keys/k", token=graph)
    assert response.status_code == 401
    assert error_of(response)["message"].startswith("AKV10022: Invalid audience")


def test_expired_token_is_refused(http: Http) -> None:
    http.state.clock.set_offset(2 * 3600)
    response = http.call("GET", "/keys/k")
    assert response.status_code == 401
    assert "expired" in error_of(response)["message"]


def test_token_from_another_tenant_is_refused(http: Http) -> None:
    other = http.state.directory.register_application("guest-app", tenant_id="other-tenant")
    response = http.call("GET", "/keys/k", token=vault_token(http.state, other))
    assert response.status_code == 401
    assert error_of(response)["message"].startswith("AKV10032: Invalid issuer")


def test_token_signed_by_someone_else_is_refused(http: Http) -> None:
    header, claims, _ = http.token.split(".")
    forged = f"{header}.{claims}.{b64u(b'x' * 256)}"
    assert http.call("GET", "/keys/k", token=forged).status_code == 401


def test_api_version_is_required_but_any_value_is_accepted(http: Http) -> None:
    http.state.vault.keys.import_key("k", rsa_key(2048, 1))
    missing = http.call("GET", "/keys/k", params={})
    assert (missing.status_code, error_of(missing)["code"]) == (400, "BadParameter")
    assert http.call("GET", "/keys/k", params={"api-version": "2099-01-01"}).status_code == 200


# ---- RBAC per built-in role ------------------------------------------------------------------

DIGEST = b64u(hashlib.sha256(b"m").digest())


def _requests(state: EmulatorState) -> dict[str, tuple[str, str, dict[str, Any] | None]]:
    """One well-formed request per operation, against objects that exist."""
    cert = state.vault.certificates.get("cert")
    return {
        "key_create": ("POST", "/keys/new/create", {"kty": "RSA"}),
        "key_import": ("PUT", "/keys/imported", {"key": jwk(rsa_key(2048, 2))}),
        "key_get": ("GET", "/keys/k/", None),
        "key_list": ("GET", "/keys", None),
        "key_list_versions": ("GET", "/keys/k/versions", None),
        "key_update": ("PATCH", "/keys/k/", {"tags": {"a": "b"}}),
        "sign": ("POST", "/keys/k//sign", {"alg": "PS256", "value": DIGEST}),
        "verify": ("POST", "/keys/k//verify", {"alg": "PS256", "digest": DIGEST, "value": "AA"}),
        "certificate_create": (
            "POST",
            "/certificates/cert/create",
            {"policy": {"x509_props": {"subject": "CN=x"}, "issuer": {"name": "Self"}}},
        ),
        "certificate_pending": ("GET", "/certificates/cert/pending", None),
        "certificate_import": (
            "POST",
            "/certificates/imported/import",
            {"value": base64.b64encode(make_cert(key=rsa_key(2048, 3)).pfx()).decode()},
        ),
        "certificate_get": ("GET", f"/certificates/cert/{cert.version}", None),
        "certificate_list": ("GET", "/certificates", None),
        "certificate_policy_get": ("GET", "/certificates/cert/policy", None),
        "certificate_list_versions": ("GET", "/certificates/cert/versions", None),
        "certificate_update": ("PATCH", "/certificates/cert/", {"tags": {"a": "b"}}),
        "secret_get": ("GET", "/secrets/cert/", None),
        "secret_list_versions": ("GET", "/secrets/cert/versions", None),
    }


def test_every_operation_has_an_rbac_request() -> None:
    state = new_state()
    state.vault.certificates.create("cert", self_signed_policy())
    assert set(_requests(state)) == set(OPERATION_DATA_ACTIONS)
    assert {r.operation for r in ROUTES} == set(OPERATION_DATA_ACTIONS)


@pytest.mark.parametrize("role", sorted(GRANTS))
def test_a_role_gets_403_for_exactly_the_operations_it_does_not_grant(
    http: Http, role: str
) -> None:
    state = http.state
    state.vault.keys.import_key("k", rsa_key(2048, 1))
    state.vault.certificates.create("cert", self_signed_policy())
    app = state.directory.register_application("least-privilege-app")
    state.rbac.assign(app.principal_id, role)
    caller = http.as_principal(app)
    forbidden = set()
    for operation, (method, path, body) in _requests(state).items():
        response = caller.call(method, path, json=body)
        if response.status_code == 403:
            error = error_of(response)
            assert error["code"] == "Forbidden"
            assert error["innererror"] == {"code": "ForbiddenByRbac"}
            assert OPERATION_DATA_ACTIONS[operation] in error["message"]
            forbidden.add(operation)
        else:
            assert response.status_code in (200, 202), (operation, response.get_json())
    assert forbidden == set(OPERATION_DATA_ACTIONS) - GRANTS[role]
    logged = {e.operation for e in state.log.entries(principal=app.principal_id) if e.status == 403}
    assert logged == forbidden


def test_a_principal_without_assignments_is_forbidden(http: Http) -> None:
    app = http.state.directory.register_application("nobody")
    response = http.as_principal(app).call("GET", "/keys")
    assert response.status_code == 403
    assert error_of(response)["innererror"]["code"] == "ForbiddenByRbac"


def test_custom_role_sign_and_certificate_read_is_least_privilege(http: Http) -> None:
    state = http.state
    state.vault.certificates.create("cert", self_signed_policy())
    app = state.directory.register_application("kvassert-app")
    actions = [
        "Microsoft.KeyVault/vaults/keys/sign/action",
        "Microsoft.KeyVault/vaults/certificates/read",
    ]
    state.rbac.assign(app.principal_id, data_actions=actions)
    caller = http.as_principal(app)
    bundle = caller.call("GET", "/certificates/cert/").get_json()
    kid_path = bundle["kid"].removeprefix(BASE)
    signed = caller.call("POST", f"{kid_path}/sign", json={"alg": "PS256", "value": DIGEST})
    assert signed.status_code == 200 and signed.get_json()["kid"] == bundle["kid"]
    assert caller.call("GET", "/secrets/cert/").status_code == 403
    assert caller.call("GET", "/keys/cert/").status_code == 403


# ---- wire shapes --------------------------------------------------------------------------


def test_key_bundle_shape(http: Http) -> None:
    created = http.call("POST", "/keys/k/create", json={"kty": "RSA-HSM", "key_size": 2048})
    assert created.status_code == 200
    body = created.get_json()
    key = body["key"]
    assert key["kid"].startswith(f"{BASE}/keys/k/") and len(key["kid"].rsplit("/", 1)[1]) == 32
    assert (key["kty"], key["e"]) == ("RSA-HSM", "AQAB")
    assert len(base64.urlsafe_b64decode(key["n"] + "==")) == 256
    attrs = body["attributes"]
    assert attrs["enabled"] is True and isinstance(attrs["created"], int)
    assert attrs["recoveryLevel"] == "Recoverable+Purgeable"
    latest = http.call("GET", "/keys/k/").get_json()
    assert latest["key"]["kid"] == key["kid"]


def test_sign_with_empty_version_signs_with_the_latest(http: Http) -> None:
    http.state.vault.keys.import_key("k", rsa_key(2048, 1))
    newest = http.state.vault.keys.import_key("k", rsa_key(2048, 2))
    response = http.call("POST", "/keys/k//sign", json={"alg": "RS256", "value": DIGEST})
    assert response.get_json()["kid"] == f"{BASE}/keys/k/{newest.version}"
    signature = base64.urlsafe_b64decode(response.get_json()["value"] + "==")
    verified = http.call(
        "POST",
        f"/keys/k/{newest.version}/verify",
        json={"alg": "RS256", "digest": DIGEST, "value": b64u(signature)},
    )
    assert verified.get_json() == {"value": True}


def test_wrong_digest_length_is_bad_parameter(http: Http) -> None:
    http.state.vault.keys.import_key("k", rsa_key(2048, 1))
    response = http.call("POST", "/keys/k//sign", json={"alg": "PS384", "value": DIGEST})
    assert response.status_code == 400
    assert error_of(response) == {
        "code": "BadParameter",
        "message": "Invalid digest length 32 for algorithm PS384: expected 48 bytes.",
    }


def test_certificate_create_poll_get_shapes(http: Http) -> None:
    policy = {
        "key_props": {"exportable": False, "kty": "RSA", "key_size": 2048, "reuse_key": False},
        "secret_props": {"contentType": "application/x-pkcs12"},
        "x509_props": {"subject": "CN=app", "validity_months": 12},
        "issuer": {"name": "Self"},
    }
    created = http.call("POST", "/certificates/app/create", json={"policy": policy})
    assert created.status_code == 202
    operation = created.get_json()
    assert operation["status"] == "inProgress" and operation["id"].endswith("/app/pending")
    assert created.headers["Location"].startswith(f"{BASE}/certificates/app/pending")
    polled = http.call("GET", "/certificates/app/pending").get_json()
    assert polled["status"] == "completed" and polled["target"] == f"{BASE}/certificates/app"
    bundle = http.call("GET", "/certificates/app").get_json()
    version = http.state.vault.certificates.get("app")
    assert bundle["id"] == f"{BASE}/certificates/app/{version.version}"
    assert bundle["kid"] == f"{BASE}/keys/app/{version.key_version}"
    assert bundle["sid"] == f"{BASE}/secrets/app/{version.secret_version}"
    assert bundle["cer"] == base64.b64encode(version.der).decode()
    assert bundle["x5t"] == b64u(hashlib.sha1(version.der).digest())
    assert bundle["policy"]["key_props"]["exportable"] is False
    assert bundle["policy"]["id"] == f"{BASE}/certificates/app/policy"
    secret = http.call("GET", "/secrets/app/").get_json()
    assert secret["kid"] == bundle["kid"] and secret["managed"] is True
    assert secret["contentType"] == "application/x-pkcs12"


def test_certificate_disable_version_over_http(http: Http) -> None:
    http.state.vault.certificates.create("app", self_signed_policy())
    version = http.state.vault.certificates.get("app").version
    patched = http.call(
        "PATCH", f"/certificates/app/{version}", json={"attributes": {"enabled": False}}
    )
    assert patched.get_json()["attributes"]["enabled"] is False
    secret = http.call("GET", "/secrets/app/")
    assert secret.status_code == 403
    assert error_of(secret)["innererror"] == {"code": "SecretDisabled"}


def test_import_pem_sent_as_pem_text_or_base64(http: Http) -> None:
    pem = make_cert(cn="pem", key=rsa_key(2048, 3)).pem().decode()
    policy = {"secret_props": {"contentType": "application/x-pem-file"}}
    for name, value in (("text", pem), ("b64", base64.b64encode(pem.encode()).decode())):
        response = http.call(
            "POST", f"/certificates/{name}/import", json={"value": value, "policy": policy}
        )
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["policy"]["secret_props"]["contentType"].endswith("pem-file")


def test_list_versions_pages_with_maxresults(http: Http) -> None:
    for slot in (1, 2, 3):
        http.state.vault.keys.import_key("k", rsa_key(2048, slot))
    first = http.call(
        "GET", "/keys/k/versions", params={"api-version": "7.5", "maxresults": "2"}
    ).get_json()
    assert len(first["value"]) == 2 and first["nextLink"]
    query = first["nextLink"].split("?", 1)[1]
    second = http.call("GET", f"/keys/k/versions?{query}", params={}).get_json()
    assert len(second["value"]) == 1 and second["nextLink"] is None
    kids = [item["kid"] for item in first["value"] + second["value"]]
    assert kids == [f"{BASE}/keys/k/{k.version}" for k in http.state.vault.keys.versions("k")]
    bad = http.call("GET", "/keys/k/versions", params={"api-version": "7.5", "maxresults": "26"})
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/keys/missing/", "KeyNotFound"),
        ("/certificates/missing/", "CertificateNotFound"),
        ("/secrets/missing/", "SecretNotFound"),
    ],
)
def test_not_found_bodies(http: Http, path: str, code: str) -> None:
    response = http.call("GET", path)
    assert response.status_code == 404
    assert error_of(response)["code"] == code


def test_unknown_route_and_wrong_method_use_key_vaults_shape(http: Http) -> None:
    missing = http.call("GET", "/keys/k/v/unknown")
    assert missing.status_code == 404 and error_of(missing)["code"] == "NotFound"
    wrong = http.call("DELETE", "/keys")
    assert wrong.status_code == 405 and error_of(wrong)["code"] == "MethodNotAllowed"
    assert wrong.headers["Allow"] == "GET, HEAD"


def test_body_over_the_limit_is_413_in_key_vaults_shape(http: Http) -> None:
    response = http.call("POST", "/keys/k/create", data=b"{" + b" " * (1024 * 1024 + 1) + b"}")
    assert response.status_code == 413
    assert error_of(response)["code"] == "RequestEntityTooLarge"


@pytest.mark.parametrize(
    "data",
    [b"", b"not json", b"[1,2]", b'{"kty": 5}', b'{"kty": "RSA", "key_size": "big"}'],
)
def test_malformed_bodies_are_bad_parameter(http: Http, data: bytes) -> None:
    response = http.call("POST", "/keys/k/create", data=data)
    assert (response.status_code, error_of(response)["code"]) == (400, "BadParameter")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = st.sampled_from(
    ["kty", "key_size", "key_ops", "attributes", "tags", "key", "alg", "value", "digest",
     "policy", "pwd", "Hsm", "public_exponent"]
)  # fmt: skip
BODIES = st.dictionaries(FIELDS, JSON, max_size=5) | JSON
PATHS = st.sampled_from(
    [
        ("POST", "/keys/k/create"),
        ("PUT", "/keys/k"),
        ("PATCH", "/keys/k/"),
        ("POST", "/keys/k//sign"),
        ("POST", "/keys/k//verify"),
        ("POST", "/certificates/c/create"),
        ("POST", "/certificates/c/import"),
        ("PATCH", "/certificates/c/"),
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(route=PATHS, body=BODIES)
def test_garbage_input_never_500(http: Http, route: tuple[str, str], body: Any) -> None:
    if not http.state.vault.keys.names():
        http.state.vault.keys.import_key("k", rsa_key(2048, 1))
    method, path = route
    response = http.call(method, path, json=body)
    assert response.status_code < 500, response.get_data()
    if response.status_code >= 400:
        assert set(error_of(response)) >= {"code", "message"}


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(segment=st.text(min_size=1, max_size=40), query=st.text(max_size=40))
def test_garbage_paths_and_queries_never_500(http: Http, segment: str, query: str) -> None:
    from urllib.parse import quote

    response = http.call(
        "GET", f"/keys/{quote(segment, safe='')}/versions", params={"api-version": "1", "x": query}
    )
    assert response.status_code in (400, 404)


# ---- faults at the HTTP layer --------------------------------------------------------------


def test_throttled_fault_uses_key_vaults_shape_and_retry_after(http: Http) -> None:
    http.state.vault.keys.import_key("k", rsa_key(2048, 1))
    http.state.faults.add(Fault("sign", status=429, retry_after=3, count=1))
    body = {"alg": "PS256", "value": DIGEST}
    throttled = http.call("POST", "/keys/k//sign", json=body)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "3"
    assert error_of(throttled)["code"] == "Throttled"
    assert http.call("POST", "/keys/k//sign", json=body).status_code == 200
    assert [(e.status, e.fault) for e in http.state.log.entries(operation="sign")] == [
        (429, True),
        (200, False),
    ]


def test_garbage_body_fault(http: Http) -> None:
    http.state.faults.add(Fault("certificate_get", status=502, body="<html>Bad Gateway</html>"))
    response = http.call("GET", "/certificates/c")
    assert response.status_code == 502 and response.content_type.startswith("text/html")
    assert response.get_data() == b"<html>Bad Gateway</html>"


def test_pure_latency_fault_lets_the_request_through(http: Http) -> None:
    http.state.faults.add(Fault("key_list", latency_ms=1, count=1))
    assert http.call("GET", "/keys").status_code == 200
    assert http.state.faults.list() == []


def test_entra_and_identity_faults_use_their_services_shapes(http: Http) -> None:
    tenant = http.state.directory.tenant_id
    http.state.faults.add(Fault("token", status=503, count=1))
    token = http.call("POST", f"/{tenant}/oauth2/v2.0/token", auth=False, params={})
    assert token.status_code == 503
    assert token.get_json()["error"] == "temporarily_unavailable"
    assert token.get_json()["error_codes"]
    http.state.faults.add(Fault("identity", status=500, count=1))
    msi = http.call("GET", "/msi/token", auth=False, params={})
    assert msi.status_code == 500 and msi.get_json()["statusCode"] == 500
