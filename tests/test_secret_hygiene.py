"""Issue 8 (2): secrets never reach text.

Canary secrets are planted (client secrets, certificate passwords, the private key's PEM body,
base64 PFX values, a Redis password and the shared-cache key, signed assertion files) and every
assertion and access token produced during the run is added as it appears. Then the whole
credential life runs (every source type, successes and errors, the CLI) with every logger at
DEBUG, and each piece of text kvassert produces is scanned: log records (message, arguments,
extra fields, exception text), exception text (chained causes and contexts, ``__notes__``,
attributes, traceback), ``repr``/``str`` of every public object, and CLI output, except the one
value a command was asked to print (``kvassert token`` prints the token, ``kvassert assertion``
the assertion).

This module runs offline (local certificates, a scripted token endpoint); the emulator half is
``tests/e2e/test_secret_hygiene_e2e.py``, which imports the machinery from here.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import importlib
import json
import logging
import secrets
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import kvassert
from kvassert import cli
from kvassert.cache import TokenCache
from kvassert.credential import AzureAdCredential
from kvassert.errors import ConfigError, KvassertError
from kvassert.settings import load_settings, settings_from_mapping
from kvassert.signing import LocalCertificateSigner
from kvassert.token_client import AccessToken, TokenClient
from kvassert.transport import RetryPolicy
from tests.certs import CertBundle, make_cert
from tests.fakes import Answer, Script, scripted_server

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "00000000-0000-0000-0000-0000000000c1"
SCOPE = "api://hygiene/.default"
FAST = RetryPolicy(attempts=2, backoff=0.01, jitter=0.0, deadline=3.0, timeout=(2.0, 2.0))
# Every logger a user would turn up: the root, kvassert's own, the Azure SDK, urllib3, msal.
LOGGERS = ("", "kvassert", "azure", "urllib3", "msal")
# Long secrets are also matched by pieces: any leaked run of 2 * CHUNK - 1 characters holds one.
CHUNK = 12


# The machinery ----------------------------------------------------------------------------------


def canary(label: str) -> str:
    """A secret value nobody else would write."""
    return f"kvcanary-{label}-{secrets.token_hex(12)}"


def signature_of(jwt_text: str) -> str:
    """The signature segment of a compact JWS: what makes an assertion or a token a credential
    (its header and claims, such as the client id or the object id, are fine in logs)."""
    return jwt_text.rsplit(".", 1)[-1]


def _pieces(value: str) -> list[str]:
    if len(value) < 2 * CHUNK:
        return [value]
    return [value[i : i + CHUNK] for i in range(0, len(value) - CHUNK + 1, CHUNK)]


@dataclass
class Hygiene:
    """Canaries and every text produced during a run; ``assert_clean`` scans them all at the
    end, so canaries produced late (tokens) are checked against text produced early."""

    # value -> name; never in a repr (a failing test would print it)
    canaries: dict[str, str] = field(default_factory=dict, repr=False)
    texts: list[tuple[str, str]] = field(default_factory=list, repr=False)
    planted: collections.Counter[str] = field(default_factory=collections.Counter)

    # canaries

    def plant(self, name: str, value: str | None) -> None:
        if value:
            compact = "".join(value.split())
            self.canaries.setdefault(compact, name)
            self.planted[name] += 1

    def plant_jwt(self, name: str, value: str | None) -> None:
        """A token or assertion: a JWT by its signature, anything else whole."""
        if value and value.count(".") == 2:
            self.plant(name, signature_of(value))
        else:
            self.plant(name, value)

    def plant_pem_body(self, name: str, pem: bytes) -> None:
        """The base64 body of every PEM block (the key's, encrypted or not)."""
        for block in pem.decode().split("-----END")[:-1]:
            body = block.rsplit("-----", 1)[-1]
            if "PRIVATE KEY" in block.split("-----BEGIN", 1)[-1].split("-----", 1)[0]:
                self.plant(name, body)

    # texts

    def text(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def objects(self, where: str, *objects: object) -> None:
        for obj in objects:
            self.text(f"{where}: repr({type(obj).__name__})", repr(obj))
            self.text(f"{where}: str({type(obj).__name__})", str(obj))

    def exception(self, where: str, exc: BaseException) -> None:
        seen: set[int] = set()
        stack: list[BaseException] = [exc]
        while stack:
            current = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            label = f"{where}: {type(current).__name__}"
            self.text(label, str(current))
            self.text(label, repr(current))
            self.text(label, repr(current.args))
            self.text(label, repr(getattr(current, "__dict__", {})))
            for note in getattr(current, "__notes__", ()):
                self.text(f"{label} note", str(note))
            # Suppressed contexts (raise ... from None) too: they still travel with the error.
            stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
            stack.extend(getattr(current, "exceptions", ()))  # exception groups
        self.text(f"{where}: traceback", "".join(traceback.format_exception(exc)))

    def logs(self, where: str, records: list[logging.LogRecord]) -> None:
        formatter = logging.Formatter()
        for record in records:
            label = f"{where}: log {record.name} {record.levelname}"
            self.text(label, record.getMessage())
            self.text(label, repr(record.__dict__))  # args, extra fields, exc_info
            if record.exc_info:
                self.text(label, formatter.formatException(record.exc_info))
                if record.exc_info[1] is not None:
                    self.exception(label, record.exc_info[1])
            if record.stack_info:
                self.text(label, record.stack_info)

    def cli(self, where: str, out: str, err: str, *, prints: str | None = None) -> None:
        """CLI output; ``prints`` is the one value the command was asked to print, which must be
        all of stdout (``"json"``: the ``access_token`` member of a JSON object)."""
        if prints == "json":
            document = json.loads(out)
            self.plant_jwt(f"{where}: printed token", document.pop("access_token"))
            out = json.dumps(document)
        elif prints is not None:
            value = out.strip()
            assert value and value.count(".") == 2 and "\n" not in value, out
            self.plant_jwt(f"{where}: printed {prints}", value)
            out = ""
        self.text(f"{where}: stdout", out)
        self.text(f"{where}: stderr", err)

    # the verdict

    def leaks(self) -> list[str]:
        found = []
        pieces = {value: _pieces(value) for value in self.canaries}
        for where, text in self.texts:
            compact = "".join(text.split())
            for value, name in self.canaries.items():
                if any(piece in text or piece in compact for piece in pieces[value]):
                    found.append(f"{name} in {where}: {text[:300]!r}")
        return found

    def assert_clean(self, *, expected_texts: int = 1) -> None:
        assert len(self.texts) >= expected_texts, "the run produced less text than expected"
        assert self.canaries, "no canary was planted"
        leaks = self.leaks()
        assert not leaks, "\n".join(leaks[:20])


class RecordingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def debug_logs(exclude: tuple[str, ...] = ()) -> Iterator[RecordingHandler]:
    """Every logger in LOGGERS at DEBUG, every record (but those of ``exclude`` loggers, e.g. an
    in-process server's) kept."""
    handler = RecordingHandler()
    if exclude:
        handler.addFilter(lambda record: not record.name.startswith(exclude))
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def recording_requests(
    hygiene: Hygiene, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[dict[str, str]]]:
    """Plant the credential of every token request kvassert sends (its assertion or secret) and
    every access token it receives; also every assertion it builds without sending it."""
    forms: list[dict[str, str]] = []
    request = TokenClient.request

    def record(self: TokenClient, endpoint: str, form: Any, **options: Any) -> AccessToken:
        forms.append(dict(form))
        hygiene.plant_jwt("a client assertion sent", form.get("client_assertion"))
        hygiene.plant("a client secret sent", form.get("client_secret"))
        token = request(self, endpoint, form, **options)
        hygiene.plant_jwt("an access token received", token.token)
        return token

    monkeypatch.setattr(TokenClient, "request", record)
    for module in ("kvassert.sources", "kvassert.check"):
        build = importlib.import_module(module).build_assertion

        def built(*args: Any, _build: Callable[..., str] = build, **kwargs: Any) -> str:
            assertion = _build(*args, **kwargs)
            hygiene.plant_jwt("a client assertion built", assertion)
            return assertion

        monkeypatch.setattr(f"{module}.build_assertion", built)
    yield forms


# The offline run ------------------------------------------------------------------------------


@dataclass
class Secrets:
    """The planted secrets and the files that hold them."""

    client_secret: str
    pem_password: str
    pfx_password: str
    redis_password: str
    encryption_key: str
    bundle: CertBundle
    pem_path: Path
    pfx_path: Path
    pfx_base64: str
    protected_pfx_base64: str
    assertion_file: Path
    assertion_file_value: str


def plant_secrets(hygiene: Hygiene, tmp_path: Path) -> Secrets:
    bundle = make_cert(days=365)
    made = Secrets(
        client_secret=canary("client-secret"),
        pem_password=canary("pem-password"),
        pfx_password=canary("pfx-password"),
        redis_password=canary("redis-password"),
        encryption_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        bundle=bundle,
        pem_path=tmp_path / "client.pem",
        pfx_path=tmp_path / "client.pfx",
        pfx_base64="",
        protected_pfx_base64="",
        assertion_file=tmp_path / "federated-token",
        # A projected federated token: a JWT-shaped secret.
        assertion_file_value=".".join(canary(part) for part in ("head", "claims", "sig")),
    )
    pem = bundle.pem(made.pem_password)
    made.pem_path.write_bytes(pem)
    made.pfx_path.write_bytes(bundle.pfx(made.pfx_password))
    made.pfx_base64 = base64.b64encode(bundle.pfx()).decode()
    made.protected_pfx_base64 = base64.b64encode(bundle.pfx(made.pfx_password)).decode()
    made.assertion_file.write_text(made.assertion_file_value)
    plain_key = bundle.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    hygiene.plant_pem_body("the private key (PEM body)", plain_key)
    hygiene.plant_pem_body("the encrypted private key (PEM body)", pem)
    hygiene.plant("the client secret", made.client_secret)
    hygiene.plant("the PEM password", made.pem_password)
    hygiene.plant("the PFX password", made.pfx_password)
    hygiene.plant("the Redis password", made.redis_password)
    hygiene.plant("the shared-cache encryption key", made.encryption_key)
    hygiene.plant("a Base64EncodedValue", made.pfx_base64)
    hygiene.plant("a Base64EncodedValue with a password", made.protected_pfx_base64)
    hygiene.plant("the signed assertion file", made.assertion_file_value)
    return made


def random_jwt() -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = part(json.dumps({"aud": SCOPE, "appid": CLIENT}).encode())
    return f"{header}.{claims}.{part(secrets.token_bytes(256))}"


def token_endpoint(hygiene: Hygiene, valid_secret: str) -> Callable[[dict[str, str]], Answer]:
    """A token endpoint that accepts any assertion and only ``valid_secret`` as a secret,
    issuing fresh JWT-shaped tokens (planted as they are issued)."""

    def answer(form: dict[str, str]) -> Answer:
        secret = form.get("client_secret")
        if secret is not None and secret != valid_secret:
            body = {
                "error": "invalid_client",
                "error_description": (
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent "
                    "in the request is the client secret value, not the client secret ID."
                ),
                "error_codes": [7000215],
                "trace_id": "trace",
                "correlation_id": "correlation",
            }
            return 401, {}, json.dumps(body).encode()
        token = random_jwt()
        hygiene.plant_jwt("an access token issued", token)
        body2 = {"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        return 200, {}, json.dumps(body2).encode()

    return answer


def section(base: str, credentials: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "AzureAd": {
            "Instance": base + "/",
            "TenantId": TENANT,
            "ClientId": CLIENT,
            "ClientCredentials": credentials,
            **extra,
        }
    }


def write(tmp_path: Path, document: dict[str, Any], name: str = "appsettings.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


@dataclass
class Offline:
    hygiene: Hygiene
    made: Secrets
    base: str
    script: Script
    tmp_path: Path

    def entries(self) -> dict[str, dict[str, Any]]:
        m = self.made
        return {
            "pem": {
                "SourceType": "Path",
                "CertificateDiskPath": str(m.pem_path),
                "CertificatePassword": m.pem_password,
            },
            "pfx": {
                "SourceType": "Path",
                "CertificateDiskPath": str(m.pfx_path),
                "CertificatePassword": m.pfx_password,
            },
            "base64": {"SourceType": "Base64Encoded", "Base64EncodedValue": m.pfx_base64},
            # Base64Encoded takes no CertificatePassword (as in Microsoft.Identity.Web): a
            # protected PFX there fails to load, naming neither value.
            "base64 with password": {
                "SourceType": "Base64Encoded",
                "Base64EncodedValue": m.protected_pfx_base64,
                "CertificatePassword": m.pfx_password,
            },
            "secret": {"SourceType": "ClientSecret", "ClientSecret": m.client_secret},
            "file": {
                "SourceType": "SignedAssertionFilePath",
                "SignedAssertionFileDiskPath": str(m.assertion_file),
            },
            "wrong pem password": {
                "SourceType": "Path",
                "CertificateDiskPath": str(m.pem_path),
                "CertificatePassword": m.pfx_password,
            },
            "wrong pfx password": {
                "SourceType": "Path",
                "CertificateDiskPath": str(m.pfx_path),
                "CertificatePassword": m.pem_password,
            },
            "wrong secret": {"SourceType": "ClientSecret", "ClientSecret": m.redis_password},
            "missing file": {
                "SourceType": "Path",
                "CertificateDiskPath": str(self.tmp_path / "missing.pfx"),
                "CertificatePassword": m.pfx_password,
            },
        }

    def credential(self, *names: str, **extra: Any) -> AzureAdCredential:
        entries = self.entries()
        settings = settings_from_mapping(
            section(self.base, [entries[name] for name in names], **extra), env={}
        )
        self.hygiene.objects("settings", settings, *settings.credentials)
        credential = AzureAdCredential(
            settings, retry_policy=FAST, cache=TokenCache(), background_refresh=False
        )
        self.hygiene.objects("credential", credential, *credential.sources)
        return credential

    def run(self, where: str, action: Callable[[], object]) -> object:
        """Run ``action``; any error's text, and its result's repr/str unless the result is the
        credential asked for (an assertion: a ``str``), are scanned."""
        try:
            result = action()
        except Exception as exc:  # every error is scanned, whether expected or not
            self.hygiene.exception(where, exc)
            return exc
        if not isinstance(result, str):
            self.hygiene.objects(where, result)
        return result


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Offline]:
    hygiene = Hygiene()
    made = plant_secrets(hygiene, tmp_path)
    with scripted_server() as (base, script), recording_requests(hygiene, monkeypatch):
        script.responder = token_endpoint(hygiene, made.client_secret)
        yield Offline(hygiene, made, base, script, tmp_path)


def test_every_local_source_succeeds_and_fails_without_showing_a_secret(
    offline: Offline,
) -> None:
    """Path PEM and PFX with passwords, Base64Encoded (with and without a password), client
    secrets in the list and at the top level, a signed assertion file: tokens, assertions,
    errors for wrong passwords, a wrong secret, a missing file, and the fallback error listing
    every failure, with every logger at DEBUG."""
    hygiene = offline.hygiene
    with debug_logs() as logs:
        for name in ("pem", "pfx", "base64", "secret", "file"):
            with offline.credential(name) as credential:
                offline.run(f"{name}: get_token", lambda: credential.get_token(SCOPE))
                offline.run(f"{name}: get_token_info", lambda: credential.get_token_info(SCOPE))
                offline.run(f"{name}: token", lambda: credential.token(SCOPE))
                offline.run(f"{name}: assertion", credential.client_assertion)
                for source in credential.sources:
                    offline.run(f"{name}: signer", partial(getattr, source, "signer", source))
        top_level = settings_from_mapping(
            section(offline.base, [], ClientSecret=offline.made.client_secret), env={}
        )
        hygiene.objects("top-level secret settings", top_level, *top_level.credentials)
        with AzureAdCredential(top_level, retry_policy=FAST) as credential:
            offline.run("top-level secret", lambda: credential.token(SCOPE))
        for name in (
            "wrong pem password",
            "wrong pfx password",
            "wrong secret",
            "missing file",
            "base64 with password",
        ):
            with offline.credential(name) as credential:
                error = offline.run(name, lambda: credential.token(SCOPE))
                assert isinstance(error, KvassertError), name
                offline.run(f"{name}: assertion", credential.client_assertion)
        with offline.credential(
            "wrong pfx password", "base64 with password", "missing file"
        ) as credential:
            error = offline.run("all fail", lambda: credential.token(SCOPE))
            assert isinstance(error, kvassert.AllCredentialsFailedError)
    hygiene.logs("local sources", logs.records)
    assert offline.script.hits == 7  # five sources, the top-level secret, the wrong secret
    hygiene.assert_clean(expected_texts=100)


def test_garbage_and_failing_token_endpoints(offline: Offline) -> None:
    """5xx, HTML, truncated JSON and error bodies from the token endpoint, for a secret and
    for an assertion: the errors name the endpoint and the status, never what was sent."""
    hygiene = offline.hygiene
    answers: list[Answer] = [
        (503, {"Retry-After": "0"}, b"<html>down</html>"),
        (500, {}, b'{"error": "server_error", "error_description": "AADSTS50000: oops"}'),
        (200, {}, b"<html>maintenance</html>"),
        (200, {}, b'{"access_token": "' + random_jwt()[:60].encode()),
        (400, {}, json.dumps({"error": "invalid_request"}).encode()),
        (302, {"Location": "https://elsewhere.example/"}, b""),
    ]
    with debug_logs() as logs:
        for index, answer in enumerate(answers):
            offline.script.responder = lambda form, answer=answer: answer
            for name in ("secret", "pfx"):
                with offline.credential(name) as credential:
                    error = offline.run(
                        f"answer {index} to {name}", lambda: credential.token(SCOPE)
                    )
                    assert isinstance(error, KvassertError)
    hygiene.logs("garbage", logs.records)
    hygiene.assert_clean(expected_texts=50)


def test_settings_repr_and_configuration_errors(offline: Offline, tmp_path: Path) -> None:
    """Secrets from files and from env vars, in every place a configuration can go wrong."""
    hygiene, made = offline.hygiene, offline.made
    entries = offline.entries()
    shared = {"RedisUrl": f"rediss://:{made.redis_password}@cache.example:6380/0"}
    document = section(
        "https://login.microsoftonline.com",
        [entries[name] for name in ("pem", "pfx", "base64", "secret", "file")],
        ClientSecret=made.client_secret,
        Kvassert={"SharedCache": {**shared, "EncryptionKey": made.encryption_key}},
    )
    env = {
        "AzureAd__ClientCredentials__5__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__5__ClientSecret": made.client_secret,
    }
    settings = load_settings(write(tmp_path, document), env=env)
    hygiene.objects("settings", settings, *settings.credentials)
    hygiene.text("describe", "\n".join(c.describe() for c in settings.credentials))

    def broken(mutate: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        copy: dict[str, Any] = json.loads(json.dumps(document))
        mutate(copy["AzureAd"])
        return copy

    short_key = canary("k")[:14]  # too short to be a passphrase
    hygiene.plant("a short encryption key", short_key)
    bad: dict[str, dict[str, Any]] = {
        "base64 that is not base64": broken(
            lambda s: s["ClientCredentials"][2].update(
                Base64EncodedValue=made.pfx_base64[:-4] + "!!" + made.client_secret
            )
        ),
        "Redis URL with another scheme": broken(
            lambda s: s["Kvassert"]["SharedCache"].update(
                RedisUrl=f"http://:{made.redis_password}@cache.example/"
            )
        ),
        "short encryption key": broken(
            lambda s: s["Kvassert"]["SharedCache"].update(EncryptionKey=short_key)
        ),
        "no encryption key": broken(lambda s: s["Kvassert"]["SharedCache"].pop("EncryptionKey")),
        "instance with user info": broken(
            lambda s: s.update(
                Instance=f"https://app:{made.client_secret}@login.microsoftonline.com/"
            )
        ),
        "authority with user info": broken(
            lambda s: s.update(
                Authority=f"https://app:{made.client_secret}@login.microsoftonline.com/{TENANT}"
            )
        ),
        "vault URL with user info": broken(
            lambda s: s["ClientCredentials"].append(
                {
                    "SourceType": "KeyVault",
                    "KeyVaultUrl": f"https://app:{made.client_secret}@contoso.vault.azure.net",
                    "KeyVaultCertificateName": "app",
                }
            )
        ),
        "secret as an object": broken(
            lambda s: s.update(ClientSecret={"Value": made.client_secret})
        ),
        "misspelt secret key": broken(
            lambda s: s["ClientCredentials"].append(
                {"SourceType": "ClientSecret", "ClientSecrte": made.client_secret}
            )
        ),
        "unknown source type": broken(
            lambda s: s["ClientCredentials"].append(
                {"SourceType": "Secret", "ClientSecret": made.client_secret}
            )
        ),
    }
    with debug_logs() as logs:
        for name, doc in bad.items():
            error = offline.run(name, partial(settings_from_mapping, doc, env={}))
            assert isinstance(error, ConfigError), name
            assert error.path.startswith("AzureAd"), name
        # Env vars carry secrets on App Service: the same mistakes through them.
        for key, value in (
            ("AzureAd__ClientCredentials__0__Base64EncodedValue", f"{made.client_secret}%%"),
            ("AzureAd__Kvassert__SharedCache__RedisUrl", f"ftp://:{made.redis_password}@h/"),
            ("AzureAd__Instance", f"https://a:{made.client_secret}@login.microsoftonline.com/"),
        ):
            base = section("https://login.microsoftonline.com", [entries["base64"]])
            base["AzureAd"]["Kvassert"] = {
                "SharedCache": {**shared, "EncryptionKey": made.encryption_key}
            }
            error = offline.run(key, partial(settings_from_mapping, base, env={key: value}))
            assert isinstance(error, ConfigError), key
        # A JSON syntax error right after a secret.
        text = json.dumps(document).replace(
            f'"{made.client_secret}"', f'"{made.client_secret}" "{made.pem_password}"', 1
        )
        broken_file = tmp_path / "broken.json"
        broken_file.write_text(text)
        error = offline.run("syntax error", lambda: load_settings(broken_file, env={}))
        assert isinstance(error, ConfigError)
    hygiene.logs("settings", logs.records)
    hygiene.assert_clean(expected_texts=60)


def test_cli_commands_print_only_what_they_were_asked(
    offline: Offline, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``assertion``, ``token``, ``token --json``, ``check``, their failures, at ``--debug``."""
    hygiene = offline.hygiene
    entries = offline.entries()

    def config(*names: str, **extra: Any) -> str:
        document = section(offline.base, [entries[name] for name in names], **extra)
        return str(write(tmp_path, document, f"{'-'.join(names).replace(' ', '_')}.json"))

    runs: list[tuple[list[str], int, str | None]] = [
        (["assertion", "--config", config("pem")], 0, "assertion"),
        (["assertion", "--config", config("pfx"), "--rs256", "--v1"], 0, "assertion"),
        (
            ["assertion", "--config", config("wrong pfx password", "secret", "base64")],
            0,
            "assertion",
        ),
        (["token", "--scope", SCOPE, "--config", config("secret")], 0, "token"),
        (["token", "--scope", SCOPE, "--config", config("pfx")], 0, "token"),
        (["token", "--json", "--scope", SCOPE, "--config", config("pem")], 0, "json"),
        (["token", "--json", "--scope", SCOPE, "--config", config("base64")], 0, "json"),
        (["check", "--config", config("pem", "pfx", "base64", "secret", "file")], 0, None),
        (["check", "--config", config("wrong pem password", "wrong pfx password")], 1, None),
        (["check", "--config", config("base64 with password", "missing file")], 1, None),
        (["token", "--scope", SCOPE, "--config", config("wrong secret")], 6, None),
        (["token", "--scope", SCOPE, "--config", config("wrong pfx password")], 4, None),
        (["assertion", "--config", config("wrong pem password", "secret")], 4, None),
    ]
    with debug_logs() as logs:
        for argv, code, prints in runs:
            where = " ".join(a if len(a) < 40 else "..." for a in argv)
            assert cli.main(["--debug", *argv]) == code, where
            captured = capsys.readouterr()
            hygiene.cli(where, captured.out, captured.err, prints=prints)
    hygiene.logs("cli", logs.records)
    hygiene.assert_clean(expected_texts=26)


def test_public_objects_show_no_secret(offline: Offline) -> None:
    """``repr`` and ``str`` of every public kvassert type, built from secret-bearing input."""
    hygiene, made = offline.hygiene, offline.made
    signer = LocalCertificateSigner.from_bytes(
        made.pfx_path.read_bytes(), password=made.pfx_password
    )
    token = AccessToken(token=random_jwt(), expires_on=2, refresh_on=1, issued_at=0)
    hygiene.plant_jwt("an access token", token.token)
    url = f"redis://:{made.redis_password}@127.0.0.1:9/0"
    store = kvassert.RedisTokenStore(url, encryption_key=made.encryption_key)
    with offline.credential("pem", "secret") as credential:
        auth = kvassert.BearerAuth(credential, SCOPE)
        hygiene.objects(
            "public objects",
            signer,
            signer.chain,
            token,
            store,
            credential,
            credential.settings,
            *credential.settings.credentials,
            *credential.sources,
            credential.client_assertion,
            auth,
            FAST,
            kvassert.ConfigError("AzureAd:ClientSecret", "a value of 40 characters", "x"),
            kvassert.TokenRequestError("refused", aadsts=7000215, hint="check the secret"),
            kvassert.KeyVaultError("sign failed", status=403, hint="grant a role"),
        )
        unsent = offline.run(
            "bearer over http",
            lambda: auth_request(auth, f"http://u:{made.client_secret}@x.example/"),
        )
        assert isinstance(unsent, KvassertError)
    store.close()
    hygiene.assert_clean(expected_texts=30)


def auth_request(auth: kvassert.BearerAuth, url: str) -> object:
    import requests

    return auth(requests.Request("GET", url).prepare())


def test_the_scanner_finds_what_it_should() -> None:
    """The scanner itself: whole values, pieces of long ones, values broken over lines, and
    signatures of JWTs; header and claims of a JWT are not secrets."""
    hygiene = Hygiene()
    hygiene.plant("secret", "kvcanary-short")
    long = base64.b64encode(secrets.token_bytes(96)).decode()
    hygiene.plant("long", long)
    token = random_jwt()
    hygiene.plant_jwt("jwt", token)
    hygiene.text("whole", "x kvcanary-short y")
    hygiene.text("piece", f"...{long[30:60]}...")
    hygiene.text("wrapped", "\n".join(long[i : i + 16] for i in range(0, len(long), 16)))
    hygiene.text("signature", f"Bearer {token}")
    hygiene.text("claims only", token.rsplit(".", 1)[0])
    found = {leak.split(" in ", 1)[1].split(":", 1)[0] for leak in hygiene.leaks()}
    assert found == {"whole", "piece", "wrapped", "signature"}


def test_an_answer_that_echoes_the_request_keeps_the_credential_out_of_errors(
    offline: Offline,
) -> None:
    """A proxy's error page or a custom STS (``AllowedAuthorityHosts``) that echoes the request
    back: kvassert puts the start of a body it cannot parse, and Entra's error description, into
    its error text, so the request's own secret or assertion is blanked out of the answer first.
    """
    hygiene = offline.hygiene

    def echoes(form: dict[str, str]) -> list[Answer]:
        raw = urllib.parse.urlencode(form).encode()
        credential = form.get("client_secret") or form.get("client_assertion") or ""
        described = {
            "error": "invalid_client",
            "error_description": f"AADSTS7000215: Invalid client secret '{credential}' provided.",
            "error_codes": [7000215],
        }
        return [
            (400, {}, raw),  # the raw form first: the error quotes a body's first 40 bytes
            (403, {}, b"<html>blocked: " + credential.encode() + b"</html>"),
            (401, {}, json.dumps(described).encode()),
        ]

    with debug_logs() as logs:
        for index in range(3):
            offline.script.responder = lambda form, index=index: echoes(form)[index]
            for name in ("secret", "pfx"):
                with offline.credential(name) as credential:
                    error = offline.run(f"echo {index} to {name}", lambda: credential.token(SCOPE))
                    assert isinstance(error, kvassert.TokenRequestError)
    hygiene.logs("echo", logs.records)
    hygiene.assert_clean(expected_texts=20)
