"""``appsettings.json`` + environment -> validated frozen settings, in Microsoft.Identity.Web terms.

The flow reads top-down: find and read the files, flatten them, overlay the env vars and rebuild
the section (``_config_layers``, the .NET configuration model); then validate that section into
``AzureAdSettings`` and its ``CredentialDescription`` entries (here). Every problem is a
``ConfigError`` naming the .NET path (``AzureAd:ClientCredentials:0:KeyVaultUrl``), what was
found and what is expected. Secret values never appear in those messages or in any ``repr``.

Choices where .NET leaves room (README.md, "Configuration reference", has the user-facing version):

* a value that is empty, or JSON ``null``, counts as not set;
* ``ClientCredentials`` entries come first, then the legacy ``ClientCertificates`` ones, then
  the top-level ``ClientSecret`` as one more credential;
* a skipped entry still needs a valid ``SourceType``; its other keys are kept as written;
* at least one entry must be usable (not skipped), so a settings object always names a way in.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import SplitResult, urlsplit

from kvassert import _config_layers as layers
from kvassert import clouds
from kvassert._config_layers import Section, choice, shown
from kvassert.errors import ConfigError

DEFAULT_INSTANCE = "https://login.microsoftonline.com/"
DEFAULT_TOKEN_EXCHANGE_URL = "api://AzureADTokenExchange"
SIGNING_ALGORITHMS = ("PS256", "RS256")
TOKEN_VERSIONS = ("v2", "v1")
LIFETIME_RANGE = (60, 3600)

# SourceType -> (required keys, optional keys), in Microsoft.Identity.Web spelling.
_SOURCE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "KeyVault": (("KeyVaultUrl", "KeyVaultCertificateName"), ("ManagedIdentityClientId",)),
    "Path": (("CertificateDiskPath",), ("CertificatePassword",)),
    "Base64Encoded": (("Base64EncodedValue",), ()),
    "ClientSecret": (("ClientSecret",), ()),
    "SignedAssertionFilePath": ((), ("SignedAssertionFileDiskPath",)),
    "SignedAssertionFromManagedIdentity": ((), ("ManagedIdentityClientId", "TokenExchangeUrl")),
    "StoreWithThumbprint": (("CertificateStorePath", "CertificateThumbprint"), ()),
    "StoreWithDistinguishedName": (("CertificateStorePath", "CertificateDistinguishedName"), ()),
}
SOURCE_TYPES = tuple(_SOURCE_KEYS)

_EXPECTED = {
    "KeyVaultUrl": "the vault URL, such as https://contoso-kv.vault.azure.net",
    "KeyVaultCertificateName": "the certificate's name in the vault (letters, digits, dashes)",
    "CertificateDiskPath": "the path of the certificate file",
    "Base64EncodedValue": "the certificate (PFX) encoded in base64",
    "ClientSecret": "the client secret",
    "CertificateStorePath": "a certificate store such as CurrentUser/My",
    "CertificateThumbprint": "the certificate's thumbprint",
    "CertificateDistinguishedName": "the certificate's subject, such as CN=MyApp",
}

_SECTION_KEYS = {
    "Instance", "TenantId", "ClientId", "Authority", "SendX5C", "ClientCredentials",
    "ClientCertificates", "ClientSecret", "Kvassert",
    # Read by Microsoft.Identity.Web for web apps and web APIs only; app-only token
    # acquisition never uses them, so they are not worth a warning.
    "Domain", "CallbackPath", "SignedOutCallbackPath", "SignUpSignInPolicyId",
    "ResetPasswordPolicyId", "EditProfilePolicyId", "Audience", "Audiences",
    "TokenDecryptionCredentials", "TokenDecryptionCertificates",
    "AllowWebApiToBeAuthorizedByACL", "WithSpaAuthCode", "EnablePiiLogging",
}  # fmt: skip
_ENTRY_KEYS = {
    "SourceType",
    "Skip",
    *(key for keys in _SOURCE_KEYS.values() for key in sum(keys, ())),
}
_KVASSERT_KEYS = {
    "SigningAlgorithm",
    "AssertionLifetimeSeconds",
    "TokenVersion",
    "BackgroundRefresh",
    "CertificateRefreshIntervalSeconds",
    "CertificateExpiryWarningDays",
    "SharedCache",
    clouds.ALLOWED_AUTHORITY_HOSTS,
    clouds.ALLOWED_VAULT_HOSTS,
}
_MULTI_TENANT_ALIASES = {"common", "organizations", "consumers"}

_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,255}")
_SNAKE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_VAULT_OBJECT_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")  # Key Vault's rule for object names


def _redacted_repr(obj: CredentialDescription | AzureAdSettings) -> str:
    """Fields declared ``repr=False`` hold secrets: say whether they are set, never what."""
    parts = []
    for spec in fields(obj):
        value = getattr(obj, spec.name)
        if not spec.repr:
            if value is not None:
                parts.append(f"{spec.name}=<redacted>")
        elif value is not None:
            parts.append(f"{spec.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class CredentialDescription:
    """One credential entry; ``path`` says where it came from (``AzureAd:ClientCredentials:0``)."""

    source_type: str
    path: str
    key_vault_url: str | None = None
    key_vault_certificate_name: str | None = None
    certificate_disk_path: str | None = None
    certificate_password: str | None = field(default=None, repr=False)
    base64_encoded_value: str | None = field(default=None, repr=False)
    client_secret: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    signed_assertion_file_disk_path: str | None = None
    token_exchange_url: str | None = None
    certificate_store_path: str | None = None
    certificate_thumbprint: str | None = None
    certificate_distinguished_name: str | None = None
    skip: bool = False

    def __repr__(self) -> str:
        return _redacted_repr(self)

    def describe(self) -> str:
        """A short label for logs and ``kvassert check``, without secrets."""
        kind = self.source_type
        if kind == "KeyVault":
            detail = f"{self.key_vault_url}/certificates/{self.key_vault_certificate_name}"
        elif kind == "Path":
            detail = f"{self.certificate_disk_path}"
        elif kind == "SignedAssertionFilePath":
            detail = f"{self.signed_assertion_file_disk_path}"
        elif kind == "SignedAssertionFromManagedIdentity":
            identity = self.managed_identity_client_id or "system-assigned"
            detail = f"managed identity {identity} -> {self.token_exchange_url}"
        elif kind == "StoreWithThumbprint":
            detail = f"{self.certificate_store_path} {self.certificate_thumbprint}"
        elif kind == "StoreWithDistinguishedName":
            detail = f"{self.certificate_store_path} {self.certificate_distinguished_name}"
        else:  # Base64Encoded, ClientSecret: the value is the secret, so name the place instead.
            detail = self.path
        return f"{kind} {detail}" + (" (skipped)" if self.skip else "")


@dataclass(frozen=True, slots=True)
class AzureAdSettings:
    """The validated ``AzureAd`` section; ``credentials`` are in the order they are tried."""

    client_id: str
    tenant_id: str
    instance: str = DEFAULT_INSTANCE
    send_x5c: bool = False
    credentials: tuple[CredentialDescription, ...] = ()
    client_secret: str | None = field(default=None, repr=False)
    signing_algorithm: str = "PS256"
    assertion_lifetime_seconds: int = 600
    token_version: str = "v2"
    allowed_authority_hosts: tuple[str, ...] = ()
    allowed_vault_hosts: tuple[str, ...] = ()
    background_refresh: bool = True
    certificate_refresh_interval_seconds: int = 3600
    certificate_expiry_warning_days: int = 30
    shared_cache_redis_url: str | None = field(default=None, repr=False)  # may hold a password
    shared_cache_encryption_key: str | None = field(default=None, repr=False)
    source_files: tuple[str, ...] = ()
    section: str = "AzureAd"
    unknown_keys: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return _redacted_repr(self)

    @property
    def authority(self) -> str:
        return f"{self.instance}{self.tenant_id}"

    @property
    def cloud(self) -> str:
        """``AzurePublicCloud``, ``AzureUSGovernment``, ``AzureChinaCloud``, ``Loopback`` (an
        emulator) or ``Custom`` (a host from ``Kvassert:AllowedAuthorityHosts``)."""
        return clouds.cloud_of(self.instance)

    def token_endpoint(self, version: str | None = None) -> str:
        """The v2 or v1 token URL, which is also the assertion's ``aud``; raises ConfigError."""
        chosen = choice(version or self.token_version, "token_version", TOKEN_VERSIONS)
        suffix = "oauth2/v2.0/token" if chosen == "v2" else "oauth2/token"
        return f"{self.authority}/{suffix}"


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    section: str = "AzureAd",
    environment: str | None = None,
    env: Mapping[str, str] | None = None,
) -> AzureAdSettings:
    """Load ``section`` from appsettings files and env vars the way .NET does.

    Layers, later wins: ``appsettings.json`` (``path``, a directory holding it, or the current
    directory), ``appsettings.{Environment}.json`` beside it, then env vars (``env``, default
    ``os.environ``). The environment name is ``environment``, else ``DOTNET_ENVIRONMENT``, else
    ``ASPNETCORE_ENVIRONMENT`` (.NET 7+ WebApplicationBuilder order). Raises ConfigError only.
    """
    env_map: Mapping[str, str] = os.environ if env is None else env
    name = environment or env_map.get("DOTNET_ENVIRONMENT") or env_map.get("ASPNETCORE_ENVIRONMENT")
    files = layers.settings_files(path, name or None)
    file_layers = [layers.read_json_file(file) for file in files]
    return _from_layers(file_layers, section, env_map, tuple(str(file) for file in files))


