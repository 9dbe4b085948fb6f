"""Property tests: any input gives AzureAdSettings or ConfigError, never another exception.

Also two .NET-configuration laws: keys are case-insensitive (re-casing every key changes
nothing) and env vars are one more layer (moving any value from the document to an
``AzureAd__...`` variable changes nothing). Secrets planted as canaries must never reach text.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvassert.errors import ConfigError
from kvassert.settings import AzureAdSettings, load_settings, settings_from_mapping
from tests.fuzzing import fuzz_settings

CANARY = "CANARYc4n4ry"  # valid base64, so it passes as a Base64EncodedValue too
# KVASSERT_FUZZ_EXAMPLES sets the count (tests/fuzzing.py); the two laws below need fewer.
FAST = fuzz_settings()
LAWS = fuzz_settings(0.1)

VALID: dict[str, Any] = {
    "Logging": {"LogLevel": {"Default": "Information"}},
    "AzureAd": {
        "Instance": "https://login.microsoftonline.com/",
        "TenantId": "22222222-2222-2222-2222-222222222222",
        "Authority": "https://login.microsoftonline.com/22222222-2222-2222-2222-222222222222/v2.0",
        "ClientId": "11111111-1111-1111-1111-111111111111",
        "SendX5C": True,
        "ClientCredentials": [
            {
                "SourceType": "KeyVault",
                "KeyVaultUrl": "https://contoso-kv.vault.azure.net",
                "KeyVaultCertificateName": "app-cert",
                "ManagedIdentityClientId": "33333333-3333-3333-3333-333333333333",
            },
            {"SourceType": "Path", "CertificateDiskPath": "/c.pfx", "CertificatePassword": CANARY},
            {"SourceType": "Base64Encoded", "Base64EncodedValue": CANARY},
            {"SourceType": "ClientSecret", "ClientSecret": CANARY},
            {"SourceType": "SignedAssertionFilePath", "SignedAssertionFileDiskPath": "/t"},
            {"SourceType": "SignedAssertionFromManagedIdentity"},
            {"SourceType": "StoreWithThumbprint", "Skip": True},
        ],
        "ClientCertificates": [{"SourceType": "Path", "CertificateDiskPath": "/legacy.pfx"}],
        "ClientSecret": CANARY,
        "Kvassert": {"SigningAlgorithm": "RS256", "AssertionLifetimeSeconds": 300},
    },
}

KNOWN_NAMES = [
    "AzureAd", "Instance", "TenantId", "ClientId", "Authority", "SendX5C", "ClientCredentials",
    "ClientCertificates", "ClientSecret", "Kvassert", "SigningAlgorithm", "TokenVersion",
    "AssertionLifetimeSeconds", "SourceType", "Skip", "KeyVaultUrl", "KeyVaultCertificateName",
    "CertificateDiskPath", "Base64EncodedValue", "SignedAssertionFileDiskPath", "TokenExchangeUrl",
    "CertificateStorePath", "CertificateThumbprint", "0", "1", "2", "10", "007",
]  # fmt: skip
TRICKY = [
    "", " ", "true", "FALSE", "keyvault", "Path", "clientsecret", "http://127.0.0.1:1",
    "http://example.com", "https://", "https://[::1", "https://x:99999", "https://u:p@x", "0",
    "-1", "59", "3600", "1e3", "0x10", "v1", "rs256", "common", "a:b", "__", "\x00", "İ", "ß",
    "https://login.microsoftonline.com/common/v2.0", "https://h/" + "a/" * 30,
]  # fmt: skip

names = st.sampled_from(KNOWN_NAMES) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(TRICKY)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)
env_names = st.lists(names, min_size=1, max_size=5).flatmap(
    lambda parts: st.sampled_from(["__", ":"]).map(lambda sep: sep.join(parts))
)
env_maps = st.dictionaries(
    env_names | st.sampled_from(["AZURE_FEDERATED_TOKEN_FILE", "DOTNET_ENVIRONMENT"]),
    st.text(max_size=24) | st.sampled_from(TRICKY),
    max_size=6,
)


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into a document, containers and leaves alike."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths_of(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths_of(child, (*prefix, index))
    return found


def leaf_paths(value: Any) -> list[tuple[Any, ...]]:
    return [path for path in paths_of(value) if not isinstance(get(value, path), (dict, list))]


def get(document: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        document = document[key]
    return document


def outcome(call: Any) -> AzureAdSettings | ConfigError:
    """Run ``call``; anything other than settings or ConfigError fails the test."""
    try:
        result = call()
    except ConfigError as error:
        return error
    assert isinstance(result, AzureAdSettings)
    return result


@st.composite
def mutated(draw: st.DrawFn, *, rename: bool) -> dict[str, Any]:
    """VALID with a few values dropped, replaced or retyped (and, if ``rename``, keys renamed)."""
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_of(document)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = get(document, path[:-1]), path[-1]
        operations = ["drop", "replace", "wrap"] + (["rename"] if rename else [])
        operation = draw(st.sampled_from(operations))
        if operation == "drop":
            del parent[key]
        elif operation == "replace":
            parent[key] = draw(json_values)
        elif operation == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}]))
        elif isinstance(parent, dict):
            parent[draw(names)] = parent.pop(key)
    return document


@FAST
@given(document=mutated(rename=True), env=env_maps)
def test_any_mutated_document_gives_settings_or_config_error(
    document: dict[str, Any], env: dict[str, str]
) -> None:
    outcome(lambda: settings_from_mapping(document, env=env))


@FAST
@given(document=mutated(rename=False), env=env_maps)
def test_canary_secrets_never_reach_text(document: dict[str, Any], env: dict[str, str]) -> None:
    # Keys keep their names here, so the canary only ever sits in secret fields (or is gone).
    env = {name: value for name, value in env.items() if CANARY not in value}
    result = outcome(lambda: settings_from_mapping(document, env=env))
    texts = [str(result), repr(result)]
    if isinstance(result, AzureAdSettings):
        texts += [credential.describe() for credential in result.credentials]
    assert not any(CANARY in text for text in texts)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


VALID_TEXT = json.dumps(VALID, indent=1)
json_ish = st.text(alphabet='{}[]:,"\\/*\n ntrufalse0123456789.-+eEAzureAdClientI', max_size=120)
edited = st.tuples(
    st.integers(0, len(VALID_TEXT)),
    st.integers(0, 8),
    st.sampled_from(['"', ",", "}", "]", "//", "/*", "\\u", "\\ud800", "null", "", "\n", ":"]),
).map(lambda edit: VALID_TEXT[: edit[0]] + edit[2] + VALID_TEXT[edit[0] + edit[1] :])


@FAST
@given(
    content=json_ish | edited | st.binary(max_size=40),
    environment=st.none() | st.text(max_size=6),
    env=env_maps,
)
def test_any_file_content_gives_settings_or_config_error(
    fuzz_dir: Path, content: str | bytes, environment: str | None, env: dict[str, str]
) -> None:
    path = fuzz_dir / "appsettings.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    outcome(lambda: load_settings(path, environment=environment, env=env))


def recased(value: Any, flips: st.DataObject) -> Any:
    if isinstance(value, dict):
        return {
            "".join(
                char.swapcase() if flips.draw(st.booleans()) else char for char in key
            ): recased(child, flips)
            for key, child in value.items()
        }
    if isinstance(value, list):
        return [recased(child, flips) for child in value]
    return value


@LAWS
@given(data=st.data())
def test_key_case_never_matters(data: st.DataObject) -> None:
    expected = settings_from_mapping(VALID, env={})
    assert settings_from_mapping(recased(VALID, data), env={}) == expected


@LAWS
@given(data=st.data())
def test_moving_values_into_env_vars_changes_nothing(data: st.DataObject) -> None:
    document = copy.deepcopy(VALID)
    moved = data.draw(st.sets(st.sampled_from(leaf_paths(document["AzureAd"])), max_size=8))
    separator = data.draw(st.sampled_from(["__", ":"]))
    env = {}
    for path in moved:
        value = get(document["AzureAd"], path)
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        env[separator.join(["AzureAd", *map(str, path)])] = text
        del get(document["AzureAd"], path[:-1])[path[-1]]
    assert settings_from_mapping(document, env=env) == settings_from_mapping(VALID, env={})
