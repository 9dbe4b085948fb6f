"""A small client for the admin API over HTTPS (``requests``), so the same helper drives an
in-process ``Emulator`` and an out-of-process one (``EmulatorProcess``, ``kvassert emulator``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import requests


class AdminRequestError(RuntimeError):
    """The admin API refused a call: ``status`` and the error ``message`` it gave."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"admin API answered {status}: {message}")
        self.status = status
        self.message = message


class AdminClient:
    """``admin_url`` is the startup line's ``admin_url``; ``verify`` its ``ca_file``."""

    def __init__(self, admin_url: str, *, verify: str | bool = True, timeout: float = 30.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.timeout = timeout
        # Passed per request: a session-level ``verify`` loses to REQUESTS_CA_BUNDLE.
        self.verify = verify
        self._session = requests.Session()

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        response = self._session.request(
            method,
            f"{self.admin_url}{path}",
            json=body,
            params=params,
            timeout=self.timeout,
            verify=self.verify,
        )
        try:
            data = response.json()
        except ValueError:
            data = {"error": {"message": response.text[:500]}}
        if response.status_code >= 400:
            error = data.get("error", {}) if isinstance(data, dict) else {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise AdminRequestError(response.status_code, message or response.reason)
        return data

    # ---- registrations and identities ------------------------------------------------------

    def info(self) -> dict[str, str]:
        result: dict[str, str] = self._call("GET", "/info")
        return result

    def register_application(
        self,
        client_id: str,
        *,
        tenant_id: str | None = None,
        certificates: Iterable[bytes | str] = (),
        vault_certificates: Iterable[str] = (),
        secrets: Iterable[str] = (),
        federated_identities: Iterable[str] = (),
        **extra: Any,
    ) -> dict[str, Any]:
        """Create or replace an app registration; ``certificates`` are DER bytes (or base64
        text). Returns ``client_id``, ``principal_id`` (its service principal) and
        ``tenant_id``."""
        body: dict[str, Any] = {
            "client_id": client_id,
            "certificates": [
                c if isinstance(c, str) else base64.b64encode(c).decode() for c in certificates
            ],
            "vault_certificates": list(vault_certificates),
            "secrets": list(secrets),
            "federated_identities": list(federated_identities),
            **extra,
        }
        if tenant_id is not None:
            body["tenant_id"] = tenant_id
        result: dict[str, Any] = self._call("POST", "/applications", body)
        return result

    def create_identity(
        self, client_id: str | None = None, principal_id: str | None = None
    ) -> dict[str, Any]:
        """A user-assigned managed identity: ``client_id``, ``principal_id``, ``resource_id``."""
        body = {"client_id": client_id, "principal_id": principal_id}
        result: dict[str, Any] = self._call("POST", "/identities", body)
        return result

    # ---- role assignments ------------------------------------------------------------------

    def assign_role(
        self,
        principal_id: str,
        role: str | None = None,
        *,
        data_actions: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Give ``principal_id`` a built-in role (name or id) or custom ``data_actions``."""
        body = {
            "principal_id": principal_id,
            "role": role,
            "data_actions": list(data_actions or ()),
        }
        result: dict[str, Any] = self._call("POST", "/role-assignments", body)
        return result

    def remove_role(
        self,
        principal_id: str,
        role: str | None = None,
        *,
        data_actions: Iterable[str] | None = None,
    ) -> int:
        """Remove that assignment (or, with neither role nor actions, all of the principal's)."""
        body = {
            "principal_id": principal_id,
            "role": role,
            "data_actions": list(data_actions or ()),
        }
        return int(self._call("DELETE", "/role-assignments", body)["removed"])

    def role_assignments(self, principal_id: str | None = None) -> list[dict[str, Any]]:
        params = {"principal_id": principal_id} if principal_id else None
        result: list[dict[str, Any]] = self._call("GET", "/role-assignments", params=params)[
            "value"
        ]
        return result

    # ---- faults, clock, log, reset ----------------------------------------------------------

    def add_fault(
        self,
        route: str,
        *,
        status: int | None = None,
        retry_after: int | None = None,
        count: int | None = None,
        latency_ms: int | None = None,
        drop: bool = False,
        body: str | None = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        """Inject a fault into ``route`` (an operation: ``sign``, ``certificate_get``,
        ``token``, ``identity``...); ``count`` None means until cleared."""
        fault = {
            "route": route,
            "status": status,
            "retry_after": retry_after,
            "count": count,
            "latency_ms": latency_ms,
            "drop": drop,
            "body": body,
            "content_type": content_type,
        }
        result: dict[str, Any] = self._call("POST", "/faults", fault)
        return result

    def clear_faults(self, route: str | None = None) -> int:
        params = {"route": route} if route else None
        return int(self._call("DELETE", "/faults", params=params)["removed"])

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/faults")["value"]
        return result

    def set_clock(self, offset_seconds: float) -> dict[str, float]:
        result: dict[str, float] = self._call("POST", "/clock", {"offset_seconds": offset_seconds})
        return result

    def log(
        self, *, operation: str | None = None, principal: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests to the emulated services, oldest first (``method``, ``path``,
        ``operation``, ``principal``, ``status``...)."""
        params = {k: v for k, v in (("operation", operation), ("principal", principal)) if v}
        result: list[dict[str, Any]] = self._call("GET", "/log", params=params or None)["value"]
        return result

    def clear_log(self) -> None:
        self._call("DELETE", "/log")

    def reset(self) -> dict[str, str]:
        result: dict[str, str] = self._call("POST", "/reset")
        return result

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/state")
        return result