def settings_from_mapping(
    mapping: Mapping[str, object], *, section: str = "AzureAd", env: Mapping[str, str] | None = None
) -> AzureAdSettings:
    """Build settings from an already-parsed document (``{"AzureAd": {...}}``) plus env vars.

    Same rules as ``load_settings``; pass ``env={}`` to ignore the process environment.
    """
    env_map: Mapping[str, str] = os.environ if env is None else env
    if not isinstance(mapping, Mapping):
        raise ConfigError("(mapping)", f"a {type(mapping).__name__}", "a mapping")
    return _from_layers([layers.flatten(mapping, "(mapping)")], section, env_map, ())


def _from_layers(
    file_layers: list[layers.Layer],
    section: str,
    env: Mapping[str, str],
    source_files: tuple[str, ...],
) -> AzureAdSettings:
    if not isinstance(section, str) or not section:
        raise ConfigError("section", shown(section), "a section name such as 'AzureAd'")
    merged = layers.merge([*file_layers, layers.environment_layer(env, section)])
    node = layers.build_section(merged, section)
    if node is None:
        where = ", ".join(source_files) or "no appsettings file found"
        found = f"nothing ({where}; no {section}__* env var)"
        raise ConfigError(section, found, "a section with ClientId, TenantId and credentials")
    root = Section(node, section)
    root.require_object("an object with ClientId, TenantId and ClientCredentials")
    unknown = root.unknown(_SECTION_KEYS)
    client_id = root.text("ClientId")
    if client_id is None or client_id != client_id.strip():
        found = "nothing" if client_id is None else f"{shown(client_id)} (surrounding spaces)"
        raise ConfigError(root.at("ClientId"), found, "the app registration's client ID")
    instance, tenant_id = _instance_and_tenant(root)
    # Kvassert is kvassert's own subsection; .NET ignores it. Absent means all defaults.
    options = root.section("Kvassert", "an object with kvassert's options") or Section(
        layers.ConfigNode("Kvassert"), root.at("Kvassert")
    )
    unknown += options.unknown(_KVASSERT_KEYS)
    # Authority pinning (kvassert.clouds): checked here, so a host that must not receive a
    # credential fails the load, before any certificate is read or anything is signed.
    allowed_authorities = clouds.allowed_hosts(options, clouds.ALLOWED_AUTHORITY_HOSTS)
    allowed_vaults = clouds.allowed_hosts(options, clouds.ALLOWED_VAULT_HOSTS)
    instance_key = next((key for key in ("Instance", "Authority") if root.text(key)), None)
    instance_path = root.at(instance_key or "Instance")
    clouds.check_authority(
        instance,
        instance_path,
        written=root.text(instance_key or "Instance") or instance,
        options_path=options.path,
        allowed_hosts=allowed_authorities,
    )
    if instance_key is None:
        instance_path = f"the default {instance_path}"
    credentials = _credentials(root, env, unknown)
    for credential in credentials:
        if credential.key_vault_url is not None and not credential.skip:
            clouds.check_vault(
                credential.key_vault_url,
                f"{credential.path}:KeyVaultUrl",
                instance=instance,
                instance_path=instance_path,
                options_path=options.path,
                allowed_hosts=allowed_vaults,
            )
    client_secret = root.text("ClientSecret")
    if client_secret is not None:
        credentials.append(
            CredentialDescription(
                "ClientSecret", root.at("ClientSecret"), client_secret=client_secret
            )
        )
    if all(credential.skip for credential in credentials):
        raise ConfigError(
            root.at("ClientCredentials"),
            "only skipped entries" if credentials else "no entries",
            "at least one entry that is not skipped (or a ClientSecret)",
        )
    low, high = LIFETIME_RANGE
    redis_url, encryption_key = _shared_cache(options)
    return AzureAdSettings(
        client_id=client_id,
        tenant_id=tenant_id,
        instance=instance,
        send_x5c=root.flag("SendX5C", default=False),
        credentials=tuple(credentials),
        client_secret=client_secret,
        signing_algorithm=options.option("SigningAlgorithm", SIGNING_ALGORITHMS, "PS256"),
        assertion_lifetime_seconds=options.integer(
            "AssertionLifetimeSeconds", default=600, low=low, high=high
        ),
        token_version=options.option("TokenVersion", TOKEN_VERSIONS, "v2"),
        allowed_authority_hosts=allowed_authorities,
        allowed_vault_hosts=allowed_vaults,
        background_refresh=options.flag("BackgroundRefresh", default=True),
        certificate_refresh_interval_seconds=options.integer(
            "CertificateRefreshIntervalSeconds", default=3600, low=60, high=86400
        ),
        certificate_expiry_warning_days=options.integer(
            "CertificateExpiryWarningDays", default=30, low=0, high=365
        ),
        shared_cache_redis_url=redis_url,
        shared_cache_encryption_key=encryption_key,
        source_files=source_files,
        section=section,
        unknown_keys=tuple(unknown),
    )


