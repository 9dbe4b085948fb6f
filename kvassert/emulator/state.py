"""The emulator's whole state with no HTTP: clock, directory, vault, RBAC, faults, request log.

``EmulatorState`` is what every handler gets (``ctx.state``). ``reset()`` re-creates the
registrations, vault, role assignments, faults and log (moto's "reset re-runs __init__"), but
keeps what the startup line published and what outstanding tokens rely on: the tenant id, the
identity header, the system-assigned identity, and the token-signing keys. The server's TLS
material is not part of the state at all.

Persistence: ``save(dir)`` writes ``state.json`` atomically (temporary file, fsync, rename; mode
0600 because it holds private keys as PEM: this is a test emulator); ``load(dir)`` reads it.
``persist_to(dir)`` turns on autosave: the application calls ``changed()`` after each mutating
request and the state saves after a short debounce, and ``flush()`` saves at shutdown.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from kvassert.emulator.clock import Clock
from kvassert.emulator.directory import Directory
from kvassert.emulator.rbac import Rbac
from kvassert.emulator.vault import Vault

STATE_FILE = "state.json"
FORMAT_VERSION = 1
DEFAULT_ROLE = "Key Vault Administrator"
SAVE_DEBOUNCE_SECONDS = 0.2
LOG_LIMIT = 10_000


@dataclass(frozen=True)
class Fault:
    """An injected fault for one operation (``route``: ``sign``, ``token``...).

    ``status`` answers with the service's error shape (``retry_after`` adds the header);
    ``latency_ms`` delays (alone: pure latency); ``drop`` closes the connection without an
    answer; ``body`` sends that raw text (HTML, truncated JSON...). ``count`` is how many
    requests it still applies to; ``None`` means until cleared."""

    route: str
    status: int | None = None
    retry_after: int | None = None
    count: int | None = None
    latency_ms: int = 0
    drop: bool = False
    body: str | None = None
    content_type: str | None = None


class Faults:
    """Injected faults, applied in the order they were added. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self, route: str | None = None) -> int:
        with self._lock:
            kept = [f for f in self._faults if route is not None and f.route != route]
            removed = len(self._faults) - len(kept)
            self._faults = kept
        return removed

    def take(self, operation: str) -> Fault | None:
        """The fault for this request, if any; consumes one of its ``count``."""
        with self._lock:
            for index, fault in enumerate(self._faults):
                if fault.route != operation:
                    continue
                if fault.count is None:
                    return fault
                if fault.count <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = replace(fault, count=fault.count - 1)
                return fault
        return None

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)


@dataclass(frozen=True)
class LogEntry:
    """One request. ``status`` is None while the request is in flight (it is logged when it
    arrives, so a slow or abandoned request still counts) and 0 for a dropped connection."""

    time: float
    method: str
    path: str
    operation: str
    service: str
    principal: str = ""
    status: int | None = None
    fault: bool = False


