"""Authority pinning: the hosts a credential may be sent to, per Azure cloud.

A client assertion (or a client secret) goes to ``{Instance}{tenant}/oauth2/...``, and the
digests to sign go to ``KeyVaultUrl``. A typo or a hostile ``AzureAd__Instance`` app setting
must not hand either to a stranger, so ``load_settings`` checks both hosts here, before anything
is read from a vault or signed:

* the authority host is a known Entra host of one cloud (``CLOUDS``), or loopback (the
  emulator), or listed in ``AzureAd:Kvassert:AllowedAuthorityHosts``;
* each ``KeyVaultUrl`` is a vault of that same cloud (``{name}.vault.azure.net`` for the public
  cloud...), or loopback when the authority is loopback too, or listed in
  ``AzureAd:Kvassert:AllowedVaultHosts``.

Decisions (README.md, "Configuration reference", has the user-facing version):

* Mixing loopback with a real cloud needs the allow-list. A loopback vault beside a real
  authority would receive a real Azure token (``DefaultAzureCredential``: managed identity,
  developer sign-in...), and the Key Vault SDK's challenge-resource check is switched off for
  loopback vaults (``vault_signer.client_options``), so a local listener could ask for a token
  to any resource. A real vault beside a loopback
  authority would sign assertions for a local endpoint: a leftover emulator setting in
  production, or production vault settings in a test. Both are almost always mistakes.
* A custom authority (allowed by name) has no known vault suffix, so its vaults must be
  allowed by name as well.
* Allow-list entries are exact host names, compared without case: no wildcards, no ports.
* Managed HSM hosts are recognised only to explain why they cannot work: an HSM pool stores
  keys only, while a ``KeyVault`` credential reads the certificate (``certificates/get``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from kvassert._config_layers import Section, shown
from kvassert.errors import ConfigError

LOOPBACK = "Loopback"
CUSTOM = "Custom"
ALLOWED_AUTHORITY_HOSTS = "AllowedAuthorityHosts"
ALLOWED_VAULT_HOSTS = "AllowedVaultHosts"

# RFC 1123 host names, lower case (urlsplit lower-cases ``hostname``; allow-lists are folded).
_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.?")
# A vault is one DNS label in front of the cloud's suffix: https://{vault-name}.vault.azure.net.
_VAULT_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


@dataclass(frozen=True, slots=True)
class Cloud:
    """One Azure cloud: its Entra hosts (the first is the one to configure) and vault suffix."""

    name: str
    label: str
    authority_hosts: tuple[str, ...]
    vault_suffix: str
    managed_hsm_suffixes: tuple[str, ...]


# Sources, checked for each value:
# - Entra hosts per cloud: "Microsoft Entra authentication & national clouds",
#   https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud (the token
#   endpoints login.microsoftonline.com, login.microsoftonline.us and
#   login.partner.microsoftonline.cn). The other names are the aliases of the same cloud in
#   MSAL.NET's built-in instance-discovery metadata (Microsoft.Identity.Web's token layer):
#   AzureAD/microsoft-authentication-library-for-dotnet,
#   src/client/Microsoft.Identity.Client/Instance/Discovery/KnownMetadataProvider.cs, which lists
#   {login.microsoftonline.com, login.windows.net, login.microsoft.com, sts.windows.net},
#   {login.microsoftonline.us, login.usgovcloudapi.net} and
#   {login.partner.microsoftonline.cn, login.chinacloudapi.cn}. MSAL Python's
#   WELL_KNOWN_AUTHORITY_HOSTS (msal/authority.py) has the same names. An app configured with an
#   alias works under Microsoft.Identity.Web, so kvassert accepts the aliases too: every one is
#   an Entra host of that cloud, which is all pinning has to guarantee.
# - Vault suffixes: "About keys" (https://learn.microsoft.com/azure/key-vault/keys/about-keys:
#   https://{vault-name}.vault.azure.net, https://{hsm-name}.managedhsm.azure.net, and "vaults
#   also allow you to store ... certificates", which Managed HSM does not); its 21Vianet edition
#   (https://docs.azure.cn/en-us/key-vault/keys/about-keys: .vault.azure.cn,
#   .managedhsm.chinacloudapi.cn); "Compare Azure Government and global Azure"
#   (https://learn.microsoft.com/azure/azure-government/compare-azure-government-global-azure:
#   *.vault.usgovcloudapi.net); and the Azure CLI's cloud table (Azure/azure-cli,
#   src/azure-cli-core/azure/cli/core/cloud.py: keyvault_dns and mhsm_dns, which gives
#   .managedhsm.usgovcloudapi.net and, for China, .managedhsm.azure.cn where the 21Vianet page
#   says .managedhsm.chinacloudapi.cn; both are listed, since they only shape an error message).
# Left out on purpose: Azure Germany (login.microsoftonline.de, closed on 29 October 2021 per the
# national-clouds page), and the newer sovereign clouds MSAL knows (login.sovcloud-identity.fr,
# .de, .sg) and login-us.microsoftonline.com, whose vault suffixes no Microsoft page we found
# states. Those work through the two allow-lists.
CLOUDS: tuple[Cloud, ...] = (
    Cloud(
        "AzurePublicCloud",
        "the Azure public cloud",
        (
            "login.microsoftonline.com",
            "login.microsoft.com",
            "login.windows.net",
            "sts.windows.net",
        ),
        ".vault.azure.net",
        (".managedhsm.azure.net",),
    ),
    Cloud(
        "AzureUSGovernment",
        "Azure US Government",
        ("login.microsoftonline.us", "login.usgovcloudapi.net"),
        ".vault.usgovcloudapi.net",
        (".managedhsm.usgovcloudapi.net",),
    ),
    Cloud(
        "AzureChinaCloud",
        "Azure China, operated by 21Vianet",
        ("login.partner.microsoftonline.cn", "login.chinacloudapi.cn"),
        ".vault.azure.cn",
        (".managedhsm.chinacloudapi.cn", ".managedhsm.azure.cn"),
    ),
)
CLOUD_NAMES = (*(cloud.name for cloud in CLOUDS), LOOPBACK, CUSTOM)
_BY_AUTHORITY_HOST = {host: cloud for cloud in CLOUDS for host in cloud.authority_hosts}
_BY_NAME = {cloud.name: cloud for cloud in CLOUDS}


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 and ``localhost``: the only hosts emulator shortcuts are allowed for."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_host(host: str) -> bool:
    """A syntactically valid host: an RFC 1123 name (lower case) or an IP address."""
    if _HOST.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _folded(host: str) -> str:
    # "login.microsoftonline.com." is the same absolute DNS name as without the dot.
    return host.strip("[]").lower().rstrip(".")


def _host_of(url: str) -> str:
    return _folded(urlsplit(url).hostname or "")


def cloud_of(instance: str) -> str:
    """The cloud an instance URL belongs to: a ``CLOUDS`` name, ``Loopback`` or ``Custom``."""
    host = _host_of(instance)
    known = _BY_AUTHORITY_HOST.get(host)
    if known is not None:
        return known.name
    return LOOPBACK if is_loopback_host(host) else CUSTOM


def check_authority(
    instance: str, path: str, *, written: str, options_path: str, allowed_hosts: tuple[str, ...]
) -> str:
    """The cloud of ``instance``, which came from ``written``, the value at ``path`` (Instance
    or Authority).

    Raises ConfigError unless its host is a known Entra host, loopback, or in
    ``allowed_hosts`` (``{options_path}:AllowedAuthorityHosts``).
    """
    cloud = cloud_of(instance)
    if cloud != CUSTOM or _host_of(instance) in allowed_hosts:
        return cloud
    known = ", ".join(f"{c.authority_hosts[0]} ({c.label})" for c in CLOUDS)
    raise ConfigError(
        path,
        f"{shown(written)}, which is not a Microsoft Entra host",
        f"an Entra sign-in host: {known}; a loopback host for the emulator; or a host listed "
        f"in {options_path}:{ALLOWED_AUTHORITY_HOSTS}",
    )


def check_vault(
    vault_url: str,
    path: str,
    *,
    instance: str,
    instance_path: str,
    options_path: str,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Raise ConfigError unless ``vault_url`` (at ``path``) belongs with ``instance``'s cloud.

    ``instance_path`` names where the instance came from, for the message.
    """
    host = _host_of(vault_url)
    if host in allowed_hosts:
        return
    cloud_name = cloud_of(instance)
    allow = f"or a host listed in {options_path}:{ALLOWED_VAULT_HOSTS}"
    to_match = f"to match {instance_path} {instance}"
    vault_cloud, hsm = _vault_cloud(host)
    if cloud_name == LOOPBACK:
        if is_loopback_host(host):
            return
        found = f"{shown(vault_url)}, {_vault_kind(host, vault_cloud, hsm)}"
        expected = f"a loopback vault (the emulator) {to_match}, a loopback authority; {allow}"
        raise ConfigError(path, found, expected)
    cloud = _BY_NAME.get(cloud_name)
    if cloud is None:  # a custom authority: nothing is known about its vaults
        raise ConfigError(
            path,
            shown(vault_url),
            f"a host listed in {options_path}:{ALLOWED_VAULT_HOSTS}: {instance_path} {instance} "
            f"is a custom authority (allowed by {ALLOWED_AUTHORITY_HOSTS}), so its vaults must "
            "be allowed by name too",
        )
    if vault_cloud is cloud and not hsm:
        return
    wanted = f"a Key Vault host of {cloud.label} (*{cloud.vault_suffix}) {to_match}"
    if hsm:
        wanted += (
            ": Managed HSM stores keys only, and a KeyVault credential also reads the certificate"
        )
    elif is_loopback_host(host):
        wanted += "; a loopback vault (the emulator) pairs with a loopback authority"
    raise ConfigError(
        path, f"{shown(vault_url)}, {_vault_kind(host, vault_cloud, hsm)}", f"{wanted}; {allow}"
    )