def _shared_cache(options: Section) -> tuple[str | None, str | None]:
    """``Kvassert:SharedCache``: a Redis URL and the key that encrypts shared entries."""
    cache = options.section("SharedCache", "an object with RedisUrl and EncryptionKey")
    if cache is None:
        return None, None
    url, key = cache.text("RedisUrl"), cache.text("EncryptionKey")
    if url is None:
        raise ConfigError(
            cache.at("RedisUrl"), "nothing", "a Redis URL such as rediss://host:6380/0"
        )
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            cache.at("RedisUrl"), "a URL without a redis scheme", "redis://, rediss:// or unix://"
        )
    if key is None:
        raise ConfigError(
            cache.at("EncryptionKey"),
            "nothing",
            "base64 of 32 random bytes (openssl rand -base64 32): shared tokens are encrypted",
        )
    from kvassert.shared_cache import encryption_key_from

    encryption_key_from(key, path=cache.at("EncryptionKey"))
    return url, key


def _instance_and_tenant(root: Section) -> tuple[str, str]:
    instance_text, tenant_text = root.text("Instance"), root.text("TenantId")
    instance = instance_text and _instance_url(instance_text, root.at("Instance"))
    tenant = tenant_text and _tenant(tenant_text, root.at("TenantId"))
    authority_text = root.text("Authority")
    if authority_text is not None:
        path = root.at("Authority")
        derived = _split_authority(authority_text, path)
        for given, implied, key in zip(
            (instance, tenant), derived, ("Instance", "TenantId"), strict=True
        ):
            if given and given.lower() != implied.lower():
                raise ConfigError(
                    path,
                    f"{shown(authority_text)}, which implies {key} {implied!r} "
                    f"but {root.at(key)} is {given!r}",
                    "an Authority that agrees with Instance and TenantId, or only one form",
                )
        instance, tenant = instance or derived[0], tenant or derived[1]
    if not tenant:
        raise ConfigError(
            root.at("TenantId"),
            "nothing",
            "the tenant ID or domain, or an Authority such as "
            "https://login.microsoftonline.com/{tenant}/v2.0",
        )
    return instance or DEFAULT_INSTANCE, tenant


