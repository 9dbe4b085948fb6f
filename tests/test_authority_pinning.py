"""Authority pinning: credentials go only to Entra hosts of one cloud, that cloud's vaults,
loopback (the emulator), or hosts the configuration allows by name. Every refusal is a
ConfigError at load time that names the path, the value and what was expected."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from kvassert import clouds
from kvassert.clouds import CLOUDS
from kvassert.credential import from_appsettings
from kvassert.errors import ConfigError
from kvassert.settings import AzureAdSettings, settings_from_mapping
from kvassert.signing import LocalCertificateSigner
from kvassert.transport import RetryPolicy
from tests.certs import make_cert
from tests.fakes import scripted_server
from tests.fuzzing import fuzz_settings

TENANT = "22222222-2222-2222-2222-222222222222"
CLIENT = "11111111-1111-1111-1111-111111111111"
VAULT_PATH = "AzureAd:ClientCredentials:0:KeyVaultUrl"
ALLOWED_AUTHORITIES = "AzureAd:Kvassert:AllowedAuthorityHosts"
ALLOWED_VAULTS = "AzureAd:Kvassert:AllowedVaultHosts"
PUBLIC, US_GOV, CHINA = CLOUDS


def document(
    vault: str | None = "https://contoso-kv.vault.azure.net",
    *,
    skip: bool = False,
    kvassert: dict[str, Any] | None = None,
    **keys: Any,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"SourceType": "Path", "CertificateDiskPath": "/c.pfx"}
    if vault is not None:
        entry = {"SourceType": "KeyVault", "KeyVaultUrl": vault, "KeyVaultCertificateName": "app"}
    section: dict[str, Any] = {
        "ClientId": CLIENT,
        "TenantId": TENANT,
        "ClientCredentials": [{**entry, "Skip": skip}],
        **keys,
    }
    if kvassert is not None:
        section["Kvassert"] = kvassert
    return {"AzureAd": section}


def load(doc: dict[str, Any], env: dict[str, str] | None = None) -> AzureAdSettings:
    return settings_from_mapping(doc, env=env or {})


def refused(doc: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(doc, env)
    return info.value


def vault_of(cloud: clouds.Cloud, name: str = "contoso-kv") -> str:
    return f"https://{name}{cloud.vault_suffix}"


# --- the cloud table ---------------------------------------------------------------------------


def test_the_table_covers_the_documented_clouds() -> None:
    assert [cloud.name for cloud in CLOUDS] == [
        "AzurePublicCloud",
        "AzureUSGovernment",
        "AzureChinaCloud",
    ]
    assert [cloud.authority_hosts[0] for cloud in CLOUDS] == [
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
    ]
    assert [cloud.vault_suffix for cloud in CLOUDS] == [
        ".vault.azure.net",
        ".vault.usgovcloudapi.net",
        ".vault.azure.cn",
    ]
    hosts = [host for cloud in CLOUDS for host in cloud.authority_hosts]
    assert len(hosts) == len(set(hosts))


@pytest.mark.parametrize(
    ("cloud", "host"), [(cloud, host) for cloud in CLOUDS for host in cloud.authority_hosts]
)
def test_every_cloud_pairs_with_its_vault_suffix(cloud: clouds.Cloud, host: str) -> None:
    settings = load(document(vault_of(cloud), Instance=f"https://{host}/"))
    assert settings.cloud == cloud.name
    assert settings.credentials[0].key_vault_url == vault_of(cloud)
    # The same through Authority, in any case, with a trailing dot on either host.
    authority = f"https://{host.upper()}./{TENANT}/v2.0"
    settings = load(document(vault_of(cloud).upper() + ".", TenantId=None, Authority=authority))
    assert settings.cloud == cloud.name


def test_the_default_instance_is_the_public_cloud() -> None:
    settings = load(document())
    assert settings.cloud == "AzurePublicCloud"
    assert (settings.allowed_authority_hosts, settings.allowed_vault_hosts) == ((), ())


@pytest.mark.parametrize(
    ("authority", "vault"),
    [(a, v) for a, v in itertools.product(CLOUDS, CLOUDS) if a is not v],
    ids=lambda cloud: cloud.name,
)
def test_a_vault_of_another_cloud_is_refused_naming_both(
    authority: clouds.Cloud, vault: clouds.Cloud
) -> None:
    instance = f"https://{authority.authority_hosts[0]}/"
    error = refused(document(vault_of(vault), Instance=instance))
    assert error.path == VAULT_PATH
    assert vault_of(vault) in error.found and vault.label in error.found
    assert f"*{authority.vault_suffix}" in error.expected and authority.label in error.expected
    assert f"AzureAd:Instance {instance}" in error.expected
    assert ALLOWED_VAULTS in error.expected


def test_the_message_names_authority_when_it_set_the_instance() -> None:
    error = refused(
        document(
            vault_of(US_GOV), TenantId=None, Authority=f"https://login.microsoftonline.com/{TENANT}"
        )
    )
    assert "AzureAd:Authority https://login.microsoftonline.com/" in error.expected


def test_the_message_says_when_the_instance_is_the_default() -> None:
    error = refused(document(vault_of(CHINA)))
    assert str(error) == (
        f"{VAULT_PATH}: found 'https://contoso-kv.vault.azure.cn', a Key Vault host of Azure "
        "China, operated by 21Vianet; expected a Key Vault host of the Azure public cloud "
        "(*.vault.azure.net) to match the default AzureAd:Instance "
        f"https://login.microsoftonline.com/; or a host listed in {ALLOWED_VAULTS}"
    )


@pytest.mark.parametrize(
    "vault",
    [
        "https://vault.azure.net",  # the suffix without a vault name
        "https://a.b.vault.azure.net",  # a vault is one DNS label
        "https://contosovault.azure.net",
        "https://contoso-kv.vault.azure.net.evil.example",
        "https://contoso-kv.vaultcore.azure.net",
        "https://contoso-kv.example.com",
        "https://10.1.2.3",
    ],
)
def test_hosts_that_only_look_like_a_vault_are_refused(vault: str) -> None:
    error = refused(document(vault))
    assert error.path == VAULT_PATH and vault in error.found


@pytest.mark.parametrize("cloud", CLOUDS, ids=lambda cloud: cloud.name)
def test_managed_hsm_is_refused_with_the_reason(cloud: clouds.Cloud) -> None:
    for suffix in cloud.managed_hsm_suffixes:
        hsm = f"https://contoso-hsm{suffix}"
        error = refused(document(hsm, Instance=f"https://{cloud.authority_hosts[0]}/"))
        assert error.path == VAULT_PATH
        assert "Managed HSM host" in error.found and "stores keys only" in error.expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Instance", "https://login.microsoftonline.de/"),  # Azure Germany, closed in 2021
        ("Instance", "https://login.contoso.com/"),
        ("Instance", "https://login.microsoftonline.com.evil.example/"),
        ("Instance", "https://westus2.login.microsoft.com/"),  # regional: first-party apps only
        ("Authority", f"https://evil.example/{TENANT}/v2.0"),
    ],
)
def test_an_unknown_authority_is_refused(key: str, value: str) -> None:
    keys: dict[str, Any] = {key: value} if key == "Instance" else {key: value, "TenantId": None}
    error = refused(document(**keys))
    assert error.path == f"AzureAd:{key}"
    assert value in error.found
    assert "login.microsoftonline.us (Azure US Government)" in error.expected
    assert ALLOWED_AUTHORITIES in error.expected


def test_a_skipped_entry_is_not_checked() -> None:
    # A skipped entry's other keys are never validated (README, "Configuration reference"); its
    # vault is never contacted either, so a leftover from another cloud may stay in the file.
    doc = document(vault_of(US_GOV), skip=True)
    doc["AzureAd"]["ClientSecret"] = "s3cret-value"
    assert load(doc).credentials[0].skip


def test_every_vault_entry_is_checked() -> None:
    doc = document()
    doc["AzureAd"]["ClientCertificates"] = [
        {"SourceType": "KeyVault", "KeyVaultUrl": vault_of(CHINA), "KeyVaultCertificateName": "b"}
    ]
    assert refused(doc).path == "AzureAd:ClientCertificates:0:KeyVaultUrl"


# --- allow-lists -------------------------------------------------------------------------------


def test_allowed_hosts_let_a_custom_cloud_in_case_insensitively() -> None:
    kvassert = {
        "AllowedAuthorityHosts": ["LOGIN.Contoso.COM"],
        "AllowedVaultHosts": ["KV.Contoso.com", "kv.contoso.com."],
    }
    settings = load(
        document("https://kv.CONTOSO.com", Instance="https://login.contoso.com/", kvassert=kvassert)
    )
    assert settings.cloud == "Custom"
    assert settings.allowed_authority_hosts == ("login.contoso.com",)
    assert settings.allowed_vault_hosts == ("kv.contoso.com",)  # folded and de-duplicated
    assert settings.token_endpoint() == f"https://login.contoso.com/{TENANT}/oauth2/v2.0/token"


def test_a_custom_authority_needs_its_vaults_allowed_by_name() -> None:
    kvassert = {"AllowedAuthorityHosts": ["login.contoso.com"]}
    error = refused(document(Instance="https://login.contoso.com/", kvassert=kvassert))
    assert error.path == VAULT_PATH
    assert "custom authority" in error.expected and ALLOWED_VAULTS in error.expected
    # A Path (or secret) credential needs no vault at all.
    assert load(document(None, Instance="https://login.contoso.com/", kvassert=kvassert))


def test_an_allowed_vault_may_come_from_another_cloud() -> None:
    kvassert = {"AllowedVaultHosts": ["contoso-kv.vault.usgovcloudapi.net"]}
    settings = load(document(vault_of(US_GOV), kvassert=kvassert))
    assert settings.cloud == "AzurePublicCloud"


def test_allow_lists_are_exact_names_not_suffixes() -> None:
    kvassert = {
        "AllowedAuthorityHosts": ["contoso.com"],
        "AllowedVaultHosts": ["vault.usgovcloudapi.net"],
    }
    assert refused(document(Instance="https://login.contoso.com/", kvassert=kvassert)).path == (
        "AzureAd:Instance"
    )
    assert refused(document(vault_of(US_GOV), kvassert=kvassert)).path == VAULT_PATH


def test_allow_lists_come_from_env_vars_too() -> None:
    env = {
        "AzureAd__Kvassert__AllowedAuthorityHosts__0": "login.contoso.com",
        "AzureAd__Kvassert__AllowedVaultHosts__0": "kv.contoso.com",
        "AzureAd__Kvassert__AllowedVaultHosts__1": "",  # empty means unset
    }
    doc = document("https://kv.contoso.com", Instance="https://login.contoso.com/")
    settings = load(doc, env)
    assert settings.allowed_vault_hosts == ("kv.contoso.com",)
    assert "AzureAd:Kvassert:AllowedVaultHosts" not in " ".join(settings.unknown_keys)


@pytest.mark.parametrize(
    ("value", "path", "found"),
    [
        ("login.contoso.com", ALLOWED_AUTHORITIES, "the single value 'login.contoso.com'"),
        ("a,b", ALLOWED_AUTHORITIES, "the single value 'a,b'"),
        (["*.contoso.com"], f"{ALLOWED_AUTHORITIES}:0", "'*.contoso.com'"),
        (["https://login.contoso.com"], f"{ALLOWED_AUTHORITIES}:0", "'https://login.contoso.com'"),
        (["login.contoso.com:443"], f"{ALLOWED_AUTHORITIES}:0", "'login.contoso.com:443'"),
        (["ok.contoso.com", "a b"], f"{ALLOWED_AUTHORITIES}:1", "'a b'"),
        ([{"Host": "x"}], f"{ALLOWED_AUTHORITIES}:0", "an object with keys Host"),
        ({"first": "x"}, f"{ALLOWED_AUTHORITIES}:first", "the key 'first'"),
    ],
)
def test_bad_allow_list_entries_are_config_errors(value: object, path: str, found: str) -> None:
    error = refused(document(kvassert={"AllowedAuthorityHosts": value}))
    assert (error.path, error.found) == (path, found)


# --- loopback (the emulator) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "vault"),
    [
        ("http://127.0.0.1:8443/", "http://127.0.0.1:8444"),
        ("https://localhost:8443/", "https://127.9.9.9:1"),
        ("http://[::1]:8443/", "https://localhost"),
    ],
)
def test_loopback_authority_with_loopback_vault_is_fine(instance: str, vault: str) -> None:
    settings = load(document(vault, Instance=instance))
    assert settings.cloud == "Loopback"


def test_loopback_authority_refuses_a_real_vault() -> None:
    error = refused(document(Instance="http://127.0.0.1:8443/"))
    assert error.path == VAULT_PATH
    assert "a Key Vault host of the Azure public cloud" in error.found
    assert "a loopback vault" in error.expected and ALLOWED_VAULTS in error.expected


def test_real_authority_refuses_a_loopback_vault() -> None:
    error = refused(document("https://127.0.0.1:8444"))
    assert error.path == VAULT_PATH
    assert "a loopback host" in error.found
    assert "pairs with a loopback authority" in error.expected


def test_mixing_loopback_and_a_real_cloud_is_possible_by_name() -> None:
    to_real = {"AllowedVaultHosts": ["contoso-kv.vault.azure.net"]}
    assert load(document(Instance="http://127.0.0.1:8443/", kvassert=to_real)).cloud == "Loopback"
    to_loopback = {"AllowedVaultHosts": ["127.0.0.1"]}
    assert load(document("https://127.0.0.1:8444", kvassert=to_loopback))


def test_loopback_is_one_shared_rule() -> None:
    from kvassert import transport

    assert transport.is_loopback_host is clouds.is_loopback_host


# --- the property: a random host is refused, or it is known, loopback or allowed ---------------

labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
known_parts = st.sampled_from(
    [
        *(host for cloud in CLOUDS for host in cloud.authority_hosts),
        *(cloud.vault_suffix.lstrip(".") for cloud in CLOUDS),
        *(suffix.lstrip(".") for cloud in CLOUDS for suffix in cloud.managed_hsm_suffixes),
        "localhost", "127.0.0.1", "example.com", "microsoftonline.com", "azure.net",
    ]
)  # fmt: skip
hosts = st.one_of(
    known_parts,
    st.tuples(labels, known_parts).map(".".join),
    st.tuples(known_parts, labels).map(".".join),
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
).map(lambda host: host.upper() if len(host) % 3 == 0 else host)


def fold(host: str) -> str:
    return host.strip("[]").lower().rstrip(".")


def is_vault_of(host: str, cloud: str) -> bool:
    for candidate in CLOUDS:
        if candidate.name == cloud and host.endswith(candidate.vault_suffix):
            return "." not in host[: -len(candidate.vault_suffix)]
    return False


@fuzz_settings(0.5)
@given(
    authority=hosts,
    vault=hosts,
    allowed_authorities=st.lists(hosts, max_size=2),
    allowed_vaults=st.lists(hosts, max_size=2),
    scheme=st.sampled_from(["https", "http"]),
)
def test_any_host_is_refused_or_known_loopback_or_allowed(
    authority: str,
    vault: str,
    allowed_authorities: list[str],
    allowed_vaults: list[str],
    scheme: str,
) -> None:
    kvassert = {"AllowedAuthorityHosts": allowed_authorities, "AllowedVaultHosts": allowed_vaults}
    doc = document(f"{scheme}://{vault}", Instance=f"{scheme}://{authority}/", kvassert=kvassert)
    try:
        settings = load(doc)
    except ConfigError as error:
        assert error.path.startswith("AzureAd:")
        return
    authority_host, vault_host = fold(authority), fold(vault)
    authority_ok = {fold(host) for host in allowed_authorities}
    vault_ok = {fold(host) for host in allowed_vaults}
    loopback = clouds.is_loopback_host
    known = {host: cloud.name for cloud in CLOUDS for host in cloud.authority_hosts}
    assert authority_host in known or loopback(authority_host) or authority_host in authority_ok
    assert settings.cloud == known.get(
        authority_host, "Loopback" if loopback(authority_host) else "Custom"
    )
    assert (
        vault_host in vault_ok
        or (settings.cloud == "Loopback" and loopback(vault_host))
        or is_vault_of(vault_host, settings.cloud)
    )
    if scheme == "http":  # plain http never reaches a non-loopback host either
        assert loopback(authority_host) and loopback(vault_host)


# --- nothing is signed or sent when pinning fails ------------------------------------------------


def test_a_refused_configuration_signs_and_sends_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Path certificate would sign locally and post to the (loopback) token endpoint; the
    KeyVault entry before it names a real vault, which a loopback authority does not allow. The
    load fails, so no signature is made and the endpoint never hears from us."""
    signs: list[bytes] = []
    real_sign = LocalCertificateSigner.sign

    def counting_sign(self: LocalCertificateSigner, signing_input: bytes) -> bytes:
        signs.append(signing_input)
        return real_sign(self, signing_input)

    monkeypatch.setattr(LocalCertificateSigner, "sign", counting_sign)
    sent: list[str] = []
    real_send = requests.Session.send

    def counting_send(self: requests.Session, request: Any, **kwargs: Any) -> Any:
        sent.append(str(request.url))
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", counting_send)
    pem = tmp_path / "app.pem"
    pem.write_bytes(make_cert(cn="pinning", days=30).pem())
    with scripted_server() as (base, script):
        credentials: list[dict[str, Any]] = [
            {
                "SourceType": "KeyVault",
                "KeyVaultUrl": "https://contoso-kv.vault.azure.net",
                "KeyVaultCertificateName": "app",
            },
            {"SourceType": "Path", "CertificateDiskPath": str(pem)},
        ]
        config = tmp_path / "appsettings.json"
        section = {
            "Instance": f"{base}/",
            "TenantId": TENANT,
            "ClientId": CLIENT,
            "ClientCredentials": credentials,
        }
        config.write_text(json.dumps({"AzureAd": section}))
        with pytest.raises(ConfigError) as info:
            from_appsettings(config, env={})
        assert info.value.path == VAULT_PATH
        assert (signs, sent, script.hits) == ([], [], 0)

        # The control: the same file with the KeyVault entry skipped (skipped entries are not
        # checked) loads, signs once with the Path certificate and posts once.
        credentials[0]["Skip"] = True
        config.write_text(json.dumps({"AzureAd": section}))
        body = {"token_type": "Bearer", "expires_in": 3600, "access_token": "tok"}
        script.answers = [(200, {}, json.dumps(body).encode())]
        policy = RetryPolicy(attempts=1, deadline=5.0)
        with from_appsettings(config, env={}, retry_policy=policy) as credential:
            assert credential.get_token("api://x/.default").token == "tok"
        assert (
            len(signs) == 1 and script.hits == 1 and sent == [f"{base}/{TENANT}/oauth2/v2.0/token"]
        )
