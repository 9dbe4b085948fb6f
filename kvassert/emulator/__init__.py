"""A local emulator of Key Vault, Entra ID and the App Service managed identity endpoint.

``Emulator`` (in-process), ``EmulatorProcess`` (a child process), ``EmulatorInfo`` (the startup
line) and ``AdminClient`` are imported lazily, so importing the package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kvassert.emulator.admin_client import AdminClient
    from kvassert.emulator.server import Emulator, EmulatorInfo, EmulatorProcess

_LAZY = {
    "AdminClient": "kvassert.emulator.admin_client",
    "Emulator": "kvassert.emulator.server",
    "EmulatorInfo": "kvassert.emulator.server",
    "EmulatorProcess": "kvassert.emulator.server",
}

__all__ = ["AdminClient", "Emulator", "EmulatorInfo", "EmulatorProcess"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kvassert.emulator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
