"""Every sample in samples/config loads, with the credentials its comments promise."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvassert.settings import load_settings

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "config"

EXPECTED = {
    "appsettings.keyvault.json": ["KeyVault"],
    "appsettings.path.json": ["Path"],
    "appsettings.base64.json": ["Base64Encoded"],
    "appsettings.clientsecret.json": ["ClientSecret"],
    "appsettings.signedassertionfile.json": ["SignedAssertionFilePath"],
    "appsettings.managedidentity-fic.json": ["SignedAssertionFromManagedIdentity"],
    "appsettings.fallback.json": [
        "SignedAssertionFromManagedIdentity",
        "KeyVault",
        "Path",
        "StoreWithThumbprint",
    ],
}


def test_every_sample_is_listed() -> None:
    assert sorted(path.name for path in SAMPLES.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_loads(name: str) -> None:
    settings = load_settings(SAMPLES / name, env={})
    assert [credential.source_type for credential in settings.credentials] == EXPECTED[name]
    assert settings.unknown_keys == ()
    assert settings.source_files == (str(SAMPLES / name),)


def test_sample_details() -> None:
    keyvault = load_settings(SAMPLES / "appsettings.keyvault.json", env={})
    assert keyvault.credentials[0].describe() == (
        "KeyVault https://contoso-kv.vault.azure.net/certificates/contoso-app-cert"
    )
    assert keyvault.signing_algorithm == "PS256"
    secret = load_settings(SAMPLES / "appsettings.clientsecret.json", env={})
    assert secret.tenant_id == "contoso.onmicrosoft.com"
    fallback = load_settings(SAMPLES / "appsettings.fallback.json", env={})
    assert [credential.skip for credential in fallback.credentials] == [False, False, True, True]
