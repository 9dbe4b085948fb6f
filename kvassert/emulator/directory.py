"""The emulated Entra directory: tenants, app registrations, managed identities, signing keys,
token issuance and validation. State and verbs only; no HTTP (client authentication, which
reads this state, is ``client_auth.py``).

``register_application`` extras (all optional, keyword-only):

- ``principal_id``: the service principal's object id (default: kept on replace, else random);
- ``display_name``;
- ``identifier_uris``: e.g. ``["api://orders"]``; the app becomes a resource clients can ask for
  (``api://orders/.default``), as can its client id;
- ``app_roles``: role values the app defines as a resource (``["Data.Read"]``);
- ``app_roles_granted``: application permissions granted to this app on other resources, keyed
  by any identifier of the resource: ``{"api://orders": ["Data.Read"]}``. They appear as the
  ``roles`` claim of app-only tokens for that resource (Entra always puts all granted application
  permissions in client-credentials tokens), filtered by the resource's ``app_roles`` if it
  defines any;
- ``access_token_version``: 1 (Entra's default) or 2. The v2 endpoint issues the version the
  resource accepts; the v1 endpoint always issues v1 tokens (Microsoft Q&A 1791591 /
  ``accessTokenAcceptedVersion``). v2 tokens carry the resource's client id as ``aud``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvassert.emulator.assertion_checks import (
    AadstsKind,
    AssertionPolicy,
    EntraError,
    RegisteredCertificate,
)
from kvassert.emulator.clock import Clock
from kvassert.emulator.sts_tokens import (
    InvalidAccessToken,
    IssuedToken,
    SigningKey,
    TokenRequest,
    check_lifetime,
    mint,
    verify_signature,
)

__all__ = [
    "Application",
    "Directory",
    "InvalidAccessToken",
    "IssuedToken",
    "ManagedIdentity",
    "Resource",
]

TOKEN_EXCHANGE = "api://AzureADTokenExchange"
# Well-known first-party resources (resource URI -> application id, as published by Microsoft).
FIRST_PARTY: Mapping[str, str] = {
    "https://vault.azure.net": "cfa8b339-82a2-471a-a3c9-0fc0be7a4093",
    "https://management.azure.com": "797f4846-ba00-4fd7-ba43-dac1f8f63013",
    "https://management.core.windows.net": "797f4846-ba00-4fd7-ba43-dac1f8f63013",
    "https://graph.microsoft.com": "00000003-0000-0000-c000-000000000000",
    "https://storage.azure.com": "e406a681-f3d4-42a8-90b6-c2b029497af1",
    TOKEN_EXCHANGE.lower(): "fb60f99c-7a34-4190-8149-302f77469936",
}

# Text as in Azure/azure-cli#29113, answered as invalid_resource (laravel-azure-middleware#51).
RESOURCE_NOT_FOUND = AadstsKind(500011, "invalid_resource", 400)


@dataclass(frozen=True)
class ManagedIdentity:
    client_id: str
    principal_id: str
    resource_id: str
    user_assigned: bool = False


@dataclass(frozen=True)
class Application:
    client_id: str
    principal_id: str
    tenant_id: str
    display_name: str = ""
    certificates: tuple[RegisteredCertificate, ...] = ()
    secret_hashes: tuple[str, ...] = field(default=(), repr=False)
    federated_identities: tuple[str, ...] = ()
    identifier_uris: tuple[str, ...] = ()
    app_roles: tuple[str, ...] = ()
    app_roles_granted: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    access_token_version: int = 1

    def check_secret(self, secret: str) -> bool:
        digest = _secret_hash(secret)
        return any(hmac.compare_digest(digest, known) for known in self.secret_hashes)


@dataclass(frozen=True)
class Resource:
    """What a token is for: ``requested`` as the client named it, and who owns it."""

    requested: str
    app_id: str
    app: Application | None
    accepted_version: int


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _norm(identifier: str) -> str:
    return identifier.rstrip("/").lower()


_EXTRAS = {
    "principal_id",
    "display_name",
    "identifier_uris",
    "app_roles",
    "app_roles_granted",
    "access_token_version",
}


class Directory:
    """All tenants of one emulator. Thread-safe; ``clock`` gives every time it uses."""

    def __init__(self, clock: Clock, *, tenant_id: str | None = None) -> None:
        self.clock = clock
        self.tenant_id = (tenant_id or str(uuid.uuid4())).lower()
        self.tenants: set[str] = {self.tenant_id}
        self.subscription_id = str(uuid.uuid4())
        self.identity_header = str(uuid.uuid4())
        self.policy = AssertionPolicy()
        self.token_lifetime_seconds = 3600
        self.system_identity = ManagedIdentity(
            str(uuid.uuid4()),
            str(uuid.uuid4()),
            f"/subscriptions/{self.subscription_id}/resourcegroups/kvassert/providers/"
            "Microsoft.Web/sites/kvassert-app",
        )
        self._identities: dict[str, ManagedIdentity] = {}
        self._apps: dict[tuple[str, str], Application] = {}
        self._keys: list[SigningKey] = [SigningKey.generate(clock.now())]
        self._lock = threading.RLock()

    # -- registrations -------------------------------------------------------------------------
    def add_tenant(self, tenant_id: str | None = None) -> str:
        tenant = (tenant_id or str(uuid.uuid4())).lower()
        with self._lock:
            self.tenants.add(tenant)
        return tenant

    def create_user_assigned_identity(
        self, client_id: str | None = None, principal_id: str | None = None, *, name: str = ""
    ) -> ManagedIdentity:
        client = (client_id or str(uuid.uuid4())).lower()
        rid = (
            f"/subscriptions/{self.subscription_id}/resourcegroups/kvassert/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{name or 'id-' + client[:8]}"
        )
        identity = ManagedIdentity(client, (principal_id or str(uuid.uuid4())).lower(), rid, True)
        with self._lock:
            self._identities[client] = identity
        return identity

    def user_assigned_identities(self) -> list[ManagedIdentity]:
        with self._lock:
            return list(self._identities.values())

    def find_identity(
        self, *, client_id: str = "", principal_id: str = "", resource_id: str = ""
    ) -> ManagedIdentity | None:
        """The identity one selector names; no selector means the system-assigned identity."""
        if not (client_id or principal_id or resource_id):
            return self.system_identity
        with self._lock:
            candidates = [self.system_identity, *self._identities.values()]
        for mi in candidates:
            if (
                (client_id and mi.client_id == client_id.lower())
                or (principal_id and mi.principal_id == principal_id.lower())
                or (resource_id and mi.resource_id.lower() == resource_id.lower())
            ):
                return mi
        return None

    def register_application(
        self,
        client_id: str,
        *,
        tenant_id: str | None = None,
        certificates: Sequence[bytes] = (),
        secrets: Sequence[str] = (),
        federated_identities: Sequence[str] = (),
        **extra: Any,
    ) -> Application:
        """Create or replace an app registration (and its service principal). Certificates are
        DER or PEM; secrets are kept only as SHA-256 digests. Raises ``TypeError`` for an unknown
        extra and ``ValueError`` for a bad certificate or token version."""
        unknown = set(extra) - _EXTRAS
        if unknown:
            raise TypeError(f"unknown application settings: {sorted(unknown)}")
        version = int(extra.get("access_token_version", 1))
        if version not in (1, 2):
            raise ValueError("access_token_version must be 1 or 2")
        tenant = self.add_tenant(tenant_id or self.tenant_id)
        key = (tenant, client_id.lower())
        with self._lock:
            previous = self._apps.get(key)
            principal = extra.get("principal_id") or (
                previous.principal_id if previous else str(uuid.uuid4())
            )
            app = Application(
                client_id=client_id.lower(),
                principal_id=str(principal).lower(),
                tenant_id=tenant,
                display_name=str(extra.get("display_name", "")),
                certificates=tuple(RegisteredCertificate.load(c) for c in certificates),
                secret_hashes=tuple(_secret_hash(s) for s in secrets),
                federated_identities=tuple(f.lower() for f in federated_identities),
                identifier_uris=tuple(extra.get("identifier_uris", ())),
                app_roles=tuple(extra.get("app_roles", ())),
                app_roles_granted={
                    str(k): tuple(v) for k, v in dict(extra.get("app_roles_granted", {})).items()
                },
                access_token_version=version,
            )
            self._apps[key] = app
        return app

    def get_application(self, client_id: str, tenant_id: str | None = None) -> Application | None:
        with self._lock:
            return self._apps.get(((tenant_id or self.tenant_id).lower(), client_id.lower()))

    def applications(self) -> list[Application]:
        with self._lock:
            return list(self._apps.values())

    # -- resources and tokens ------------------------------------------------------------------
    def resolve_resource(self, tenant_id: str, name: str) -> Resource:
        """The resource a ``resource``/scope names: first-party or an app's client id / URI."""
        wanted = _norm(name)
        if wanted in FIRST_PARTY:
            return Resource(name, FIRST_PARTY[wanted], None, 1)
        with self._lock:
            apps = [a for (t, _), a in self._apps.items() if t == tenant_id.lower()]
        for app in apps:
            if wanted == app.client_id or wanted in {_norm(u) for u in app.identifier_uris}:
                return Resource(name, app.client_id, app, app.access_token_version)
        # Text as in Azure/azure-cli#29113.
        raise EntraError(
            RESOURCE_NOT_FOUND,
            f"The resource principal named {name} was not found in the tenant named {tenant_id}. "
            "This can happen if the application has not been installed by the administrator of "
            "the tenant or consented to by any user in the tenant. You might have sent your "
            "authentication request to the wrong tenant.",
        )

    def issuers(self, base_url: str, tenant_id: str) -> tuple[str, str]:
        """(v1, v2) issuer: ``https://sts.windows.net/{tid}/`` and ``{authority}/{tid}/v2.0``."""
        return f"{base_url}/{tenant_id}/", f"{base_url}/{tenant_id}/v2.0"

    def _roles(self, principal: Application | ManagedIdentity, resource: Resource) -> list[str]:
        if not isinstance(principal, Application):
            return []
        names = {_norm(resource.requested), resource.app_id}
        if resource.app is not None:
            names |= {_norm(u) for u in resource.app.identifier_uris}
        granted = [
            r for k, v in principal.app_roles_granted.items() if _norm(k) in names for r in v
        ]
        defined = resource.app.app_roles if resource.app is not None else ()
        return sorted({r for r in granted if not defined or r in defined})

    def issue_token(
        self,
        principal: Application | ManagedIdentity,
        resource: Resource,
        *,
        tenant_id: str,
        base_url: str,
        version: int,
        acr: str,
    ) -> IssuedToken:
        """Sign an app-only access token for ``principal`` (an app or a managed identity)."""
        request = TokenRequest(
            principal_id=principal.principal_id,
            client_id=principal.client_id,
            audience=resource.requested if version == 1 else resource.app_id,
            resource=resource.requested,
            tenant_id=tenant_id,
            issuer=self.issuers(base_url, tenant_id)[version - 1],
            version=version,
            acr=acr,
            roles=self._roles(principal, resource),
            extra=(
                {"xms_mirid": principal.resource_id}
                if isinstance(principal, ManagedIdentity)
                else {}
            ),
        )
        with self._lock:
            key = self._keys[0]
        return mint(key, request, now=self.clock.now(), lifetime=self.token_lifetime_seconds)

    def validate_access_token(
        self, token: str, *, audiences: Collection[str], leeway: float = 300
    ) -> dict[str, Any]:
        """Claims of a token this emulator issued, checked against the emulator clock with
        ``leeway`` seconds of skew. Raises ``InvalidAccessToken``."""
        with self._lock:
            keys = list(self._keys)
        claims = verify_signature(token, keys)
        check_lifetime(claims, now=self.clock.now(), leeway=leeway)
        if claims["aud"] not in audiences:
            raise InvalidAccessToken(f"audience {claims['aud']!r} not accepted")
        if claims["tid"] not in self.tenants:
            raise InvalidAccessToken("unknown tenant")
        return claims

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.jwk() for k in self._keys]}

    def rotate_signing_key(self) -> SigningKey:
        """New tokens use a new key; tokens signed with older keys stay valid until they expire."""
        key = SigningKey.generate(self.clock.now())
        with self._lock:
            self._keys.insert(0, key)
        return key

    def signing_keys(self) -> list[SigningKey]:
        """Current key first."""
        with self._lock:
            return list(self._keys)

    def identities(self) -> list[ManagedIdentity]:
        """The system-assigned identity, then the user-assigned ones."""
        with self._lock:
            return [self.system_identity, *self._identities.values()]

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "tenant_id": self.tenant_id,
                "tenants": sorted(self.tenants),
                "subscription_id": self.subscription_id,
                "identity_header": self.identity_header,
                "policy": self.policy.to_dict(),
                "token_lifetime_seconds": self.token_lifetime_seconds,
                "system_identity": _identity_dict(self.system_identity),
                "user_identities": [_identity_dict(i) for i in self._identities.values()],
                "applications": [_app_dict(a) for a in self._apps.values()],
                "signing_keys": [k.to_dict() for k in self._keys],
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], clock: Clock) -> Directory:
        directory = cls.__new__(cls)
        directory.clock = clock
        directory.tenant_id = data["tenant_id"]
        directory.tenants = set(data["tenants"])
        directory.subscription_id = data["subscription_id"]
        directory.identity_header = data["identity_header"]
        directory.policy = AssertionPolicy.from_dict(data.get("policy", {}))
        directory.token_lifetime_seconds = int(data.get("token_lifetime_seconds", 3600))
        directory.system_identity = ManagedIdentity(**data["system_identity"])
        directory._identities = {
            i["client_id"]: ManagedIdentity(**i) for i in data["user_identities"]
        }
        apps = [_app_from_dict(a) for a in data["applications"]]
        directory._apps = {(a.tenant_id, a.client_id): a for a in apps}
        directory._keys = [SigningKey.from_dict(k) for k in data["signing_keys"]]
        directory._lock = threading.RLock()
        return directory


