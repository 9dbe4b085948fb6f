"""kvassert: Entra ID client assertions signed by Azure Key Vault.

The public API is re-exported here and imported lazily, so ``import kvassert`` stays cheap: the
Azure SDK and ``requests`` load only when a credential is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from kvassert.errors import (
    AllCredentialsFailedError,
    ConfigError,
    CredentialUnavailableError,
    KeyVaultError,
    KvassertError,
    SigningError,
    TokenRequestError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "load_settings": "kvassert.settings",
    "settings_from_mapping": "kvassert.settings",
    "AzureAdSettings": "kvassert.settings",
    "CredentialDescription": "kvassert.settings",
    "build_assertion": "kvassert.assertion",
    "CertificateChain": "kvassert.signing",
    "Signer": "kvassert.signing",
    "LocalCertificateSigner": "kvassert.signing",
    "KeyVaultSigner": "kvassert.vault_signer",
    "AccessToken": "kvassert.token_client",
    "RetryPolicy": "kvassert.transport",
    "AzureAdCredential": "kvassert.credential",
    "RedisTokenStore": "kvassert.shared_cache",
    "from_appsettings": "kvassert.credential",
    "BearerAuth": "kvassert.auth",
}

if TYPE_CHECKING:
    from kvassert.assertion import build_assertion
    from kvassert.auth import BearerAuth
    from kvassert.credential import AzureAdCredential, from_appsettings
    from kvassert.settings import (
        AzureAdSettings,
        CredentialDescription,
        load_settings,
        settings_from_mapping,
    )
    from kvassert.shared_cache import RedisTokenStore
    from kvassert.signing import CertificateChain, LocalCertificateSigner, Signer
    from kvassert.token_client import AccessToken
    from kvassert.transport import RetryPolicy
    from kvassert.vault_signer import KeyVaultSigner

__all__ = [
    "AccessToken",
    "AllCredentialsFailedError",
    "AzureAdCredential",
    "AzureAdSettings",
    "BearerAuth",
    "CertificateChain",
    "ConfigError",
    "CredentialDescription",
    "CredentialUnavailableError",
    "KeyVaultError",
    "KeyVaultSigner",
    "KvassertError",
    "LocalCertificateSigner",
    "RedisTokenStore",
    "RetryPolicy",
    "Signer",
    "SigningError",
    "TokenRequestError",
    "__version__",
    "build_assertion",
    "from_appsettings",
    "load_settings",
    "settings_from_mapping",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvassert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
