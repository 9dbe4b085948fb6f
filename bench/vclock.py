"""A virtual wall clock for simulating hours in seconds, read by every library in this process.

``time.time`` (and ``time.time_ns``) become "real time + offset" while ``installed()``; the
offset only moves forward (``advance``). Everything that reads the wall clock through the
``time`` module sees it: msal, azure-identity, azure-core, kvassert and the in-process emulator
(its ``Clock`` reads ``time.time()``), so tokens, assertions and their checks stay consistent.

References bound before the patch are redirected too, as freezegun does: module attributes that
are the original function (``from time import time``) and function defaults that captured it
(``def __init__(self, clock=time.time)``). ``time.monotonic``/``perf_counter`` and the C-level
waits (``Condition.wait``) keep real time, so a thread sleeping until a wall-clock moment wakes
in real time, not virtual time (see the report for what that means for background refresh).

The emulator's HTTP server (cheroot) keeps real time: its idle keep-alive housekeeping would
otherwise see every jump as minutes of idleness and close connections under the clients.
"""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Libraries whose early-bound references to time.time are redirected.
PATCHED_PREFIXES = ("kvassert", "msal", "azure", "requests", "urllib3", "jwt", "redis")
# Modules that keep the real clock (they get a copy of the time module).
EXEMPT_MODULES = ("cheroot.connections", "cheroot.server")


class VirtualClock:
    """Wall time = real wall time + ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._real_time: Callable[[], float] = time.time
        self._real_time_ns: Callable[[], int] = time.time_ns

    def time(self) -> float:
        return self._real_time() + self.offset

    def time_ns(self) -> int:
        return self._real_time_ns() + int(self.offset * 1e9)

    def real_time(self) -> float:
        return self._real_time()

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the virtual clock only moves forward")
        self.offset += seconds

    @contextmanager
    def installed(self) -> Iterator[VirtualClock]:
        """Patch the process's wall clock for the duration; everything is restored after."""
        real_time, real_time_ns = self._real_time, self._real_time_ns
        undo: list[Callable[[], None]] = []
        real_module = types.ModuleType("time")
        real_module.__dict__.update(time.__dict__)
        try:
            for name in EXEMPT_MODULES:
                module = sys.modules.get(name)
                if module is not None and getattr(module, "time", None) is time:
                    module.time = real_module  # type: ignore[attr-defined]
                    undo.append(_setter(module, "time", time))
            time.time = self.time
            undo.append(_setter(time, "time", real_time))
            time.time_ns = self.time_ns
            undo.append(_setter(time, "time_ns", real_time_ns))
            replacements: dict[int, Any] = {
                id(real_time): self.time,
                id(real_time_ns): self.time_ns,
            }
            for name, module in list(sys.modules.items()):
                if module is None or not name.startswith(PATCHED_PREFIXES):
                    continue
                undo.extend(_redirect_module(module, replacements))
            yield self
        finally:
            for step in reversed(undo):
                step()


def _setter(target: Any, name: str, value: Any) -> Callable[[], None]:
    def restore() -> None:
        setattr(target, name, value)

    return restore


def _redirect_module(
    module: types.ModuleType, replacements: dict[int, Any]
) -> list[Callable[[], None]]:
    undo: list[Callable[[], None]] = []
    namespace = getattr(module, "__dict__", {})
    for attr, value in list(namespace.items()):
        if id(value) in replacements:
            setattr(module, attr, replacements[id(value)])
            undo.append(_setter(module, attr, value))
        elif isinstance(value, types.FunctionType):
            undo.extend(_redirect_defaults(value, replacements))
        elif isinstance(value, type) and value.__module__ == module.__name__:
            for member in list(vars(value).values()):
                function = member
                if isinstance(member, (staticmethod, classmethod)):
                    function = member.__func__
                if isinstance(function, types.FunctionType):
                    undo.extend(_redirect_defaults(function, replacements))
    return undo


def _redirect_defaults(
    function: types.FunctionType, replacements: dict[int, Any]
) -> list[Callable[[], None]]:
    undo: list[Callable[[], None]] = []
    defaults = function.__defaults__
    if defaults and any(id(d) in replacements for d in defaults):
        function.__defaults__ = tuple(replacements.get(id(d), d) for d in defaults)
        undo.append(_setter(function, "__defaults__", defaults))
    kwdefaults = function.__kwdefaults__
    if kwdefaults and any(id(d) in replacements for d in kwdefaults.values()):
        function.__kwdefaults__ = {k: replacements.get(id(v), v) for k, v in kwdefaults.items()}
        undo.append(_setter(function, "__kwdefaults__", kwdefaults))
    return undo