def _identity_dict(identity: ManagedIdentity) -> dict[str, Any]:
    return {
        "client_id": identity.client_id,
        "principal_id": identity.principal_id,
        "resource_id": identity.resource_id,
        "user_assigned": identity.user_assigned,
    }


def _app_dict(app: Application) -> dict[str, Any]:
    return {
        "client_id": app.client_id,
        "principal_id": app.principal_id,
        "tenant_id": app.tenant_id,
        "display_name": app.display_name,
        "certificates": [base64.b64encode(c.der).decode() for c in app.certificates],
        "secret_hashes": list(app.secret_hashes),
        "federated_identities": list(app.federated_identities),
        "identifier_uris": list(app.identifier_uris),
        "app_roles": list(app.app_roles),
        "app_roles_granted": {k: list(v) for k, v in app.app_roles_granted.items()},
        "access_token_version": app.access_token_version,
    }


def _app_from_dict(data: Mapping[str, Any]) -> Application:
    return Application(
        client_id=data["client_id"],
        principal_id=data["principal_id"],
        tenant_id=data["tenant_id"],
        display_name=data.get("display_name", ""),
        certificates=tuple(
            RegisteredCertificate.load(base64.b64decode(c)) for c in data["certificates"]
        ),
        secret_hashes=tuple(data["secret_hashes"]),
        federated_identities=tuple(data["federated_identities"]),
        identifier_uris=tuple(data["identifier_uris"]),
        app_roles=tuple(data["app_roles"]),
        app_roles_granted={k: tuple(v) for k, v in data["app_roles_granted"].items()},
        access_token_version=int(data["access_token_version"]),
    )
