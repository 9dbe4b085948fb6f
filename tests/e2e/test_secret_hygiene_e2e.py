"""Issue 8 (2), end to end: the canary scan of ``tests/test_secret_hygiene.py`` over the
emulator (Key Vault, Entra, managed identity), a password-protected Redis, the CLI in process
and as a real process.

Besides the planted secrets, every access token the emulator issues (the app's, and the managed
identity's for the vault and for the token exchange) and every client secret and assertion it
receives are canaries, captured on the emulator side; so is the managed identity endpoint's
``X-IDENTITY-HEADER`` secret. The in-process emulator's own loggers are left out of the scan
(they are the server, not kvassert).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

import kvassert
from kvassert.cli import main
from kvassert.errors import KvassertError
from kvassert.transport import RetryPolicy
from kvassert.vault_signer import KeyVaultSigner, client_options
from tests.e2e.conftest import API, World
from tests.redis_server import redis_server
from tests.test_secret_hygiene import (
    Hygiene,
    canary,
    debug_logs,
    plant_secrets,
    recording_requests,
)

SCOPE = f"{API}/.default"
SERVER_LOGGERS = ("kvassert.emulator", "cheroot", "werkzeug")
FAST = RetryPolicy(attempts=2, backoff=0.05, jitter=0.0, deadline=5.0, timeout=(2.0, 2.0))


@pytest.fixture
def hygiene(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hygiene]:
    """Canaries captured where the emulator issues tokens and receives client credentials."""
    from kvassert.emulator import entra

    found = Hygiene()
    assert world.emulator.state is not None
    directory = world.emulator.state.directory
    issue = directory.issue_token

    def issued(*args: Any, **kwargs: Any) -> Any:
        token = issue(*args, **kwargs)
        found.plant_jwt("a token the emulator issued", token.access_token)
        return token

    authenticate = entra.__dict__["authenticate_client"]

    def received(*args: Any, **kwargs: Any) -> Any:
        found.plant("a client secret the emulator received", kwargs.get("client_secret"))
        found.plant_jwt("an assertion the emulator received", kwargs.get("client_assertion"))
        return authenticate(*args, **kwargs)

    monkeypatch.setattr(directory, "issue_token", issued)
    monkeypatch.setattr(entra, "authenticate_client", received)  # the name entra.py calls
    found.plant("the identity header", world.info.identity_header)
    with recording_requests(found, monkeypatch):
        yield found


@pytest.fixture
def app(world: World, tmp_path: Path) -> tuple[str, str]:
    """A non-exportable vault certificate, an app that trusts it, a client secret and the
    managed identity (federated), and a second certificate nobody registered."""
    world.create_certificate("app-cert")
    world.create_certificate("stranger-cert")
    secret = canary("emulator-client-secret")
    client_id = world.register_app(
        vault_certificates=("app-cert",),
        secrets=[secret],
        federated_identities=[world.info.principal_id],
    )
    return client_id, secret


def attempt(hygiene: Hygiene, where: str, action: Callable[[], object]) -> object:
    """Run ``action``; scan the error, or the result's repr/str unless it is the credential
    that was asked for (an assertion string)."""
    try:
        result = action()
    except Exception as exc:  # every error is scanned, whether expected or not
        hygiene.exception(where, exc)
        return exc
    if not isinstance(result, str):
        hygiene.objects(where, result)
    return result


def test_every_source_against_the_emulator_with_errors(
    world: World, app: tuple[str, str], hygiene: Hygiene, tmp_path: Path
) -> None:
    """KeyVault, ClientSecret (list and top level), SignedAssertionFromManagedIdentity,
    SignedAssertionFilePath with a real federated token; then a wrong secret, an unregistered
    certificate, vault and Entra 5xx and garbage, a managed identity endpoint that fails, and a
    vault that refuses the sign (403)."""
    client_id, secret = app
    hygiene.plant("the app's client secret", secret)
    token_file = tmp_path / "federated-token"
    entries: dict[str, dict[str, Any]] = {
        "vault": world.vault_entry("app-cert"),
        "secret": {"SourceType": "ClientSecret", "ClientSecret": secret},
        "managed identity": {"SourceType": "SignedAssertionFromManagedIdentity"},
        "file": {
            "SourceType": "SignedAssertionFilePath",
            "SignedAssertionFileDiskPath": str(token_file),
        },
        "wrong secret": {"SourceType": "ClientSecret", "ClientSecret": canary("wrong-secret")},
        "stranger": world.vault_entry("stranger-cert"),
    }
    hygiene.plant("a wrong client secret", entries["wrong secret"]["ClientSecret"])

    def credential(name: str, **extra: Any) -> kvassert.AzureAdCredential:
        config = world.appsettings(client_id, [entries[name]] if name else [], **extra)
        made = kvassert.from_appsettings(config, retry_policy=FAST, background_refresh=False)
        hygiene.objects(name, made, made.settings, *made.settings.credentials, *made.sources)
        return made

    with debug_logs(exclude=SERVER_LOGGERS) as logs:
        from azure.identity import ManagedIdentityCredential

        with ManagedIdentityCredential() as identity:
            token_file.write_text(identity.get_token("api://AzureADTokenExchange/.default").token)
        for name in ("vault", "secret", "managed identity", "file"):
            with credential(name) as made:
                assert not isinstance(
                    attempt(hygiene, name, partial(made.get_token, SCOPE)), Exception
                )
                attempt(hygiene, f"{name}: info", partial(made.get_token_info, SCOPE))
                attempt(hygiene, f"{name}: token", partial(made.token, SCOPE))
                attempt(hygiene, f"{name}: assertion", made.client_assertion)
                if name == "vault":
                    signer = made.sources[0].vault_signer  # type: ignore[attr-defined]
                    hygiene.objects("vault signer", signer, signer.certificate)
        with credential("", ClientSecret=secret) as made:
            attempt(hygiene, "top-level secret", partial(made.token, SCOPE))

        failures: list[tuple[str, str, dict[str, Any] | None]] = [
            ("wrong secret", "wrong secret", None),
            ("unregistered certificate", "stranger", None),
            ("vault sign 500", "vault", {"route": "sign", "status": 500}),
            ("vault certificate HTML", "vault", {"route": "certificate_get", "status": 200,
                                                 "body": "<html>maintenance</html>"}),
            ("vault sign garbage", "vault", {"route": "sign", "status": 200,
                                             "body": '{"kid": "x", "val'}),
            ("entra 503", "secret", {"route": "token", "status": 503}),
            ("entra 503 for an assertion", "vault", {"route": "token", "status": 503}),
            ("entra HTML", "secret", {"route": "token", "status": 200, "body": "<html>x</html>"}),
            ("entra truncated", "vault", {"route": "token", "status": 200,
                                          "body": '{"access_token": "ey'}),
            ("identity 500", "managed identity", {"route": "identity", "status": 500}),
        ]  # fmt: skip
        for where, name, fault in failures:
            if fault is not None:
                world.admin.add_fault(**fault)
            with credential(name) as made:
                error = attempt(hygiene, where, partial(made.token, SCOPE))
                assert isinstance(error, KvassertError), where
                attempt(hygiene, f"{where}: assertion", made.client_assertion)
            world.admin.clear_faults()
        world.least_privilege(["Microsoft.KeyVault/vaults/certificates/read"])
        with credential("vault") as made:
            error = attempt(hygiene, "vault 403", partial(made.token, SCOPE))
            assert isinstance(error, kvassert.KeyVaultError) and error.status == 403
    hygiene.logs("sources", logs.records)
    assert hygiene.planted["a token the emulator issued"] >= 6
    assert hygiene.planted["an assertion the emulator received"] >= 4
    hygiene.assert_clean(expected_texts=150)


def test_the_sdk_clients_kvassert_builds_never_log_bodies(world: World) -> None:
    """azure-core logs request and response bodies (and unredacted headers) only through
    ``NetworkTraceLoggingPolicy`` with ``logging_enable=True``; kvassert never passes it, so its
    Key Vault clients keep it off whatever the log level (``HttpLoggingPolicy``, on at INFO,
    logs the URL and allow-listed headers only, and never a body)."""
    world.create_certificate("app-cert")
    assert "logging_enable" not in client_options(world.info.vault_url, RetryPolicy())
    from azure.identity import ManagedIdentityCredential

    with ManagedIdentityCredential() as identity:
        signer = KeyVaultSigner(world.info.vault_url, "app-cert", identity)
        signer.sign(b"header.claims")
        clients = [signer._client(), signer._crypto]
        for client in clients:
            config = client._client._config  # type: ignore[union-attr]
            assert config.logging_policy.enable_http_logger is False
        signer.close()


@pytest.fixture
def protected_redis(tmp_path: Path, hygiene: Hygiene) -> Iterator[tuple[str, str]]:
    """A redis-server that requires a password: (URL with the password, URL with a wrong one)."""
    with redis_server(tmp_path) as url:
        password = canary("redis-password")
        wrong = canary("wrong-redis-password")
        hygiene.plant("the Redis password", password)
        hygiene.plant("a wrong Redis password", wrong)
        with redis.Redis.from_url(url) as client:
            client.config_set("requirepass", password)
        host = url.removeprefix("redis://")
        yield f"redis://:{password}@{host}", f"redis://:{wrong}@{host}"


def test_shared_cache_with_a_password_and_a_key(
    world: World,
    app: tuple[str, str],
    hygiene: Hygiene,
    protected_redis: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Redis URL (with its password) and the encryption key from App Service settings:
    shared tokens, a wrong password, Redis gone; and the store's and settings' reprs."""
    client_id, _ = app
    url, wrong_url = protected_redis
    key = base64.b64encode(secrets.token_bytes(32)).decode()
    hygiene.plant("the shared-cache encryption key", key)
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with debug_logs(exclude=SERVER_LOGGERS) as logs:
        for where, redis_url in (("shared", url), ("wrong password", wrong_url)):
            monkeypatch.setenv("AzureAd__Kvassert__SharedCache__RedisUrl", redis_url)
            monkeypatch.setenv("AzureAd__Kvassert__SharedCache__EncryptionKey", key)
            for _ in range(2):  # the second process finds the first one's token (or not)
                with kvassert.from_appsettings(config, background_refresh=False) as made:
                    hygiene.objects(where, made, made.settings, made._shared)
                    attempt(hygiene, where, partial(made.token, SCOPE))
        store = kvassert.RedisTokenStore(url, encryption_key=key)
        hygiene.objects("store", store)
        store.put(("k",), kvassert.AccessToken("opaque-" + canary("token"), 2**31, 2**31 - 1))
        hygiene.plant("a token in the store", store.get(("k",)).token)  # type: ignore[union-attr]
        with redis.Redis.from_url(url) as client:
            client.shutdown(nosave=True)
        attempt(hygiene, "redis gone", partial(store.get, ("k",)))
        with kvassert.from_appsettings(config, background_refresh=False) as made:
            attempt(hygiene, "redis gone", partial(made.token, SCOPE))
        store.close()
    hygiene.logs("shared cache", logs.records)
    hygiene.assert_clean(expected_texts=20)


