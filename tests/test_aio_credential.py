"""The async credential against a scripted token endpoint: ``tests/test_credential.py``'s cases
(caching, single flight, fallback, claims, tenants, skew) with ``kvassert.aio``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Coroutine, Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest

from kvassert import settings_from_mapping
from kvassert.aio import AzureAdCredential
from kvassert.errors import AllCredentialsFailedError, KvassertError, TokenRequestError
from tests.certs import CertBundle, make_cert, rsa_key
from tests.fakes import Answer, Script, scripted_server
from tests.test_credential import CLIENT, FAST, TENANT, aadsts, ok, pem_entry

T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


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


def credential(
    base: str, entries: list[dict[str, Any]], *, allowed: tuple[str, ...] = (), **section: Any
) -> AzureAdCredential:
    settings = settings_from_mapping(
        {
            "AzureAd": {
                "Instance": base + "/",
                "TenantId": TENANT,
                "ClientId": CLIENT,
                "ClientCredentials": entries,
                **section,
            }
        },
        env={},
    )
    return AzureAdCredential(settings, retry_policy=FAST, additionally_allowed_tenants=allowed)


def test_first_token_then_cache_hits_and_token_info(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok()]

    async def main() -> Any:
        async with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
            for _ in range(50):
                assert (await cred.get_token("api://x/.default")).token == "tok"
            return await cred.get_token_info("api://x/.default")

    info = run(main())
    assert info.token == "tok" and info.refresh_on is not None and info.refresh_on < info.expires_on
    assert "tok" not in repr(info).replace("token=", "").replace("token_type", "")
    assert script.hits == 1
    claims = jwt.decode(
        script.forms[0]["client_assertion"],
        cert_a.cert.public_key(),
        algorithms=["PS256"],
        audience=f"{base}/{TENANT}/oauth2/v2.0/token",
    )
    assert claims["sub"] == CLIENT


def test_64_cold_coroutines_make_one_request(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint

    def slow(form: dict[str, str]) -> Answer:
        time.sleep(0.3)
        return ok()

    script.responder = slow

    async def main() -> list[str]:
        async with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
            tokens = await asyncio.gather(*(cred.get_token("api://x/.default") for _ in range(64)))
            return [t.token for t in tokens]

    assert run(main()) == ["tok"] * 64
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

    async def main() -> str:
        async with credential(base, entries) as cred:
            return (await cred.get_token("api://x/.default")).token

    assert run(main()) == "from-b"
    assert script.hits == 2  # a was rejected, b accepted; the missing file cost nothing
    assert "missing.pem" in caplog.text and "AADSTS700027" in caplog.text
    assert "secret-canary" not in caplog.text


def test_all_failing_lists_every_credential_and_one_failure_keeps_its_type(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [aadsts(700027)]
    missing = {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pem")}

    async def main(entries: list[dict[str, Any]]) -> None:
        async with credential(base, entries) as cred:
            await cred.get_token("api://x/.default")

    with pytest.raises(AllCredentialsFailedError) as every:
        run(main([missing, pem_entry(tmp_path, cert_a)]))
    labels = [label for label, _ in every.value.failures]
    assert labels[0].startswith("AzureAd:ClientCredentials:0")
    assert labels[1].startswith("AzureAd:ClientCredentials:1")
    with pytest.raises(TokenRequestError) as single:
        run(main([pem_entry(tmp_path, cert_a)]))
    assert single.value.aadsts == 700027
    assert single.value.hint.startswith("the certificate with x5t#S256=")


def test_non_credential_error_is_not_retried_with_other_credentials(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [aadsts(500011, status=400)]
    entries = [pem_entry(tmp_path, cert_a), {"SourceType": "ClientSecret", "ClientSecret": "s"}]

    async def main() -> None:
        async with credential(base, entries) as cred:
            await cred.get_token("api://nope/.default")

    with pytest.raises(TokenRequestError) as info:
        run(main())
    assert info.value.aadsts == 500011
    assert script.hits == 1


def test_claims_challenge_bypasses_the_cache(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok("one"), ok("two")]

    async def main() -> None:
        async with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
            await cred.get_token("api://x/.default")
            challenged = await cred.get_token("api://x/.default", claims='{"access_token":{}}')
            assert challenged.token == "two"
            assert (await cred.get_token("api://x/.default")).token == "two"

    run(main())
    assert script.hits == 2
    assert script.forms[1]["claims"] == '{"access_token":{}}'


def test_other_tenants_need_to_be_allowed_and_v1_uses_resource(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, script = endpoint
    script.answers = [ok()]

    async def main() -> None:
        async with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
            with pytest.raises(KvassertError, match="additionally_allowed_tenants"):
                await cred.get_token("api://x/.default", tenant_id="other")
        entries = [pem_entry(tmp_path, cert_a)]
        async with credential(
            base, entries, allowed=("other",), Kvassert={"TokenVersion": "v1"}
        ) as cred:
            await cred.get_token("https://vault.azure.net/.default", tenant_id="other")

    run(main())
    assert script.forms[-1]["resource"] == "https://vault.azure.net"
    aud = jwt.decode(script.forms[-1]["client_assertion"], options={"verify_signature": False})
    assert aud["aud"] == f"{base}/other/oauth2/token"


def test_client_assertion_coroutine_and_redacted_repr(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle
) -> None:
    base, _ = endpoint
    secret = {"SourceType": "ClientSecret", "ClientSecret": "can-1"}

    async def main() -> tuple[str, str]:
        async with credential(base, [secret, pem_entry(tmp_path, cert_a)]) as cred:
            assert "can-1" not in repr(cred)
            return await cred.client_assertion(), await cred.client_assertion()

    first, second = run(main())
    one = jwt.decode(
        first, cert_a.cert.public_key(), algorithms=["PS256"], options={"verify_aud": False}
    )
    two = jwt.decode(second, options={"verify_signature": False})
    assert one["aud"] == f"{base}/{TENANT}/oauth2/v2.0/token"
    assert one["jti"] != two["jti"]

    async def only_secret() -> str:
        async with credential(base, [secret]) as cred:
            return await cred.client_assertion()

    with pytest.raises(AllCredentialsFailedError, match="does not produce signed assertions"):
        run(only_secret())


@pytest.mark.parametrize("skew", [600, -600])
def test_clock_skew_is_learned_from_date_header_and_reused(
    endpoint: tuple[str, Script], tmp_path: Path, cert_a: CertBundle, skew: int
) -> None:
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

    async def main() -> None:
        async with credential(base, [pem_entry(tmp_path, cert_a)]) as cred:
            await cred.get_token("api://x/.default")
            assert script.hits == 2  # rejected once, corrected, accepted
            assert abs(cred.clock_offset - skew) < 5
            await cred.get_token("api://other/.default")
            assert script.hits == 3  # the offset is reused: no second rejection

    run(main())


def test_public_names_resolve_and_importing_the_package_stays_light() -> None:
    import subprocess
    import sys

    import kvassert.aio

    for name in kvassert.aio.__all__:
        assert getattr(kvassert.aio, name) is not None, name
    code = (
        "import sys, kvassert.aio; "
        "print(','.join(m for m in ('aiohttp', 'azure', 'requests') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
