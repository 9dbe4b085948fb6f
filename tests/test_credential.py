"""The public credential against a scripted token endpoint: caching, single flight, fallback."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from azure.core.credentials import AccessToken as AzureAccessToken

from kvassert import AzureAdCredential, settings_from_mapping
from kvassert.errors import AllCredentialsFailedError, KvassertError, TokenRequestError
from kvassert.transport import RetryPolicy
from tests.certs import CertBundle, make_cert, rsa_key
from tests.fakes import Answer, Script, scripted_server

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "00000000-0000-0000-0000-0000000000c1"
FAST = RetryPolicy(attempts=2, backoff=0.01, jitter=0.0, deadline=3.0)


def ok(token: str = "tok", expires_in: int = 3600) -> Answer:
    body = {"token_type": "Bearer", "expires_in": expires_in, "access_token": token}
    return 200, {}, json.dumps(body).encode()


def aadsts(code: int, status: int = 401) -> Answer:
    body = {
        "error": "invalid_client",
        "error_description": f"AADSTS{code}: nope",
        "error_codes": [code],
        "trace_id": "t",
        "correlation_id": "c",
    }
    return status, {}, json.dumps(body).encode()


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Script]]:
    with scripted_server() as served:
        yield served


@pytest.fixture(scope="module")
def cert_a() -> CertBundle:
    return make_cert(cn="a", days=365)


@pytest.fixture(scope="module")
def cert_b() -> CertBundle:
    return make_cert(cn="b", key=rsa_key(2048, 3), days=365)


def credential(base: str, credentials: list[dict[str, Any]], **section: Any) -> AzureAdCredential:
    settings = settings_from_mapping(
        {
            "AzureAd": {
                "Instance": base + "/",
                "TenantId": TENANT,
                "ClientId": CLIENT,
                "ClientCredentials": credentials,
                **section,
            }
        },
        env={},
    )
    return AzureAdCredential(settings, retry_policy=FAST)


def pem_entry(tmp_path: Path, cert: CertBundle, name: str = "c.pem") -> dict[str, Any]:
    path = tmp_path / name
    path.write_bytes(cert.pem())
    return {"SourceType": "Path", "CertificateDiskPath": str(path)}


def test_first_token_then_cache_hits(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok()]
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        first = cred.get_token("api://x/.default")
        for _ in range(50):
            assert cred.get_token("api://x/.default").token == "tok"
    assert isinstance(first, AzureAccessToken)
    assert script.hits == 1
    form = script.forms[0]
    assert form["scope"] == "api://x/.default" and form["grant_type"] == "client_credentials"
    claims = jwt.decode(
        form["client_assertion"],
        cert_a.cert.public_key(),
        algorithms=["PS256"],
        audience=f"{base}/{TENANT}/oauth2/v2.0/token",
    )
    assert claims["sub"] == CLIENT


def test_32_cold_threads_make_one_request(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint

    def slow(form: dict[str, str]) -> Answer:
        time.sleep(0.3)
        return ok()

    script.responder = slow
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        barrier = threading.Barrier(32)
        tokens: list[str] = []

        def call() -> None:
            barrier.wait()
            tokens.append(cred.get_token("api://x/.default").token)

        threads = [threading.Thread(target=call) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert tokens == ["tok"] * 32
    assert script.hits == 1


def test_fallback_in_order_skips_unloadable_and_rejected(
    endpoint: tuple[str, Script],
    tmp_path: Path,
    cert_a: CertBundle,
    cert_b: CertBundle,
    caplog: pytest.LogCaptureFixture,
) -> None:
    base, script = endpoint
    thumbprint_a = base64.urlsafe_b64encode(hashlib.sha256(cert_a.der).digest()).rstrip(b"=")

    def respond(form: dict[str, str]) -> Answer:
        if "client_secret" in form:
            return ok("from-secret")
        header = jwt.get_unverified_header(form["client_assertion"])
        return aadsts(700027) if header["x5t#S256"] == thumbprint_a.decode() else ok("from-b")

    script.responder = respond
    entries = [
        {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pem")},
        pem_entry(tmp_path, cert_a, "a.pem"),
        pem_entry(tmp_path, cert_b, "b.pem"),
        {"SourceType": "ClientSecret", "ClientSecret": "secret-canary"},
    ]
    with credential(base, entries) as cred:
        assert cred.get_token("api://x/.default").token == "from-b"
    assert script.hits == 2  # a was rejected, b accepted; the missing file cost nothing
    assert "missing.pem" in caplog.text and "AADSTS700027" in caplog.text
    assert "secret-canary" not in caplog.text


def test_all_failing_lists_every_credential(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [aadsts(700027)]
    entries = [
        {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pem")},
        pem_entry(tmp_path, cert_a),
    ]
    with credential(base, entries) as cred, pytest.raises(AllCredentialsFailedError) as info:
        cred.get_token("api://x/.default")
    labels = [label for label, _ in info.value.failures]
    assert labels[0].startswith("AzureAd:ClientCredentials:0")
    assert labels[1].startswith("AzureAd:ClientCredentials:1")
    assert "AADSTS700027" in str(info.value) or "700027" in str(info.value)


def test_single_credential_failure_keeps_its_own_error_type(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [aadsts(700027)]
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        with pytest.raises(TokenRequestError) as info:
            cred.get_token("api://x/.default")
    assert info.value.aadsts == 700027
    assert info.value.hint.startswith("the certificate with x5t#S256=")


def test_non_credential_error_is_not_retried_with_other_credentials(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [aadsts(500011, status=400)]
    entries = [pem_entry(tmp_path, cert_a), {"SourceType": "ClientSecret", "ClientSecret": "s"}]
    with credential(base, entries) as cred, pytest.raises(TokenRequestError) as info:
        cred.get_token("api://nope/.default")
    assert info.value.aadsts == 500011
    assert script.hits == 1


def test_claims_challenge_bypasses_the_cache(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok("one"), ok("two")]
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        cred.get_token("api://x/.default")
        assert cred.get_token("api://x/.default", claims='{"access_token":{}}').token == "two"
        assert cred.get_token("api://x/.default").token == "two"
    assert script.hits == 2
    assert script.forms[1]["claims"] == '{"access_token":{}}'


def test_other_tenants_need_to_be_allowed(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok()]
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        with pytest.raises(KvassertError, match="additionally_allowed_tenants"):
            cred.get_token("api://x/.default", tenant_id="other")
    settings = settings_from_mapping(
        {
            "AzureAd": {
                "Instance": base + "/",
                "TenantId": TENANT,
                "ClientId": CLIENT,
                "ClientCredentials": [pem_entry(tmp_path, cert_a)],
            }
        },
        env={},
    )
    with AzureAdCredential(settings, additionally_allowed_tenants=["other"]) as cred:
        cred.get_token("api://x/.default", tenant_id="other")
    aud = jwt.decode(script.forms[-1]["client_assertion"], options={"verify_signature": False})
    assert aud["aud"] == f"{base}/other/oauth2/v2.0/token"


def test_token_info_and_v1_resource(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok(expires_in=3600)]
    with credential(base, [pem_entry(tmp_path, cert_a)], Kvassert={"TokenVersion": "v1"}) as cred:
        info = cred.get_token_info("https://vault.azure.net/.default")
    assert info.refresh_on is not None and info.refresh_on < info.expires_on
    assert info.token_type == "Bearer"
    assert script.forms[0]["resource"] == "https://vault.azure.net"
    aud = jwt.decode(script.forms[0]["client_assertion"], options={"verify_signature": False})
    assert aud["aud"] == f"{base}/{TENANT}/oauth2/token"


def test_client_assertion_callable_and_redacted_repr(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, _ = endpoint
    entries = [pem_entry(tmp_path, cert_a), {"SourceType": "ClientSecret", "ClientSecret": "can-1"}]
    with credential(base, entries) as cred:
        make = cred.client_assertion
        first, second = make(), make()
        assert "can-1" not in repr(cred)
    one = jwt.decode(first, options={"verify_signature": False})
    two = jwt.decode(second, options={"verify_signature": False})
    assert one["aud"] == f"{base}/{TENANT}/oauth2/v2.0/token"
    assert one["jti"] != two["jti"]


@pytest.mark.parametrize("skew", [600, -600])
def test_clock_skew_is_learned_from_date_header_and_reused(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle, skew: int
) -> None:
    from email.utils import formatdate

    base, script = endpoint

    def skewed_entra(form: dict[str, str]) -> Answer:
        server_now = time.time() + skew
        claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
        headers = {"Date": formatdate(server_now, usegmt=True)}
        if not claims["nbf"] - 300 <= server_now < claims["exp"]:
            status, _, body = aadsts(700024, status=400)
            return status, headers, body
        return 200, headers, ok()[2]

    script.responder = skewed_entra
    with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
        cred.get_token("api://x/.default")
        assert script.hits == 2  # rejected once, corrected, accepted
        assert abs(cred.clock_offset - skew) < 5
        cred.get_token("api://other/.default")
        assert script.hits == 3  # the offset is reused: no second rejection