def test_cli_in_process_and_as_a_real_process(
    world: World,
    app: tuple[str, str],
    hygiene: Hygiene,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``assertion``, ``token``, ``token --json``, ``check``, ``check --online [--scope]`` at
    ``--debug``, in process; failures; then ``python -m kvassert --debug token`` as a process."""
    client_id, secret = app
    hygiene.plant("the app's client secret", secret)
    vault = str(world.appsettings(client_id, [world.vault_entry("app-cert")]))
    secret_config = tmp_path / "secret.json"
    secret_config.write_text(
        json.dumps(
            {
                "AzureAd": {
                    "Instance": world.instance,
                    "TenantId": world.info.tenant_id,
                    "ClientId": client_id,
                    "ClientSecret": secret,
                }
            }
        )
    )
    stranger_config = tmp_path / "stranger.json"
    document = json.loads(Path(vault).read_text())
    document["AzureAd"]["ClientCredentials"] = [world.vault_entry("stranger-cert")]
    stranger_config.write_text(json.dumps(document))
    runs: list[tuple[list[str], int, str | None]] = [
        (["assertion", "--config", vault], 0, "assertion"),
        (["token", "--scope", SCOPE, "--config", vault], 0, "token"),
        (["token", "--scope", SCOPE, "--config", str(secret_config)], 0, "token"),
        (["token", "--json", "--scope", SCOPE, "--config", vault], 0, "json"),
        (["check", "--config", vault], 0, None),
        (["check", "--online", "--config", vault], 0, None),
        (["check", "--online", "--scope", SCOPE, "--config", vault], 0, None),
        (["check", "--online", "--scope", SCOPE, "--config", str(secret_config)], 0, None),
        (["check", "--online", "--scope", SCOPE, "--config", str(stranger_config)], 1, None),
        (["token", "--scope", SCOPE, "--config", str(stranger_config)], 6, None),
    ]
    with debug_logs(exclude=SERVER_LOGGERS) as logs:
        for argv, code, prints in runs:
            where = " ".join(argv[:-1])
            assert main(["--debug", *argv]) == code, where
            captured = capsys.readouterr()
            hygiene.cli(where, captured.out, captured.err, prints=prints)
        world.admin.add_fault("token", status=503)
        assert main(["--debug", "token", "--scope", SCOPE, "--config", str(secret_config)]) == 6
        captured = capsys.readouterr()
        hygiene.cli("token against a failing Entra", captured.out, captured.err)
        world.admin.clear_faults()
    hygiene.logs("cli", logs.records)

    # A real process: its own logging configuration (--debug: everything on stderr).
    result = subprocess.run(
        [sys.executable, "-m", "kvassert", "--debug", "token", "--scope", SCOPE,
         "--config", vault],
        capture_output=True, text=True, timeout=120, env=dict(os.environ), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DEBUG" in result.stderr  # the logs were really on
    hygiene.cli("python -m kvassert --debug token", result.stdout, result.stderr, prints="token")
    hygiene.assert_clean(expected_texts=30)


def test_every_run_plants_what_it_says(
    world: World, app: tuple[str, str], hygiene: Hygiene
) -> None:
    """The emulator-side capture works: a token request plants the assertion it received and
    the token it issued (so the scans above are not vacuous)."""
    client_id, _ = app
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config, background_refresh=False) as made:
        token = made.token(SCOPE).token
    assert hygiene.planted["a token the emulator issued"] >= 2  # the vault's MI token, the app's
    assert hygiene.planted["an assertion the emulator received"] == 1
    hygiene.text("the token itself", token)
    assert any("emulator issued" in leak for leak in hygiene.leaks())


def test_local_sources_with_the_emulator_registration(
    world: World, hygiene: Hygiene, tmp_path: Path
) -> None:
    """Path (PEM and PFX with passwords) and Base64Encoded certificates registered on an
    emulator app: the same scan with Entra's real validation of the assertions."""
    made = plant_secrets(hygiene, tmp_path)
    client_id = world.register_app(certificates=[made.bundle.der])
    entries = [
        {
            "SourceType": "Path",
            "CertificateDiskPath": str(made.pem_path),
            "CertificatePassword": made.pem_password,
        },
        {
            "SourceType": "Path",
            "CertificateDiskPath": str(made.pfx_path),
            "CertificatePassword": made.pfx_password,
        },
        {"SourceType": "Base64Encoded", "Base64EncodedValue": made.pfx_base64},
    ]
    with debug_logs(exclude=SERVER_LOGGERS) as logs:
        for index, entry in enumerate(entries):
            config = world.appsettings(client_id, [entry])
            with kvassert.from_appsettings(config, background_refresh=False) as credential:
                token = attempt(hygiene, f"entry {index}", partial(credential.get_token, SCOPE))
                assert not isinstance(token, Exception), token
                hygiene.objects(f"entry {index}", credential, *credential.sources)
    hygiene.logs("local", logs.records)
    hygiene.assert_clean(expected_texts=12)