def _instance_url(text: str, path: str) -> str:
    parts = _url(text, path, "a cloud instance URL such as https://login.microsoftonline.com/")
    base = parts.path if parts.path.endswith("/") else parts.path + "/"
    return f"{parts.scheme.lower()}://{parts.netloc}{base}"


def _split_authority(text: str, path: str) -> tuple[str, str]:
    """``https://host/{tenant}`` or ``.../{tenant}/v2.0`` -> (instance, tenant)."""
    expected = "an authority such as https://login.microsoftonline.com/{tenant}/v2.0"
    parts = _url(text, path, expected)
    segments = [segment for segment in parts.path.split("/") if segment]
    if segments and segments[-1].lower() == "v2.0":
        segments.pop()
    if not segments:
        raise ConfigError(path, shown(text), expected)
    prefix = "".join(f"{segment}/" for segment in segments[:-1])
    return f"{parts.scheme.lower()}://{parts.netloc}/{prefix}", _tenant(segments[-1], path)


def _tenant(text: str, path: str) -> str:
    if not _TENANT.fullmatch(text):
        raise ConfigError(path, shown(text), "a tenant ID (GUID) or domain such as contoso.com")
    if text.lower() in _MULTI_TENANT_ALIASES:
        raise ConfigError(
            path,
            repr(text),
            "a specific tenant ID or domain: app-only tokens cannot be issued by "
            "'common', 'organizations' or 'consumers'",
        )
    return text


