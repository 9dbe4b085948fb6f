"""kvassert.settings: .NET configuration semantics and the AzureAd rules, one test per rule."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from kvassert.errors import ConfigError
from kvassert.settings import (
    SOURCE_TYPES,
    AzureAdSettings,
    CredentialDescription,
    load_settings,
    settings_from_mapping,
)

CLIENT = "11111111-1111-1111-1111-111111111111"
TENANT = "22222222-2222-2222-2222-222222222222"
VAULT = "https://contoso-kv.vault.azure.net"
KEYVAULT_ENTRY = {"SourceType": "KeyVault", "KeyVaultUrl": VAULT, "KeyVaultCertificateName": "app"}
# For tests about the authority alone: a vault would have to match the authority's cloud.
PATH_ENTRY = {"SourceType": "Path", "CertificateDiskPath": "/c.pfx"}
EMULATOR = "http://127.0.0.1:9000/"


def azuread(**keys: Any) -> dict[str, Any]:
    """A valid AzureAd section with ``keys`` merged in (a value of None removes the key)."""
    section: dict[str, Any] = {
        "ClientId": CLIENT,
        "TenantId": TENANT,
        "ClientCredentials": [dict(KEYVAULT_ENTRY)],
    }
    section.update(keys)
    return {"AzureAd": {key: value for key, value in section.items() if value is not None}}


def with_entry(entry: dict[str, Any], **keys: Any) -> dict[str, Any]:
    return azuread(ClientCredentials=[entry], **keys)


def from_mapping(document: dict[str, Any], env: dict[str, str] | None = None) -> AzureAdSettings:
    return settings_from_mapping(document, env=env or {})


def error_of(document: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(document, env)
    return info.value


def write(directory: Path, name: str, content: str | dict[str, Any]) -> Path:
    text = content if isinstance(content, str) else json.dumps(content)
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# --- files: JSON with comments, syntax errors, shapes --------------------------------------


def test_comments_and_trailing_commas_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "appsettings.json",
        f"""
        // line comment
        {{
          "AzureAd": {{
            /* block
               comment */
            "ClientId": "{CLIENT}", // after a value
            "TenantId": "{TENANT}",
            "ClientCredentials": [
              {{ "SourceType": "KeyVault", "KeyVaultUrl": "{VAULT}",
                 "KeyVaultCertificateName": "app", }},
            ],
          }},
        }}
        """,
    )
    settings = load_settings(path, env={})
    assert settings.client_id == CLIENT
    assert settings.source_files == (str(path),)


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    # Visual Studio writes appsettings.json with a UTF-8 BOM.
    path = tmp_path / "appsettings.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(azuread()).encode())
    assert load_settings(path, env={}).tenant_id == TENANT


def test_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", '{\n  "AzureAd": {\n    "ClientId": ,\n  }\n}')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.path == str(path)
    assert "line 3, column 17" in str(info.value)


@pytest.mark.parametrize(
    ("content", "found"),
    [("", "an empty file"), ("[1, 2]", "an array"), ('"text"', "a single value")],
)
def test_file_must_hold_an_object(tmp_path: Path, content: str, found: str) -> None:
    path = write(tmp_path, "appsettings.json", content)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.path == str(path)
    assert found in info.value.found


def test_invalid_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_bytes(b'{"AzureAd": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(path, env={})


def test_section_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", {"AzureAd": "oops"})
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.path == "AzureAd"


def test_missing_section(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", {"Logging": {}})
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert info.value.path == "AzureAd"
    assert str(path) in info.value.found


def test_same_key_twice_in_one_file_differing_only_in_case(tmp_path: Path) -> None:
    # .NET's JSON provider refuses such a file, so an ambiguous one must not load here either.
    text = '{"AzureAd": {"ClientId": "a", "clientid": "b"}}'
    with pytest.raises(ConfigError, match="more than once"):
        load_settings(write(tmp_path, "appsettings.json", text), env={})


# --- locating files and layering -------------------------------------------------------------


def test_default_path_is_appsettings_json_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "appsettings.json", azuread())
    monkeypatch.chdir(tmp_path)
    assert load_settings(env={}).source_files == ("appsettings.json",)


def test_no_file_at_all_is_fine_when_env_vars_supply_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "AzureAd__ClientId": CLIENT,
        "AzureAd__TenantId": TENANT,
        "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__0__ClientSecret": "s3cret-value",
    }
    settings = load_settings(env=env)
    assert settings.source_files == ()
    assert settings.credentials[0].client_secret == "s3cret-value"


def test_directory_path_uses_appsettings_json_inside_it(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", azuread())
    assert load_settings(tmp_path, env={}).source_files == (str(path),)


def test_explicit_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "missing.json", env={})
    assert info.value.path == str(tmp_path / "missing.json")


def test_environment_file_overrides_base_file(tmp_path: Path) -> None:
    base = write(tmp_path, "appsettings.json", azuread(SendX5C=False))
    prod = write(tmp_path, "appsettings.Production.json", {"AzureAd": {"SendX5C": True}})
    settings = load_settings(base, env={"DOTNET_ENVIRONMENT": "Production"})
    assert settings.send_x5c is True
    assert settings.source_files == (str(base), str(prod))


@pytest.mark.parametrize(
    ("environment", "env", "expected_client"),
    [
        (None, {"DOTNET_ENVIRONMENT": "Dotnet", "ASPNETCORE_ENVIRONMENT": "Aspnet"}, "dotnet"),
        (None, {"ASPNETCORE_ENVIRONMENT": "Aspnet"}, "aspnet"),
        ("Explicit", {"DOTNET_ENVIRONMENT": "Dotnet"}, "explicit"),
        (None, {}, CLIENT),
    ],
)
def test_environment_name_precedence(
    tmp_path: Path, environment: str | None, env: dict[str, str], expected_client: str
) -> None:
    # .NET 7+ WebApplicationBuilder: DOTNET_ENVIRONMENT overrides ASPNETCORE_ENVIRONMENT.
    write(tmp_path, "appsettings.json", azuread())
    for name in ("Dotnet", "Aspnet", "Explicit"):
        write(tmp_path, f"appsettings.{name}.json", {"AzureAd": {"ClientId": name.lower()}})
    settings = load_settings(tmp_path, environment=environment, env=env)
    assert settings.client_id == expected_client


def test_null_in_a_later_layer_unsets_the_value(tmp_path: Path) -> None:
    base = write(tmp_path, "appsettings.json", azuread(ClientSecret="from-base-file"))
    write(tmp_path, "appsettings.Production.json", '{"AzureAd": {"ClientSecret": null}}')
    settings = load_settings(base, environment="Production", env={})
    assert settings.client_secret is None
    assert [c.source_type for c in settings.credentials] == ["KeyVault"]


def test_env_var_overrides_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", azuread())
    env = {"AzureAd__ClientCredentials__0__KeyVaultCertificateName": "rotated"}
    settings = load_settings(path, env=env)
    assert settings.credentials[0].key_vault_certificate_name == "rotated"
    assert settings.credentials[0].key_vault_url == VAULT


def test_env_var_adds_an_entry_by_index(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", azuread())
    env = {
        "AzureAd__ClientCredentials__1__SourceType": "Path",
        "AzureAd__ClientCredentials__1__CertificateDiskPath": "/etc/cert.pfx",
    }
    settings = load_settings(path, env=env)
    assert [c.source_type for c in settings.credentials] == ["KeyVault", "Path"]
    assert settings.credentials[1].path == "AzureAd:ClientCredentials:1"


def test_env_var_names_with_colons_and_any_case(tmp_path: Path) -> None:
    path = write(tmp_path, "appsettings.json", azuread())
    env = {"AzureAd:ClientId": "colon-client", "AZUREAD__SENDX5C": "TRUE"}
    settings = load_settings(path, env=env)
    assert settings.client_id == "colon-client"
    assert settings.send_x5c is True


def test_env_vars_outside_the_section_are_ignored() -> None:
    env = {"Other__ClientId": "x", "AzureAdX__ClientId": "y", "ClientId": "z"}
    assert from_mapping(azuread(), env).client_id == CLIENT


def test_requested_section_name_is_used_for_files_env_and_paths() -> None:
    document = {"Identity": azuread()["AzureAd"]}
    env = {"Identity__TenantId": "contoso.com"}
    settings = settings_from_mapping(document, section="Identity", env=env)
    assert settings.tenant_id == "contoso.com"
    assert settings.credentials[0].path == "Identity:ClientCredentials:0"


# --- arrays as objects keyed by index --------------------------------------------------------


def test_indices_need_not_be_contiguous_and_sort_numerically() -> None:
    names = {"10": "ten", "2": "two", "0": "zero"}
    env = {
        f"AzureAd__ClientCredentials__{index}__{key}": value
        for index, name in names.items()
        for key, value in {**KEYVAULT_ENTRY, "KeyVaultCertificateName": name}.items()
    }
    settings = from_mapping(azuread(ClientCredentials=None), env)
    assert [c.key_vault_certificate_name for c in settings.credentials] == ["zero", "two", "ten"]
    assert settings.credentials[2].path == "AzureAd:ClientCredentials:10"


def test_list_with_non_numeric_keys_is_an_error() -> None:
    env = {"AzureAd__ClientCredentials__SourceType": "KeyVault"}
    error = error_of(azuread(ClientCredentials=None), env)
    assert error.path == "AzureAd:ClientCredentials:SourceType"
    assert "AzureAd:ClientCredentials:0:SourceType" in error.expected


# --- case-insensitive keys and values --------------------------------------------------------


def test_keys_are_case_insensitive_and_paths_use_canonical_spelling() -> None:
    document: dict[str, Any] = {
        "azuread": {
            "CLIENTID": CLIENT,
            "tenantid": TENANT,
            "clientcredentials": [{"sourcetype": "keyvault", "keyvaulturl": VAULT}],
        }
    }
    error = error_of(document)
    assert error.path == "AzureAd:ClientCredentials:0:KeyVaultCertificateName"
    document["azuread"]["clientcredentials"][0]["KEYVAULTCERTIFICATENAME"] = "app"
    assert from_mapping(document).credentials[0].source_type == "KeyVault"


@pytest.mark.parametrize("value", [True, "TRUE", "true", " True "])
def test_booleans_accept_json_booleans_and_strings_in_any_case(value: Any) -> None:
    assert from_mapping(azuread(SendX5C=value)).send_x5c is True


@pytest.mark.parametrize("value", ["yes", "1", "on"])
def test_booleans_reject_other_words(value: str) -> None:
    error = error_of(azuread(SendX5C=value))
    assert error.path == "AzureAd:SendX5C"
    assert "true or false" in error.expected


def test_object_where_a_value_is_expected() -> None:
    error = error_of(azuread(ClientId={"Nested": "x"}))
    assert error.path == "AzureAd:ClientId"
    assert "object" in error.found


# --- AzureAd: ClientId, TenantId, Instance, Authority ----------------------------------------


def test_defaults() -> None:
    settings = from_mapping(azuread())
    assert settings.instance == "https://login.microsoftonline.com/"
    assert settings.authority == f"https://login.microsoftonline.com/{TENANT}"
    assert settings.send_x5c is False
    assert (settings.signing_algorithm, settings.assertion_lifetime_seconds) == ("PS256", 600)
    assert settings.token_version == "v2"
    assert settings.unknown_keys == ()


@pytest.mark.parametrize("client_id", [None, "", " padded "])
def test_client_id_is_required(client_id: str | None) -> None:
    document = azuread()
    document["AzureAd"]["ClientId"] = client_id
    assert error_of(document).path == "AzureAd:ClientId"


def test_tenant_id_is_required_unless_authority_gives_it() -> None:
    assert error_of(azuread(TenantId=None)).path == "AzureAd:TenantId"
    authority = "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    settings = from_mapping(azuread(TenantId=None, Authority=authority))
    assert settings.tenant_id == "contoso.onmicrosoft.com"


@pytest.mark.parametrize("tenant", ["common", "Organizations", "consumers"])
def test_multi_tenant_aliases_cannot_issue_app_only_tokens(tenant: str) -> None:
    error = error_of(azuread(TenantId=tenant))
    assert error.path == "AzureAd:TenantId"
    assert "specific tenant" in error.expected


@pytest.mark.parametrize("tenant", ["contoso/../x", "a b", "-x"])
def test_tenant_must_be_a_guid_or_domain(tenant: str) -> None:
    assert error_of(azuread(TenantId=tenant)).path == "AzureAd:TenantId"


@pytest.mark.parametrize(
    ("authority", "instance"),
    [
        ("https://login.microsoftonline.us/contoso.com", "https://login.microsoftonline.us/"),
        ("https://login.microsoftonline.us/contoso.com/v2.0", "https://login.microsoftonline.us/"),
        ("https://login.microsoftonline.us/contoso.com/v2.0/", "https://login.microsoftonline.us/"),
        ("https://127.0.0.1:8443/prefix/contoso.com", "https://127.0.0.1:8443/prefix/"),
    ],
)
def test_authority_gives_instance_and_tenant(authority: str, instance: str) -> None:
    settings = from_mapping(with_entry(PATH_ENTRY, TenantId=None, Authority=authority))
    assert (settings.instance, settings.tenant_id) == (instance, "contoso.com")
    assert settings.authority == f"{instance}contoso.com"


def test_authority_agreeing_with_instance_and_tenant_is_fine() -> None:
    document = azuread(
        Instance="https://login.microsoftonline.com",
        Authority=f"https://LOGIN.microsoftonline.com/{TENANT}/v2.0",
    )
    assert from_mapping(document).authority == f"https://login.microsoftonline.com/{TENANT}"


@pytest.mark.parametrize(
    "keys",
    [
        {"Authority": "https://login.microsoftonline.com/other-tenant.com"},
        {
            "Instance": "https://login.microsoftonline.us/",
            "Authority": f"https://login.microsoftonline.com/{TENANT}",
        },
    ],
)
def test_authority_disagreeing_with_instance_or_tenant(keys: dict[str, str]) -> None:
    error = error_of(azuread(**keys))
    assert error.path == "AzureAd:Authority"
    assert "Instance and TenantId" in error.expected


def test_authority_without_tenant() -> None:
    error = error_of(azuread(TenantId=None, Authority="https://login.microsoftonline.com/v2.0"))
    assert error.path == "AzureAd:Authority"


def test_instance_gets_a_trailing_slash_and_token_endpoints_follow() -> None:
    settings = from_mapping(with_entry(PATH_ENTRY, Instance="https://login.microsoftonline.us"))
    assert settings.instance == "https://login.microsoftonline.us/"
    v2 = f"https://login.microsoftonline.us/{TENANT}/oauth2/v2.0/token"
    assert settings.token_endpoint() == v2
    assert (
        settings.token_endpoint("v1") == f"https://login.microsoftonline.us/{TENANT}/oauth2/token"
    )
    with pytest.raises(ConfigError):
        settings.token_endpoint("v3")


# --- URLs: https only, http for loopback ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        (VAULT + "/", VAULT),
        ("HTTPS://contoso-kv.vault.azure.net", VAULT),
        ("https://127.0.0.1:8443", "https://127.0.0.1:8443"),
        ("http://127.0.0.1:8443/", "http://127.0.0.1:8443"),
        ("http://127.9.8.7", "http://127.9.8.7"),
        ("http://localhost:1234", "http://localhost:1234"),
        ("http://[::1]:99", "http://[::1]:99"),
    ],
)
def test_vault_url_accepted(url: str, normalised: str) -> None:
    entry = {**KEYVAULT_ENTRY, "KeyVaultUrl": url}
    # A loopback vault (the emulator) pairs with a loopback authority: see authority pinning.
    instance = None if "vault.azure.net" in normalised else EMULATOR
    settings = from_mapping(with_entry(entry, Instance=instance))
    assert settings.credentials[0].key_vault_url == normalised


@pytest.mark.parametrize(
    "url",
    [
        "http://contoso-kv.vault.azure.net",
        "http://10.0.0.1",
        "http://localhost.example.com",
        "http://[::2]",
        "ftp://contoso-kv.vault.azure.net",
        "https://",
        "contoso-kv.vault.azure.net",
        "https://contoso kv.vault.azure.net",
        "https://contoso-kv.vault.azure.net:99999",
        "https://contoso-kv.vault.azure.net?x=1",
        "https://contoso-kv.vault.azure.net/certificates/app",
        "https://[::1",
    ],
)
def test_vault_url_rejected(url: str) -> None:
    error = error_of(with_entry({**KEYVAULT_ENTRY, "KeyVaultUrl": url}))
    assert error.path == "AzureAd:ClientCredentials:0:KeyVaultUrl"


def test_url_with_user_info_is_rejected_without_echoing_it() -> None:
    error = error_of(azuread(Instance="https://user:hunter2pass@login.microsoftonline.com/"))
    assert error.path == "AzureAd:Instance"
    assert "hunter2pass" not in str(error)


@pytest.mark.parametrize(
    ("instance", "ok"),
    [
        ("http://login.microsoftonline.com/", False),
        ("http://127.0.0.1:9000", True),
        ("https://127.0.0.1:9000/", True),
    ],
)
def test_instance_follows_the_same_https_rule(instance: str, ok: bool) -> None:
    if ok:
        settings = from_mapping(with_entry(PATH_ENTRY, Instance=instance))
        assert settings.instance == instance.rstrip("/") + "/"
    else:
        assert error_of(azuread(Instance=instance)).path == "AzureAd:Instance"


# --- credential lists ------------------------------------------------------------------------


def test_both_list_names_then_top_level_client_secret() -> None:
    document = azuread(
        ClientCertificates=[{"SourceType": "Path", "CertificateDiskPath": "/legacy.pfx"}],
        ClientSecret="top-level-secret",
    )
    credentials = from_mapping(document).credentials
    assert [(c.source_type, c.path) for c in credentials] == [
        ("KeyVault", "AzureAd:ClientCredentials:0"),
        ("Path", "AzureAd:ClientCertificates:0"),
        ("ClientSecret", "AzureAd:ClientSecret"),
    ]
    assert credentials[2].client_secret == "top-level-secret"


def test_top_level_client_secret_alone_is_enough() -> None:
    settings = from_mapping(azuread(ClientCredentials=None, ClientSecret="only-secret"))
    assert settings.client_secret == "only-secret"
    assert [c.path for c in settings.credentials] == ["AzureAd:ClientSecret"]


def test_at_least_one_usable_credential() -> None:
    assert error_of(azuread(ClientCredentials=None)).path == "AzureAd:ClientCredentials"
    skipped = {**KEYVAULT_ENTRY, "Skip": True}
    assert "skipped" in error_of(with_entry(skipped)).found


def test_list_that_is_a_single_value() -> None:
    error = error_of(azuread(ClientCredentials="KeyVault"))
    assert error.path == "AzureAd:ClientCredentials"
    assert "array" in error.expected


COMPLETE_ENTRIES: dict[str, dict[str, str]] = {
    "KeyVault": dict(KEYVAULT_ENTRY),
    "Path": {"CertificateDiskPath": "/etc/cert.pfx"},
    "Base64Encoded": {"Base64EncodedValue": base64.b64encode(b"fake pfx bytes").decode()},
    "ClientSecret": {"ClientSecret": "a-secret"},
    "SignedAssertionFilePath": {"SignedAssertionFileDiskPath": "/var/run/token"},
    "SignedAssertionFromManagedIdentity": {},
    "StoreWithThumbprint": {
        "CertificateStorePath": "CurrentUser/My",
        "CertificateThumbprint": "AB" * 20,
    },
    "StoreWithDistinguishedName": {
        "CertificateStorePath": "CurrentUser/My",
        "CertificateDistinguishedName": "CN=App",
    },
}
REQUIRED_KEYS = [
    ("KeyVault", "KeyVaultUrl"),
    ("KeyVault", "KeyVaultCertificateName"),
    ("Path", "CertificateDiskPath"),
    ("Base64Encoded", "Base64EncodedValue"),
    ("ClientSecret", "ClientSecret"),
    ("StoreWithThumbprint", "CertificateStorePath"),
    ("StoreWithThumbprint", "CertificateThumbprint"),
    ("StoreWithDistinguishedName", "CertificateStorePath"),
    ("StoreWithDistinguishedName", "CertificateDistinguishedName"),
]


def test_every_source_type_is_covered_here() -> None:
    assert set(COMPLETE_ENTRIES) == set(SOURCE_TYPES)


@pytest.mark.parametrize("source_type", list(COMPLETE_ENTRIES))
def test_every_source_type_loads_when_complete(source_type: str) -> None:
    entry = {**COMPLETE_ENTRIES[source_type], "SourceType": source_type.upper()}
    credential = from_mapping(with_entry(entry)).credentials[0]
    assert credential.source_type == source_type
    assert credential.describe().startswith(source_type)


@pytest.mark.parametrize(("source_type", "key"), REQUIRED_KEYS)
def test_required_key_missing(source_type: str, key: str) -> None:
    entry = {**COMPLETE_ENTRIES[source_type], "SourceType": source_type}
    del entry[key]
    error = error_of(with_entry(entry))
    assert error.path == f"AzureAd:ClientCredentials:0:{key}"
    assert error.found == "nothing"


@pytest.mark.parametrize(("source_type", "key"), REQUIRED_KEYS)
def test_skipped_entry_is_kept_without_validating_required_keys(source_type: str, key: str) -> None:
    entry = {**COMPLETE_ENTRIES[source_type], "SourceType": source_type, "Skip": "True"}
    del entry[key]
    settings = from_mapping(azuread(ClientCredentials=[entry, dict(KEYVAULT_ENTRY)]))
    assert settings.credentials[0].skip is True
    assert settings.credentials[0].describe().endswith("(skipped)")
    assert settings.credentials[1].skip is False


def test_missing_source_type() -> None:
    error = error_of(with_entry({"KeyVaultUrl": VAULT}))
    assert error.path == "AzureAd:ClientCredentials:0:SourceType"


def test_unknown_source_type_lists_the_valid_names() -> None:
    error = error_of(with_entry({"SourceType": "Vault"}))
    assert error.path == "AzureAd:ClientCredentials:0:SourceType"
    for name in SOURCE_TYPES:
        assert name in error.expected


def test_entry_that_is_a_single_value() -> None:
    error = error_of(azuread(ClientCredentials=["KeyVault"]))
    assert error.path == "AzureAd:ClientCredentials:0"


@pytest.mark.parametrize("name", ["app/cert", "app cert", "a" * 128, "https://x"])
def test_key_vault_certificate_name_follows_key_vault_naming(name: str) -> None:
    error = error_of(with_entry({**KEYVAULT_ENTRY, "KeyVaultCertificateName": name}))
    assert error.path == "AzureAd:ClientCredentials:0:KeyVaultCertificateName"


def test_key_vault_entry_keeps_managed_identity_client_id() -> None:
    entry = {**KEYVAULT_ENTRY, "ManagedIdentityClientId": CLIENT}
    assert from_mapping(with_entry(entry)).credentials[0].managed_identity_client_id == CLIENT


def test_base64_value_is_checked_at_load_and_may_be_wrapped() -> None:
    encoded = base64.b64encode(bytes(range(200))).decode()
    wrapped = "\n".join(encoded[i : i + 64] for i in range(0, len(encoded), 64))
    entry = {"SourceType": "Base64Encoded", "Base64EncodedValue": wrapped}
    assert from_mapping(with_entry(entry)).credentials[0].base64_encoded_value == wrapped
    error = error_of(with_entry({**entry, "Base64EncodedValue": "not*base64!"}))
    assert error.path == "AzureAd:ClientCredentials:0:Base64EncodedValue"
    assert "not*base64" not in str(error)


def test_signed_assertion_file_falls_back_to_azure_federated_token_file() -> None:
    entry = {"SourceType": "SignedAssertionFilePath"}
    env = {"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token"}
    credential = from_mapping(with_entry(entry), env).credentials[0]
    assert credential.signed_assertion_file_disk_path == env["AZURE_FEDERATED_TOKEN_FILE"]
    explicit = {**entry, "SignedAssertionFileDiskPath": "/explicit"}
    credential = from_mapping(with_entry(explicit), env).credentials[0]
    assert credential.signed_assertion_file_disk_path == "/explicit"
    error = error_of(with_entry(entry), {})
    assert error.path == "AzureAd:ClientCredentials:0:SignedAssertionFileDiskPath"
    assert "AZURE_FEDERATED_TOKEN_FILE" in error.found


def test_managed_identity_fic_defaults_token_exchange_url() -> None:
    entry = {"SourceType": "SignedAssertionFromManagedIdentity"}
    credential = from_mapping(with_entry(entry)).credentials[0]
    assert credential.token_exchange_url == "api://AzureADTokenExchange"
    assert credential.managed_identity_client_id is None
    custom = {**entry, "TokenExchangeUrl": "api://AzureADTokenExchangeUSGov"}
    credential = from_mapping(with_entry(custom)).credentials[0]
    assert credential.token_exchange_url == "api://AzureADTokenExchangeUSGov"


def test_describe_labels() -> None:
    credentials = from_mapping(
        azuread(
            ClientCredentials=[
                dict(KEYVAULT_ENTRY),
                {"SourceType": "Path", "CertificateDiskPath": "/etc/cert.pfx"},
            ]
        )
    ).credentials
    assert credentials[0].describe() == f"KeyVault {VAULT}/certificates/app"
    assert credentials[1].describe() == "Path /etc/cert.pfx"


# --- kvassert's own options and unknown keys --------------------------------------------------


def test_kvassert_options_case_insensitive_values_and_numeric_strings() -> None:
    options = {"signingalgorithm": "rs256", "AssertionLifetimeSeconds": "900", "TokenVersion": "V1"}
    settings = from_mapping(azuread(kvassert=options))
    assert settings.signing_algorithm == "RS256"
    assert settings.assertion_lifetime_seconds == 900
    assert settings.token_version == "v1"
    assert settings.token_endpoint().endswith("/oauth2/token")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("AssertionLifetimeSeconds", 59),
        ("AssertionLifetimeSeconds", 3601),
        ("AssertionLifetimeSeconds", "ten"),
        ("AssertionLifetimeSeconds", 600.5),
        ("SigningAlgorithm", "ES256"),
        ("TokenVersion", "v3"),
    ],
)
def test_kvassert_options_rejected(key: str, value: Any) -> None:
    assert error_of(azuread(Kvassert={key: value})).path == f"AzureAd:Kvassert:{key}"


@pytest.mark.parametrize("value", [60, 3600, "  120 "])
def test_lifetime_bounds_are_inclusive(value: Any) -> None:
    settings = from_mapping(azuread(Kvassert={"AssertionLifetimeSeconds": value}))
    assert settings.assertion_lifetime_seconds == int(value)


def test_unknown_keys_are_collected_with_their_paths() -> None:
    entry = {**KEYVAULT_ENTRY, "KeyVaultCertName": "typo"}
    document = azuread(
        ClientCredentials=[entry],
        ClientCredential=[],
        Kvassert={"Lifetime": 5},
        CallbackPath="/signin-oidc",  # web-app only key: known to .NET, not worth a warning
    )
    assert from_mapping(document).unknown_keys == (
        "AzureAd:ClientCredential",
        "AzureAd:Kvassert:Lifetime",
        "AzureAd:ClientCredentials:0:KeyVaultCertName",
    )


# --- secrets never reach text ----------------------------------------------------------------

CANARY = "CANARYc4n4ry"  # also valid base64, so it can sit in Base64EncodedValue


def canary_document(**keys: Any) -> dict[str, Any]:
    return azuread(
        ClientCredentials=[
            dict(KEYVAULT_ENTRY),
            {"SourceType": "Path", "CertificateDiskPath": "/c.pfx", "CertificatePassword": CANARY},
            {"SourceType": "Base64Encoded", "Base64EncodedValue": CANARY},
            {"SourceType": "ClientSecret", "ClientSecret": CANARY},
        ],
        ClientSecret=CANARY,
        **keys,
    )


def test_secrets_are_redacted_from_repr_str_and_describe() -> None:
    settings = from_mapping(canary_document())
    texts = [repr(settings), str(settings)]
    texts += [text for c in settings.credentials for text in (repr(c), str(c), c.describe())]
    assert all(CANARY not in text for text in texts)
    assert "client_secret=<redacted>" in repr(settings)
    assert "certificate_password=<redacted>" in repr(settings.credentials[1])
    assert settings.credentials[3].client_secret == CANARY


@pytest.mark.parametrize(
    ("document", "env"),
    [
        (canary_document(TenantId="common"), {}),
        (canary_document(), {"AzureAd__ClientCredentials__0__KeyVaultUrl": "http://x"}),
        (canary_document(), {"AzureAd__ClientCredentials__2__Base64EncodedValue": CANARY + "*"}),
        (canary_document(), {"AzureAd__ClientSecret__x": "y"}),
        (azuread(ClientCredentials=CANARY), {}),
        (azuread(ClientCredentials=[CANARY]), {}),
        (azuread(Kvassert=CANARY), {}),
        ({"AzureAd": CANARY}, {}),
        (azuread(), {"AzureAd__ClientCredentials__0": CANARY}),
    ],
)
def test_secrets_never_reach_error_messages(document: dict[str, Any], env: dict[str, str]) -> None:
    error = error_of(document, env)
    assert CANARY not in str(error)
    assert CANARY not in repr(error.args)


# --- settings_from_mapping specifics ----------------------------------------------------------


def test_settings_from_mapping_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureAd__ClientId", "from-process-env")
    assert settings_from_mapping(azuread()).client_id == "from-process-env"
    assert settings_from_mapping(azuread(), env={}).client_id == CLIENT


@pytest.mark.parametrize(
    "document",
    [
        ["not", "a", "mapping"],
        {"AzureAd": {1: "non-string key"}},
        {"AzureAd": {"ClientId": object()}},
        {"AzureAd": {"ClientId": b"bytes"}},
    ],
)
def test_settings_from_mapping_rejects_non_json_input(document: Any) -> None:
    with pytest.raises(ConfigError):
        settings_from_mapping(document, env={})


def test_env_map_with_non_string_values_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(azuread(), env={"AzureAd__SendX5C": True})  # type: ignore[dict-item]
    assert info.value.path == "env"


def test_python_numbers_and_booleans_read_like_json_text() -> None:
    settings = from_mapping(azuread(SendX5C=True, Kvassert={"AssertionLifetimeSeconds": 300}))
    assert (settings.send_x5c, settings.assertion_lifetime_seconds) == (True, 300)


def test_results_are_frozen() -> None:
    settings = from_mapping(azuread())
    with pytest.raises(AttributeError):
        settings.client_id = "x"  # type: ignore[misc]
    assert isinstance(settings.credentials[0], CredentialDescription)
