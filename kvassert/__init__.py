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
    "AzureAdSettings": "kvassert.settings",
    "CredentialDescription": "kvassert.settings",
    "build_assertion": "kvassert.assertion",
    "Signer": "kvassert.signing",
    "LocalCertificateSigner": "kvassert.signing",
}

if TYPE_CHECKING:
    from kvassert.assertion import build_assertion
    from kvassert.settings import AzureAdSettings, CredentialDescription, load_settings
    from kvassert.signing import LocalCertificateSigner, Signer

__all__ = [
    "AllCredentialsFailedError",
    "AzureAdSettings",
    "ConfigError",
    "CredentialDescription",
    "CredentialUnavailableError",
    "KeyVaultError",
    "KvassertError",
    "LocalCertificateSigner",
    "Signer",
    "SigningError",
    "TokenRequestError",
    "__version__",
    "build_assertion",
    "load_settings",
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
