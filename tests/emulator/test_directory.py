"""The directory state, called directly: registrations, tokens, and every client-assertion rule
with the exact AADSTS code Entra answers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from kvassert.emulator.assertion_checks import CLIENT_ASSERTION_TYPE, EntraError
from kvassert.emulator.client_auth import authenticate_client
from kvassert.emulator.clock import Clock
from kvassert.emulator.directory import Application, Directory, InvalidAccessToken
from tests.certs import CertBundle, make_cert, rsa_key
from tests.emulator.entra_support import (
    BASE,
    assertion,
    b64u,
    make_directory,
    segment,
    v1_endpoint,
    v2_endpoint,
)

CLIENT = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def directory(clock: Clock) -> Directory:
    return make_directory(clock)


@pytest.fixture(scope="module")
def cert() -> CertBundle:
    return make_cert(cn="kvassert-app", key=rsa_key(2048, 1))


@pytest.fixture(scope="module")
def other_cert() -> CertBundle:
    return make_cert(cn="not-registered", key=rsa_key(2048, 2))


@pytest.fixture
def app(directory: Directory, cert: CertBundle) -> Application:
    return directory.register_application(CLIENT, certificates=[cert.der], secrets=["s3cret"])


def authenticate(directory: Directory, token: str, *, endpoint: str | None = None) -> str:
    tenant = directory.tenant_id
    _, acr = authenticate_client(
        directory,
        tenant_id=tenant,
        client_id=CLIENT,
        client_assertion=token,
        client_assertion_type=CLIENT_ASSERTION_TYPE,
        endpoint_url=endpoint or v2_endpoint(tenant),
        base_url=BASE,
    )
    return acr


def rejected(directory: Directory, token: str, **kwargs: Any) -> int:
    with pytest.raises(EntraError) as info:
        authenticate(directory, token, **kwargs)
    return info.value.code


def make(directory: Directory, cert: CertBundle, **kwargs: Any) -> str:
    kwargs.setdefault("client_id", CLIENT)
    kwargs.setdefault("aud", v2_endpoint(directory.tenant_id))
    kwargs.setdefault("now", directory.clock.now())
    return assertion(cert, **kwargs)


# -- registrations -------------------------------------------------------------------------------
def test_replacing_an_application_keeps_its_service_principal(directory: Directory) -> None:
    first = directory.register_application(CLIENT, secrets=["a"])
    second = directory.register_application(CLIENT.upper(), secrets=["b"])
    assert second.principal_id == first.principal_id
    assert directory.get_application(CLIENT) == second
    assert second.check_secret("b") and not second.check_secret("a")


def test_secrets_are_kept_as_digests_and_not_shown(directory: Directory) -> None:
    app = directory.register_application(CLIENT, secrets=["canary-value-123"])
    assert "canary-value-123" not in repr(app)
    assert "canary-value-123" not in json.dumps(directory.to_dict())


def test_registration_refuses_unknown_settings_and_non_rsa_certificates(
    directory: Directory,
) -> None:
    with pytest.raises(TypeError, match="approles"):
        directory.register_application(CLIENT, approles=["x"])
    ec_cert = make_cert(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match="RSA"):
        directory.register_application(CLIENT, certificates=[ec_cert.der])
    with pytest.raises(ValueError, match="access_token_version"):
        directory.register_application(CLIENT, access_token_version=3)


def test_certificates_may_be_pem(directory: Directory, cert: CertBundle) -> None:
    app = directory.register_application(CLIENT, certificates=[cert.pem(with_chain=False)])
    assert app.certificates[0].der == cert.der


def test_managed_identities_are_found_by_each_selector(directory: Directory) -> None:
    uai = directory.create_user_assigned_identity(name="worker")
    assert directory.find_identity() == directory.system_identity
    assert directory.find_identity(client_id=uai.client_id.upper()) == uai
    assert directory.find_identity(principal_id=uai.principal_id) == uai
    assert directory.find_identity(resource_id=uai.resource_id.upper()) == uai
    assert uai.resource_id.endswith("/userAssignedIdentities/worker")
    assert directory.find_identity(client_id=str(uuid.uuid4())) is None


# -- resources and tokens ------------------------------------------------------------------------
def test_resources_resolve_first_party_and_registered_apps(directory: Directory) -> None:
    api = directory.register_application(str(uuid.uuid4()), identifier_uris=["api://orders"])
    assert directory.resolve_resource(directory.tenant_id, "https://vault.azure.net/").app_id == (
        "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
    )
    assert directory.resolve_resource(directory.tenant_id, "API://orders").app == api
    assert directory.resolve_resource(directory.tenant_id, api.client_id).app == api
    with pytest.raises(EntraError) as info:
        directory.resolve_resource(directory.tenant_id, "api://nobody")
    assert info.value.code == 500011


def test_v1_token_claims(directory: Directory, app: Application) -> None:
    resource = directory.resolve_resource(directory.tenant_id, "https://vault.azure.net")
    issued = directory.issue_token(
        app, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    )
    claims = jwt.decode(issued.access_token, options={"verify_signature": False})
    header = jwt.get_unverified_header(issued.access_token)
    assert header["kid"] == header["x5t"] and header["alg"] == "RS256"
    assert claims["aud"] == "https://vault.azure.net"
    assert claims["iss"] == f"{BASE}/{directory.tenant_id}/"
    assert claims["ver"] == "1.0" and claims["appid"] == CLIENT and claims["appidacr"] == "2"
    assert claims["oid"] == claims["sub"] == app.principal_id
    assert claims["idtyp"] == "app" and claims["tid"] == directory.tenant_id
    assert claims["exp"] - claims["iat"] == 3600 and issued.expires_in == 3599
    assert "roles" not in claims


def test_v2_token_for_a_v2_api_carries_roles_and_the_api_client_id(directory: Directory) -> None:
    api = directory.register_application(
        str(uuid.uuid4()),
        identifier_uris=["api://orders"],
        app_roles=["Data.Read", "Data.Write"],
        access_token_version=2,
    )
    caller = directory.register_application(
        CLIENT, app_roles_granted={"api://orders": ["Data.Read", "Not.Defined"]}
    )
    resource = directory.resolve_resource(directory.tenant_id, "api://orders")
    issued = directory.issue_token(
        caller, resource, tenant_id=directory.tenant_id, base_url=BASE, version=2, acr="1"
    )
    claims = directory.validate_access_token(issued.access_token, audiences={api.client_id})
    assert claims["ver"] == "2.0" and claims["azp"] == CLIENT and claims["azpacr"] == "1"
    assert claims["iss"] == f"{BASE}/{directory.tenant_id}/v2.0"
    assert claims["roles"] == ["Data.Read"]


def test_managed_identity_tokens_name_the_identity(directory: Directory) -> None:
    uai = directory.create_user_assigned_identity()
    resource = directory.resolve_resource(directory.tenant_id, "https://vault.azure.net")
    issued = directory.issue_token(
        uai, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    )
    claims = directory.validate_access_token(
        issued.access_token, audiences={"https://vault.azure.net"}
    )
    assert claims["appid"] == uai.client_id and claims["oid"] == uai.principal_id
    assert claims["xms_mirid"] == uai.resource_id


def test_validation_refuses_foreign_expired_early_and_misaddressed_tokens(
    clock: Clock, directory: Directory, app: Application
) -> None:
    resource = directory.resolve_resource(directory.tenant_id, "https://vault.azure.net")
    token = directory.issue_token(
        app, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    ).access_token
    with pytest.raises(InvalidAccessToken, match="audience"):
        directory.validate_access_token(token, audiences={"https://storage.azure.com"})
    clock.set_offset(3600 + 299)  # inside the 5 minute skew
    directory.validate_access_token(token, audiences={"https://vault.azure.net"})
    clock.set_offset(3600 + 301)
    with pytest.raises(InvalidAccessToken, match="expired"):
        directory.validate_access_token(token, audiences={"https://vault.azure.net"})
    clock.set_offset(-301)
    with pytest.raises(InvalidAccessToken, match="not yet valid"):
        directory.validate_access_token(token, audiences={"https://vault.azure.net"})
    clock.set_offset(0)
    stranger = Directory(Clock())  # its own signing key
    with pytest.raises(InvalidAccessToken, match="not signed"):
        stranger.validate_access_token(token, audiences={"https://vault.azure.net"})
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = f"{head}.{segment({**claims, 'oid': 'someone-else'})}.{sig}"
    with pytest.raises(InvalidAccessToken, match="invalid token"):
        directory.validate_access_token(forged, audiences={"https://vault.azure.net"})


def test_rotation_keeps_old_tokens_valid_and_publishes_both_keys(
    directory: Directory, app: Application
) -> None:
    resource = directory.resolve_resource(directory.tenant_id, "https://vault.azure.net")
    old = directory.issue_token(
        app, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    ).access_token
    new_key = directory.rotate_signing_key()
    new = directory.issue_token(
        app, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    ).access_token
    assert jwt.get_unverified_header(new)["kid"] == new_key.kid
    for token in (old, new):
        directory.validate_access_token(token, audiences={"https://vault.azure.net"})
    assert len(directory.jwks()["keys"]) == 2


def test_state_survives_a_save_and_load(
    clock: Clock, directory: Directory, cert: CertBundle
) -> None:
    directory.register_application(CLIENT, certificates=[cert.der], secrets=["s3cret"])
    uai = directory.create_user_assigned_identity()
    directory.policy = replace(directory.policy, require_integer_times=True)
    resource = directory.resolve_resource(directory.tenant_id, "https://vault.azure.net")
    token = directory.issue_token(
        uai, resource, tenant_id=directory.tenant_id, base_url=BASE, version=1, acr="2"
    ).access_token
    loaded = Directory.from_dict(json.loads(json.dumps(directory.to_dict())), clock)
    assert (loaded.tenant_id, loaded.identity_header) == (
        directory.tenant_id,
        directory.identity_header,
    )
    assert loaded.system_identity == directory.system_identity
    assert loaded.find_identity(client_id=uai.client_id) == uai
    assert loaded.get_application(CLIENT) == directory.get_application(CLIENT)
    assert loaded.policy.require_integer_times
    loaded.validate_access_token(token, audiences={"https://vault.azure.net"})
    assert authenticate(loaded, make(loaded, cert)) == "2"


# -- client authentication: secrets and the request ---------------------------------------------
def test_secret_authentication(directory: Directory, app: Application) -> None:
    base: dict[str, Any] = {
        "tenant_id": directory.tenant_id,
        "endpoint_url": v2_endpoint(directory.tenant_id),
        "base_url": BASE,
    }
    assert authenticate_client(directory, client_id=CLIENT, client_secret="s3cret", **base) == (
        app,
        "1",
    )
    cases = [
        ({"client_id": CLIENT, "client_secret": "wrong"}, 7000215),
        ({"client_id": CLIENT}, 7000218),
        ({"client_id": str(uuid.uuid4()), "client_secret": "s3cret"}, 700016),
        ({"client_id": CLIENT, "client_secret": "s3cret", "client_assertion": "a.b.c"}, 90023),
        ({"client_id": CLIENT, "client_assertion": "a.b.c"}, 900144),  # no assertion type
    ]
    for kwargs, code in cases:
        with pytest.raises(EntraError) as info:
            authenticate_client(directory, **kwargs, **base)
        assert info.value.code == code, kwargs


def test_an_app_of_another_tenant_is_not_found(directory: Directory, cert: CertBundle) -> None:
    other = directory.add_tenant()
    directory.register_application(CLIENT, tenant_id=other, certificates=[cert.der])
    assert rejected(directory, make(directory, cert)) == 700016


# -- client authentication: certificate assertions ----------------------------------------------
def test_kvassert_default_assertion_is_accepted(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    assert authenticate(directory, make(directory, cert)) == "2"


def test_rs256_with_sha1_thumbprint_is_accepted(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    assert authenticate(directory, make(directory, cert, alg="RS256", thumbprint="x5t")) == "2"


def test_v1_endpoint_assertion(directory: Directory, app: Application, cert: CertBundle) -> None:
    endpoint = v1_endpoint(directory.tenant_id)
    assert authenticate(directory, make(directory, cert, aud=endpoint), endpoint=endpoint) == "2"


def test_x5c_leaf_is_accepted_when_registered(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    x5c = [base64.b64encode(cert.der).decode()]
    assert authenticate(directory, make(directory, cert, thumbprint="", header={"x5c": x5c})) == "2"
    both = make(directory, cert, header={"x5c": x5c})
    assert authenticate(directory, both) == "2"
    # msal-python sends the PEM body, line breaks included.
    wrapped = "\n".join(x5c[0][i : i + 64] for i in range(0, len(x5c[0]), 64))
    assert authenticate(directory, make(directory, cert, header={"x5c": [wrapped]})) == "2"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"header": {"x5t#S256": b64u(b"\x01" * 32)}}, 700027),  # wrong x5t#S256
        ({"thumbprint": "x5t", "alg": "RS256", "header": {"x5t": b64u(b"\x02" * 20)}}, 700027),
        ({"thumbprint": ""}, 700027),  # no key identifier at all
        ({"alg": "RS256", "scheme": "pss"}, 700027),  # RS256 header, PSS signature
        ({"alg": "PS256", "scheme": "pkcs1"}, 700027),  # PS256 header, PKCS#1 v1.5 signature
        ({"salt": 64}, 700027),  # PS256 salt must be 32 (RFC 7518 section 3.5)
        ({"salt": 0}, 700027),
        ({"alg": "HS256", "scheme": "pkcs1"}, 50027),
        ({"alg": "none", "scheme": "pkcs1"}, 50027),
        ({"header": {"x5t#S256": "not*base64"}}, 50027),
        ({"header": {"typ": "at+jwt"}}, 50027),
        ({"header": {"crit": ["exp"]}}, 50027),
    ],
)
def test_key_and_signature_rules(
    directory: Directory, app: Application, cert: CertBundle, kwargs: dict[str, Any], code: int
) -> None:
    assert rejected(directory, make(directory, cert, **kwargs)) == code


def test_unregistered_certificate(
    directory: Directory, app: Application, other_cert: CertBundle
) -> None:
    assert rejected(directory, make(directory, other_cert)) == 700027
    sha1 = make(directory, other_cert, alg="RS256", thumbprint="x5t")
    assert rejected(directory, sha1) == 700027


def test_x5c_must_be_the_certificate_the_thumbprint_names(
    directory: Directory, app: Application, cert: CertBundle, other_cert: CertBundle
) -> None:
    foreign = [base64.b64encode(other_cert.der).decode()]
    assert rejected(directory, make(directory, cert, header={"x5c": foreign})) == 700027
    assert (
        rejected(directory, make(directory, other_cert, thumbprint="", header={"x5c": foreign}))
        == 700027
    )


def test_an_expired_registered_certificate_is_refused(directory: Directory) -> None:
    old = make_cert(
        key=rsa_key(2048, 1), not_before=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), days=30
    )
    directory.register_application(CLIENT, certificates=[old.der])
    assert rejected(directory, make(directory, old)) == 1000502


@pytest.mark.parametrize(
    ("aud", "code"),
    [
        ("{base}/{tenant}/oauth2/token", 700023),  # v1 sibling of the v2 endpoint used
        ("{base}/{tenant}/oauth2/v2.0/token/", 700023),  # trailing slash
        ("{base}/{other}/oauth2/v2.0/token", 700023),  # another tenant
        ("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token", 700023),
        ("{base}/{tenant}/v2.0", 700023),  # the issuer, not the endpoint
        ("{base}/{tenant}/oauth2/v2.0/token?x=1", 700023),
    ],
)
def test_audience_must_be_the_endpoint_used(
    directory: Directory, app: Application, cert: CertBundle, aud: str, code: int
) -> None:
    value = aud.format(base=BASE, tenant=directory.tenant_id, other=uuid.uuid4())
    assert rejected(directory, make(directory, cert, aud=value)) == code


def test_audience_compares_host_and_tenant_without_case(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    aud = f"{BASE.upper()}/{directory.tenant_id.upper()}/oauth2/v2.0/token"
    assert authenticate(directory, make(directory, cert, aud=aud)) == "2"
    wrong_path = f"{BASE}/{directory.tenant_id}/OAUTH2/v2.0/token"
    assert rejected(directory, make(directory, cert, aud=wrong_path)) == 700023


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": "someone-else"}, 50048),  # iss != sub
        ({"iss": "someone-else", "sub": "someone-else"}, 700021),  # iss = sub != client_id
        ({"aud": ["{aud}"]}, 50027),  # an aud array is malformed for Entra
        ({"jti": 42}, 50027),
        ({"exp": "{exp}"}, 50027),  # a string time
        ({"exp": True}, 50027),
        ({"nbf": "now"}, 50027),
    ],
)
def test_claim_rules(
    directory: Directory, app: Application, cert: CertBundle, claims: dict[str, Any], code: int
) -> None:
    now = directory.clock.now()
    aud = v2_endpoint(directory.tenant_id)
    filled = {
        k: [aud] if v == ["{aud}"] else str(int(now) + 600) if v == "{exp}" else v
        for k, v in claims.items()
    }
    assert rejected(directory, make(directory, cert, claims=filled)) == code


@pytest.mark.parametrize("name", ["jti", "exp", "iss", "sub", "aud"])
def test_required_claims(
    directory: Directory, app: Application, cert: CertBundle, name: str
) -> None:
    assert rejected(directory, make(directory, cert, drop=[name])) == 90014


def test_time_window_with_five_minutes_of_skew(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    now = directory.clock.now()
    assert authenticate(directory, make(directory, cert, now=now - 600 - 290)) == "2"
    assert rejected(directory, make(directory, cert, now=now - 600 - 310)) == 700024
    assert authenticate(directory, make(directory, cert, now=now + 290)) == "2"
    assert rejected(directory, make(directory, cert, now=now + 310)) == 700024
    no_nbf = make(directory, cert, drop=["nbf"])
    assert authenticate(directory, no_nbf) == "2"


def test_lifetime_is_bounded_at_an_hour_unless_the_policy_says_otherwise(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    # azure-identity's own assertions live 30 minutes; day-long ones are refused by default.
    assert authenticate(directory, make(directory, cert, lifetime=1800)) == "2"
    assert authenticate(directory, make(directory, cert, lifetime=3600)) == "2"
    assert rejected(directory, make(directory, cert, lifetime=3601)) == 700024
    assert rejected(directory, make(directory, cert, lifetime=86400)) == 700024
    directory.policy = replace(directory.policy, max_lifetime_seconds=None)
    assert authenticate(directory, make(directory, cert, lifetime=86400)) == "2"
    directory.policy = replace(directory.policy, max_lifetime_seconds=600)
    assert authenticate(directory, make(directory, cert, lifetime=600)) == "2"
    assert rejected(directory, make(directory, cert, lifetime=601)) == 700024


def test_float_times_pass_unless_integers_are_required(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    now = directory.clock.now()  # msal-python sends time.time() floats
    floats = {"iat": now, "nbf": now, "exp": now + 600.5}
    assert authenticate(directory, make(directory, cert, claims=floats)) == "2"
    directory.policy = replace(directory.policy, require_integer_times=True)
    assert rejected(directory, make(directory, cert, claims=floats)) == 50027
    assert authenticate(directory, make(directory, cert)) == "2"


def test_a_replayed_assertion_is_accepted_like_entra_does(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    token = make(directory, cert)  # msal-python reuses one assertion for up to 540 s
    assert authenticate(directory, token) == authenticate(directory, token) == "2"


@pytest.mark.parametrize(
    "token",
    [
        "only.two",
        "a.b.c.d",
        "..",
        "!!!.e30.c2ln",
        f"{segment([1])}.{segment({})}.c2ln",  # header not an object
        "eyJhbGciOiJQUzI1NiJ9.bm90IGpzb24.c2ln",  # payload not JSON
        '{"alg":"PS256"}.e30.c2ln',
    ],
)
def test_malformed_assertions(directory: Directory, app: Application, token: str) -> None:
    assert rejected(directory, token) == 50027


def test_duplicate_claims_are_malformed(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    token = make(directory, cert)
    head, body, sig = token.split(".")
    payload = base64.urlsafe_b64decode(body + "==").decode()
    doubled = b64u(payload.replace('"sub":', '"sub":"x","sub":', 1).encode())
    assert rejected(directory, f"{head}.{doubled}.{sig}") == 50027


def test_padded_base64_passes_unless_the_policy_forbids_it(
    directory: Directory, app: Application, cert: CertBundle
) -> None:
    token = make(directory, cert)
    head, body, sig = token.split(".")
    padded = ".".join(p + "=" * (-len(p) % 4) for p in (head, body, sig))
    assert padded != token
    # The signature covers the padded text, as in azure-identity's hand-built JWS: re-sign it.
    key = cert.key
    from tests.emulator.entra_support import sign

    signing_input = ".".join(padded.split(".")[:2]).encode()
    sig_b64 = base64.urlsafe_b64encode(sign(signing_input, key, scheme="pss")).decode()  # type: ignore[arg-type]
    padded = f"{signing_input.decode()}.{sig_b64}"
    assert authenticate(directory, padded) == "2"
    directory.policy = replace(directory.policy, allow_padded_base64=False)
    assert rejected(directory, padded) == 50027


# -- client authentication: federated credential from a managed identity -------------------------
def _mi_token(directory: Directory, mi: Any, resource: str = "api://AzureADTokenExchange") -> str:
    res = directory.resolve_resource(directory.tenant_id, resource)
    return directory.issue_token(
        mi, res, tenant_id=directory.tenant_id, base_url=BASE, version=res.accepted_version, acr="2"
    ).access_token


def test_federated_managed_identity_assertion(clock: Clock, directory: Directory) -> None:
    trusted = directory.create_user_assigned_identity()
    stranger = directory.create_user_assigned_identity()
    directory.register_application(CLIENT, federated_identities=[trusted.client_id])
    assert authenticate(directory, _mi_token(directory, trusted)) == "2"
    assert rejected(directory, _mi_token(directory, stranger)) == 700213
    assert rejected(directory, _mi_token(directory, trusted, "https://vault.azure.net")) == 700212
    by_principal = directory.register_application(
        CLIENT, federated_identities=[directory.system_identity.principal_id]
    )
    assert by_principal.federated_identities
    assert authenticate(directory, _mi_token(directory, directory.system_identity)) == "2"
    token = _mi_token(directory, directory.system_identity)
    clock.set_offset(3600 + 301)
    assert rejected(directory, token) == 700024


def test_federated_assertion_needs_a_trust_and_a_genuine_token(directory: Directory) -> None:
    mi = directory.create_user_assigned_identity()
    directory.register_application(CLIENT)  # trusts nobody
    assert rejected(directory, _mi_token(directory, mi)) == 700211
    directory.register_application(CLIENT, federated_identities=[mi.client_id])
    impostor = Directory(Clock(), tenant_id=directory.tenant_id)  # same issuer, other key
    impostor_mi = impostor.create_user_assigned_identity(mi.client_id, mi.principal_id)
    assert rejected(directory, _mi_token(impostor, impostor_mi)) == 700027