def _vault_cloud(host: str) -> tuple[Cloud | None, bool]:
    """The cloud whose vault (False) or Managed HSM (True) suffix ``host`` has, if any."""
    for cloud in CLOUDS:
        for suffix, hsm in (
            (cloud.vault_suffix, False),
            *((hsm_suffix, True) for hsm_suffix in cloud.managed_hsm_suffixes),
        ):
            if host.endswith(suffix) and _VAULT_LABEL.fullmatch(host[: -len(suffix)]):
                return cloud, hsm
    return None, False


def _vault_kind(host: str, cloud: Cloud | None, hsm: bool) -> str:
    if is_loopback_host(host):
        return "a loopback host (an emulator)"
    if cloud is None:
        return "which is not a Key Vault host of any known cloud"
    return f"a {'Managed HSM' if hsm else 'Key Vault'} host of {cloud.label}"


def allowed_hosts(options: Section, key: str) -> tuple[str, ...]:
    """``{options}:{key}``: an array of exact host names, folded to lower case.

    Raises ConfigError for a single value instead of an array, or an entry that is not a bare
    host name (a scheme, port, path or wildcard).
    """
    example = f"{options.path}:{key}:0"
    expected = (
        f"an array of host names ({example}, {example[:-1]}1, ...; as an env var "
        f"{example.replace(':', '__')})"
    )
    node = options.node.child(key)
    if node is not None and node.value and not node.children:
        # Host names are not secrets, so show the value: it is likely "a,b" in one env var.
        raise ConfigError(options.at(key), f"the single value {shown(node.value)}", expected)
    section = options.section(key, expected)
    if section is None:
        return ()
    hosts: list[str] = []
    for entry in section.entries():
        if entry.node.children:
            names = ", ".join(sorted(child.key for child in entry.node.children.values())[:5])
            raise ConfigError(entry.path, f"an object with keys {names}", "a host name")
        text = (entry.node.value or "").strip()
        if not text:  # empty means unset, as everywhere else in the configuration
            continue
        host = _folded(text)
        if not is_host(host):
            raise ConfigError(
                entry.path,
                shown(text),
                "an exact host name such as login.contoso.com (no scheme, port, path or wildcard)",
            )
        hosts.append(host)
    return tuple(dict.fromkeys(hosts))
