"""Azure RBAC for the vault's data plane: built-in roles as data, custom roles as data-action
lists, and the data action each emulated operation requires.

Role ids and dataActions are Microsoft's published definitions ("Azure built-in roles for
Security", MicrosoftDocs/azure-docs ``articles/role-based-access-control/built-in-roles/
security.md``); the per-operation data actions are from the Microsoft.KeyVault permission list
(``articles/role-based-access-control/permissions/security.md``). A ``*`` in an action matches
any run of characters, as Azure's wildcards do, and matching ignores case.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from kvassert.emulator.keystore import Forbidden

_KV = "Microsoft.KeyVault/vaults"


@dataclass(frozen=True)
class RoleDefinition:
    id: str
    name: str
    data_actions: tuple[str, ...]
    not_data_actions: tuple[str, ...] = ()


BUILTIN_ROLES: tuple[RoleDefinition, ...] = (
    RoleDefinition(
        "00482a5a-887f-4fb3-b363-3b7fe8e74483", "Key Vault Administrator", (f"{_KV}/*",)
    ),
    RoleDefinition(
        "a4417e6f-fecd-4de8-b567-7b0420556985",
        "Key Vault Certificates Officer",
        (f"{_KV}/certificatecas/*", f"{_KV}/certificates/*", f"{_KV}/certificatecontacts/write"),
    ),
    RoleDefinition(
        "db79e9a7-68ee-4b58-9aeb-b90e7c24fcba",
        "Key Vault Certificate User",
        (
            f"{_KV}/certificates/read",
            f"{_KV}/secrets/getSecret/action",
            f"{_KV}/secrets/readMetadata/action",
            f"{_KV}/keys/read",
        ),
    ),
    RoleDefinition(
        "14b46e9e-c2b7-41b4-b07b-48a6ebf60603",
        "Key Vault Crypto Officer",
        (f"{_KV}/keys/*", f"{_KV}/keyrotationpolicies/*"),
    ),
    RoleDefinition(
        "12338af0-0e69-4776-bea7-57ae8d297424",
        "Key Vault Crypto User",
        tuple(
            f"{_KV}/keys/{action}"
            for action in (
                "read",
                "update/action",
                "backup/action",
                "encrypt/action",
                "decrypt/action",
                "wrap/action",
                "unwrap/action",
                "sign/action",
                "verify/action",
            )
        ),
    ),
    RoleDefinition(
        "e147488a-f6f5-4113-8e2d-b22465e65bf6",
        "Key Vault Crypto Service Encryption User",
        (f"{_KV}/keys/read", f"{_KV}/keys/wrap/action", f"{_KV}/keys/unwrap/action"),
    ),
    RoleDefinition(
        "21090545-7ca7-4776-b22c-e363652d74d2",
        "Key Vault Reader",
        (f"{_KV}/*/read", f"{_KV}/secrets/readMetadata/action"),
    ),
    RoleDefinition(
        "b86a8fe4-44ce-4948-aee5-eccb2c155cd7", "Key Vault Secrets Officer", (f"{_KV}/secrets/*",)
    ),
    RoleDefinition(
        "4633458b-17de-408a-b874-0445c86b69e6",
        "Key Vault Secrets User",
        (f"{_KV}/secrets/getSecret/action", f"{_KV}/secrets/readMetadata/action"),
    ),
)

# Emulated operation -> the data action Key Vault checks for it.
OPERATION_DATA_ACTIONS: Mapping[str, str] = {
    "key_create": f"{_KV}/keys/create/action",
    "key_import": f"{_KV}/keys/import/action",
    "key_get": f"{_KV}/keys/read",
    "key_list": f"{_KV}/keys/read",
    "key_list_versions": f"{_KV}/keys/read",
    "key_update": f"{_KV}/keys/update/action",
    "sign": f"{_KV}/keys/sign/action",
    "verify": f"{_KV}/keys/verify/action",
    "certificate_create": f"{_KV}/certificates/create/action",
    "certificate_pending": f"{_KV}/certificates/read",
    "certificate_import": f"{_KV}/certificates/import/action",
    "certificate_get": f"{_KV}/certificates/read",
    "certificate_list": f"{_KV}/certificates/read",
    "certificate_policy_get": f"{_KV}/certificates/read",
    "certificate_list_versions": f"{_KV}/certificates/read",
    "certificate_update": f"{_KV}/certificates/update/action",
    "secret_get": f"{_KV}/secrets/getSecret/action",
    "secret_list_versions": f"{_KV}/secrets/readMetadata/action",
}


@lru_cache(maxsize=256)
def _pattern(action: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(map(re.escape, action.split("*"))) + "$", re.IGNORECASE)


def matches(pattern: str, action: str) -> bool:
    return _pattern(pattern).match(action) is not None


def find_role(role: str) -> RoleDefinition | None:
    """A built-in role by name (any case), GUID, or ``.../roleDefinitions/{GUID}`` id."""
    wanted = role.strip().rsplit("/", 1)[-1].lower()
    return next((r for r in BUILTIN_ROLES if wanted in (r.id, r.name.lower())), None)


@dataclass(frozen=True)
class RoleAssignment:
    """A principal holds a built-in role (``role_id``) or a custom role (``data_actions``)."""

    principal_id: str
    role_id: str | None = None
    data_actions: tuple[str, ...] = ()

    @property
    def role(self) -> RoleDefinition | None:
        return find_role(self.role_id) if self.role_id else None

    def allows(self, action: str) -> bool:
        role = self.role
        allowed = role.data_actions if role else self.data_actions
        denied = role.not_data_actions if role else ()
        return any(matches(p, action) for p in allowed) and not any(
            matches(p, action) for p in denied
        )

    def to_dict(self) -> dict[str, Any]:
        role = self.role
        return {
            "principal_id": self.principal_id,
            "role_id": self.role_id,
            "role": role.name if role else None,
            "data_actions": list(role.data_actions if role else self.data_actions),
        }


class Rbac:
    """Role assignments on the vault (one scope). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._assignments: list[RoleAssignment] = []

    @staticmethod
    def make(
        principal_id: str, role: str | None = None, data_actions: Sequence[str] = ()
    ) -> RoleAssignment:
        """An assignment of a built-in ``role`` or of custom ``data_actions`` (exactly one).
        Raises ``ValueError`` for an unknown role or an empty or malformed custom role."""
        principal = principal_id.strip().lower()
        if not principal:
            raise ValueError("principal_id is required")
        if (role is None) == (not data_actions):
            raise ValueError("give either a built-in role or data_actions")
        if role is not None:
            found = find_role(role)
            if found is None:
                names = ", ".join(r.name for r in BUILTIN_ROLES)
                raise ValueError(f"unknown role {role!r}: expected a built-in role ({names})")
            return RoleAssignment(principal, found.id)
        for action in data_actions:
            if not isinstance(action, str) or not action.lower().startswith("microsoft."):
                raise ValueError(f"invalid data action {action!r}: e.g. '{_KV}/keys/sign/action'")
        return RoleAssignment(principal, None, tuple(data_actions))

    def assign(
        self, principal_id: str, role: str | None = None, data_actions: Sequence[str] = ()
    ) -> RoleAssignment:
        assignment = self.make(principal_id, role, data_actions)
        with self._lock:
            if assignment not in self._assignments:
                self._assignments.append(assignment)
        return assignment

    def unassign(
        self, principal_id: str, role: str | None = None, data_actions: Sequence[str] = ()
    ) -> int:
        """Remove the matching assignment, or all of the principal's when neither ``role`` nor
        ``data_actions`` is given. Returns how many were removed."""
        principal = principal_id.strip().lower()
        target = (
            None if role is None and not data_actions else self.make(principal, role, data_actions)
        )
        with self._lock:
            kept = [
                a
                for a in self._assignments
                if a.principal_id != principal or (target is not None and a != target)
            ]
            removed = len(self._assignments) - len(kept)
            self._assignments = kept
        return removed

    def assignments(self, principal_id: str | None = None) -> list[RoleAssignment]:
        with self._lock:
            return [
                a
                for a in self._assignments
                if principal_id is None or a.principal_id == principal_id.lower()
            ]

    def allows(self, principal_id: str, operation: str) -> bool:
        action = OPERATION_DATA_ACTIONS[operation]
        return any(a.allows(action) for a in self.assignments(principal_id))

    def check(self, principal_id: str, operation: str, *, caller: str = "") -> str:
        """The data action ``operation`` needs, if the principal holds it; else ``Forbidden``
        with inner code ``ForbiddenByRbac`` and Key Vault's message layout."""
        action = OPERATION_DATA_ACTIONS[operation]
        if self.allows(principal_id, operation):
            return action
        raise Forbidden(
            "Caller is not authorized to perform action on resource.\r\nIf role assignments, "
            "deny assignments or role definitions were changed recently, please observe "
            f"propagation time.\r\nCaller: {caller or 'oid=' + principal_id}\r\n"
            f"Action: '{action}'\r\nResource: 'kvassert-emulator'\r\n"
            "Assignment: (not found)\r\nDecisionReason: 'DeniedWithNoValidRBAC'\r\n",
            inner_code="ForbiddenByRbac",
        )

    def to_dict(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {
                    "principal_id": a.principal_id,
                    "role_id": a.role_id,
                    "data_actions": list(a.data_actions),
                }
                for a in self._assignments
            ]

    def load(self, data: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._assignments = [
                RoleAssignment(
                    d["principal_id"], d.get("role_id"), tuple(d.get("data_actions", ()))
                )
                for d in data
            ]