class RequestLog:
    """The most recent requests (bounded), oldest first. Thread-safe."""

    def __init__(self, limit: int = LOG_LIMIT) -> None:
        self._lock = threading.Lock()
        self._entries: collections.deque[list[LogEntry]] = collections.deque(maxlen=limit)

    def begin(self, entry: LogEntry) -> list[LogEntry]:
        """Record an arriving request; pass the handle to ``finish``."""
        handle = [entry]
        with self._lock:
            self._entries.append(handle)
        return handle

    def finish(self, handle: list[LogEntry], *, status: int, principal: str, fault: bool) -> None:
        with self._lock:
            handle[0] = replace(handle[0], status=status, principal=principal, fault=fault)

    def append(self, entry: LogEntry) -> None:
        self.begin(entry)

    def entries(
        self, *, operation: str | None = None, principal: str | None = None
    ) -> list[LogEntry]:
        with self._lock:
            entries = [handle[0] for handle in self._entries]
        return [
            e
            for e in entries
            if (operation is None or e.operation == operation)
            and (principal is None or e.principal == principal)
        ]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self.entries())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class EmulatorState:
    """The aggregate a request handler works on (see the module docstring)."""

    def __init__(self, *, tenant_id: str | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.directory = Directory(self.clock, tenant_id=tenant_id)
        self.vault = Vault(self.clock)
        self.rbac = Rbac()
        self.faults = Faults()
        self.log = RequestLog()
        self._grant_default()
        self._save_lock = threading.Lock()  # the autosave timer and the dirty flag
        self._write_lock = threading.Lock()  # one save at a time
        self._timer: threading.Timer | None = None
        self._dirty = False
        self.state_dir: Path | None = None

    def _grant_default(self) -> None:
        # Zero setup, as with Azurite: the system-assigned identity administers the vault.
        # Least-privilege tests replace this assignment through the admin API.
        self.rbac.assign(self.directory.system_identity.principal_id, DEFAULT_ROLE)

    def reset(self) -> None:
        """Forget registrations, keys, certificates, role assignments, faults, the log and the
        clock offset; keep the tenant, identity header, system identity and signing keys."""
        published = self.directory.to_dict()
        kept = {k: published[k] for k in _KEPT_DIRECTORY_FIELDS}
        fresh = Directory(self.clock, tenant_id=published["tenant_id"]).to_dict()
        self.directory = Directory.from_dict({**fresh, **kept}, self.clock)
        self.vault = Vault(self.clock)
        self.rbac = Rbac()
        self._grant_default()
        self.faults.clear()
        self.log.clear()
        self.clock.set_offset(0.0)
        self.changed()

    def summary(self) -> dict[str, Any]:
        return {
            "tenant_id": self.directory.tenant_id,
            "applications": len(self.directory.applications()),
            "user_assigned_identities": len(self.directory.user_assigned_identities()),
            **self.vault.summary(),
            "role_assignments": len(self.rbac.assignments()),
            "faults": [asdict(f) for f in self.faults.list()],
            "log_entries": len(self.log),
            "clock_offset_seconds": self.clock.offset_seconds,
            "state_dir": str(self.state_dir) if self.state_dir else None,
        }

    # ---- persistence ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "directory": self.directory.to_dict(),
            "vault": self.vault.to_dict(),
            "rbac": self.rbac.to_dict(),
        }

    def save(self, directory: Path | str) -> Path:
        """Write ``state.json`` into ``directory`` atomically; returns its path."""
        target_dir = Path(directory)
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / STATE_FILE
        # Snapshot and write under one lock, so saves land in the order their snapshots were
        # taken: an autosave's older snapshot cannot overwrite the newer one flush() wrote.
        with self._write_lock:
            data = json.dumps(self.to_dict(), indent=1)
            fd, tmp = tempfile.mkstemp(prefix=".state-", suffix=".json", dir=target_dir)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o600)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target

    @classmethod
    def load(cls, directory: Path | str, *, clock: Clock | None = None) -> EmulatorState:
        """The state saved in ``directory``. Raises ``FileNotFoundError`` when there is none
        and ``ValueError`` for a file this version cannot read."""
        data = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            raise ValueError(f"{Path(directory) / STATE_FILE}: unknown state format")
        state = cls(clock=clock)
        state.directory = Directory.from_dict(data["directory"], state.clock)
        state.vault = Vault.from_dict(data["vault"], state.clock)
        state.rbac = Rbac()
        state.rbac.load(data["rbac"])
        return state

    @classmethod
    def open(cls, state_dir: Path | str | None, *, tenant_id: str | None = None) -> EmulatorState:
        """A fresh state, or with ``state_dir`` the one saved there (created on first use),
        with autosave into it."""
        if state_dir is None:
            return cls(tenant_id=tenant_id)
        path = Path(state_dir)
        state = cls.load(path) if (path / STATE_FILE).exists() else cls(tenant_id=tenant_id)
        state.persist_to(path)
        return state

    def persist_to(self, directory: Path | str) -> None:
        self.state_dir = Path(directory)
        self.save(self.state_dir)

    def changed(self) -> None:
        """Note a mutation; with autosave on, save after a short debounce."""
        if self.state_dir is None:
            return
        with self._save_lock:
            self._dirty = True
            if self._timer is None:
                self._timer = threading.Timer(SAVE_DEBOUNCE_SECONDS, self._autosave)
                self._timer.daemon = True
                self._timer.start()

    def _autosave(self) -> None:
        with self._save_lock:
            self._timer = None
            dirty, self._dirty = self._dirty, False
        if dirty and self.state_dir is not None:
            self.save(self.state_dir)

    def flush(self) -> None:
        """Save now (with autosave on); call at shutdown. Saves even without a recorded
        change, since code may have changed the state directly."""
        with self._save_lock:
            timer, self._timer = self._timer, None
            self._dirty = False
        if timer is not None:
            timer.cancel()
        if self.state_dir is not None:
            self.save(self.state_dir)


# Directory fields a reset keeps: the startup line published them, and tokens already issued
# were signed with the signing keys.
_KEPT_DIRECTORY_FIELDS = (
    "tenant_id",
    "subscription_id",
    "identity_header",
    "system_identity",
    "signing_keys",
)
