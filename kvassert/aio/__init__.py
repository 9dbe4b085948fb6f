"""kvassert for asyncio: the async twin of ``kvassert.AzureAdCredential``.

``from kvassert.aio import from_appsettings`` then ``async with from_appsettings() as cred:``.
Needs the ``aio`` extra (aiohttp). Names are imported lazily, as in ``kvassert``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "AzureAdCredential": "kvassert.aio.credential",
    "from_appsettings": "kvassert.aio.credential",
    "KeyVaultSigner": "kvassert.aio.vault_signer",
}

if TYPE_CHECKING:
    from kvassert.aio.credential import AzureAdCredential, from_appsettings
    from kvassert.aio.vault_signer import KeyVaultSigner

__all__ = ["AzureAdCredential", "KeyVaultSigner", "from_appsettings"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvassert.aio' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