def _url(text: str, path: str, expected: str) -> SplitResult:
    """An https URL with a host; plain http only on loopback, where the emulator may listen."""
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        _ = parts.port  # parsed lazily: a bad port raises here
    except ValueError:
        raise ConfigError(path, shown(text), expected) from None
    if parts.username is not None or parts.password is not None:
        raise ConfigError(path, "a URL with user information (not shown)", expected)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not clouds.is_host(host):
        raise ConfigError(path, shown(text), expected)
    if scheme == "http" and not clouds.is_loopback_host(host):
        raise ConfigError(
            path,
            shown(text),
            "an https:// URL (http:// is accepted only for 127.0.0.0/8, localhost and [::1])",
        )
    if parts.query or parts.fragment:
        raise ConfigError(path, shown(text), f"{expected}, without ?query or #fragment")
    return parts


def _credentials(
    root: Section, env: Mapping[str, str], unknown: list[str]
) -> list[CredentialDescription]:
    result = []
    for list_name in ("ClientCredentials", "ClientCertificates"):
        entries = root.section(list_name, "an array of credential descriptions")
        for entry in entries.entries() if entries else []:
            result.append(_credential(entry, env, unknown))
    return result


def _credential(
    entry: Section, env: Mapping[str, str], unknown: list[str]
) -> CredentialDescription:
    entry.require_object("a credential description (an object with a SourceType)")
    unknown += entry.unknown(_ENTRY_KEYS)
    skip = entry.flag("Skip", default=False)
    source_text = entry.text("SourceType")
    if source_text is None:
        raise ConfigError(entry.at("SourceType"), "nothing", f"one of {', '.join(SOURCE_TYPES)}")
    source_type = choice(source_text, entry.at("SourceType"), SOURCE_TYPES)
    required, optional = _SOURCE_KEYS[source_type]
    values = {key: entry.text(key) for key in (*required, *optional)}
    if not skip:
        _check_credential(source_type, values, entry, env)
    # KeyVaultUrl -> key_vault_url: the dataclass fields are the snake_case key names.
    fields_by_key = {_SNAKE.sub("_", key).lower(): value for key, value in values.items()}
    return CredentialDescription(source_type, entry.path, skip=skip, **fields_by_key)


def _check_credential(
    source_type: str, values: dict[str, str | None], entry: Section, env: Mapping[str, str]
) -> None:
    """Validate, fill defaults into and normalise ``values`` for an entry that will be used."""
    for key in _SOURCE_KEYS[source_type][0]:
        if values[key] is None:
            raise ConfigError(entry.at(key), "nothing", _EXPECTED[key])
    url, name = values.get("KeyVaultUrl"), values.get("KeyVaultCertificateName")
    if url is not None:
        values["KeyVaultUrl"] = _vault_url(url, entry.at("KeyVaultUrl"))
    if name is not None and not _VAULT_OBJECT_NAME.fullmatch(name):
        path = entry.at("KeyVaultCertificateName")
        raise ConfigError(path, shown(name), _EXPECTED["KeyVaultCertificateName"])
    encoded = values.get("Base64EncodedValue")
    if encoded is not None and not _is_base64(encoded):
        raise ConfigError(
            entry.at("Base64EncodedValue"),
            f"a value of {len(encoded)} characters that is not valid base64",
            _EXPECTED["Base64EncodedValue"],
        )
    if source_type == "SignedAssertionFilePath" and values["SignedAssertionFileDiskPath"] is None:
        # Microsoft.Identity.Web falls back to the token file that AKS workload identity projects.
        fallback = env.get("AZURE_FEDERATED_TOKEN_FILE") or None
        if fallback is None:
            raise ConfigError(
                entry.at("SignedAssertionFileDiskPath"),
                "nothing, and AZURE_FEDERATED_TOKEN_FILE is not set either",
                "the path of a file holding a signed assertion (a federated token)",
            )
        values["SignedAssertionFileDiskPath"] = fallback
    if source_type == "SignedAssertionFromManagedIdentity" and values["TokenExchangeUrl"] is None:
        values["TokenExchangeUrl"] = DEFAULT_TOKEN_EXCHANGE_URL


def _vault_url(text: str, path: str) -> str:
    expected = _EXPECTED["KeyVaultUrl"]
    parts = _url(text, path, expected)
    if parts.path not in ("", "/"):
        hint = f"{expected}, with the certificate's name in KeyVaultCertificateName"
        raise ConfigError(path, shown(text), hint)
    return f"{parts.scheme.lower()}://{parts.netloc}"


def _is_base64(text: str) -> bool:
    # Convert.FromBase64String skips white space, so a value wrapped over lines is accepted.
    compact = "".join(text.split())
    if not compact or not compact.isascii():
        return False
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True
