"""A resource API that accepts only Entra ID app-only access tokens carrying an app role.

What API Management's ``validate-jwt`` policy would check, in a few lines of PyJWT:

- the token is a JWS signed with RS256 by one of the tenant's keys (``jwks_uri`` from the
  tenant's OpenID Connect metadata; keys cached, refreshed at most every 5 minutes when a token
  names an unknown key);
- ``aud`` is this API (its App ID URI for v1 tokens, its client id for v2 tokens);
- ``iss`` is the tenant's v1 or v2 issuer (both taken from the metadata) and ``tid`` the tenant;
- ``exp`` and ``nbf`` hold, with a small clock skew;
- ``roles`` contains the required app role.

A bad or missing token is a 401 with ``WWW-Authenticate: Bearer error="invalid_token"``, a valid
token without the role a 403 (RFC 6750). Settings come from environment variables (App Service
app settings); see README.md.

Run: ``gunicorn --bind=0.0.0.0:8000 --workers 2 api:app``.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
import requests
from flask import Flask, Response, g, jsonify, request

PUBLIC_CLOUD = "https://login.microsoftonline.com/"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class SettingsError(ValueError):
    """A missing or malformed environment variable, named in the message."""


@dataclass(frozen=True)
class ApiSettings:
    audiences: tuple[str, ...]
    tenant_id: str
    instance: str
    required_role: str
    clock_skew: int
    ca_bundle: str | None

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ApiSettings:
        audiences = tuple(a.strip() for a in env.get("API_AUDIENCE", "").split(",") if a.strip())
        if not audiences:
            raise SettingsError(
                "API_AUDIENCE: found nothing; expected this API's App ID URI and/or client id, "
                "comma-separated (api://contoso-data-api,00000000-0000-0000-0000-000000000000)"
            )
        tenant_id = env.get("API_TENANT_ID", "").strip().lower()
        if not _GUID.match(tenant_id):
            raise SettingsError(
                f"API_TENANT_ID: found {tenant_id!r}; expected the tenant (directory) id, a GUID"
            )
        instance = env.get("API_INSTANCE", "").strip() or PUBLIC_CLOUD
        if not instance.startswith("https://"):
            raise SettingsError(f"API_INSTANCE: found {instance!r}; expected an https:// URL")
        role = env.get("API_REQUIRED_ROLE", "").strip()
        if not role:
            raise SettingsError("API_REQUIRED_ROLE: found nothing; expected an app role name")
        skew = env.get("API_CLOCK_SKEW_SECONDS", "60").strip()
        if not skew.isdigit() or int(skew) > 300:
            raise SettingsError(f"API_CLOCK_SKEW_SECONDS: found {skew!r}; expected 0 to 300")
        return cls(
            audiences=audiences,
            tenant_id=tenant_id,
            instance=instance.rstrip("/") + "/",
            required_role=role,
            clock_skew=int(skew),
            ca_bundle=env.get("REQUESTS_CA_BUNDLE") or None,
        )


class TokenRejected(Exception):
    """Why a request is refused: HTTP status, RFC 6750 error code (or none) and description."""

    def __init__(self, status: int, error: str | None, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class Unavailable(Exception):
    """The identity provider's metadata or keys cannot be fetched right now."""


class TenantKeys:
    """The tenant's issuers and signing keys, fetched on first use and cached.

    The OpenID Connect metadata (v2 and v1 documents) gives the two issuers and ``jwks_uri``;
    it is re-read after ``metadata_lifetime``. ``jwt.PyJWKClient`` caches the key set for
    ``keys_lifetime``; a token naming a key that is not in the cached set triggers one refetch,
    at most once per ``refresh_cooldown``, so forged tokens cannot make the API hammer Entra.
    """

    def __init__(
        self,
        settings: ApiSettings,
        *,
        metadata_lifetime: float = 24 * 3600,
        keys_lifetime: float = 12 * 3600,
        refresh_cooldown: float = 300,
    ) -> None:
        self.settings = settings
        self.metadata_lifetime = metadata_lifetime
        self.keys_lifetime = keys_lifetime
        self.refresh_cooldown = refresh_cooldown
        self._lock = threading.Lock()
        self._session = requests.Session()
        self._loaded_at = 0.0
        self._issuers: tuple[str, ...] = ()
        self._jwks: jwt.PyJWKClient | None = None
        self._keys_fetched_at = 0.0

    def _metadata(self, path: str) -> dict[str, Any]:
        url = f"{self.settings.instance}{self.settings.tenant_id}{path}"
        try:
            answer = self._session.get(url, timeout=(5, 10))
            answer.raise_for_status()
            document: dict[str, Any] = answer.json()
        except (requests.RequestException, ValueError) as exc:
            raise Unavailable(f"cannot read {url}: {exc}") from exc
        return document

    def _load(self) -> tuple[tuple[str, ...], jwt.PyJWKClient]:
        now = time.monotonic()
        if self._jwks is None or now - self._loaded_at > self.metadata_lifetime:
            v2 = self._metadata("/v2.0/.well-known/openid-configuration")
            v1 = self._metadata("/.well-known/openid-configuration")
            ssl_context = (
                ssl.create_default_context(cafile=self.settings.ca_bundle)
                if self.settings.ca_bundle
                else None
            )
            self._issuers = (str(v2["issuer"]), str(v1["issuer"]))
            self._jwks = jwt.PyJWKClient(
                str(v2["jwks_uri"]),
                cache_jwk_set=True,
                lifespan=self.keys_lifetime,
                timeout=10,
                ssl_context=ssl_context,
            )
            self._loaded_at = now
            self._keys_fetched_at = 0.0
        return self._issuers, self._jwks

    def issuers_and_key(self, kid: str) -> tuple[tuple[str, ...], Any]:
        """The accepted issuers and the public key named ``kid``; raises ``TokenRejected`` for
        an unknown key and ``Unavailable`` when Entra cannot be reached."""
        with self._lock:
            issuers, jwks = self._load()
            try:
                now = time.monotonic()
                keys = jwks.get_signing_keys()  # the cached set, fetched when empty or stale
                if not self._keys_fetched_at:
                    self._keys_fetched_at = now
                key = jwks.match_kid(keys, kid)
                if key is None and now - self._keys_fetched_at >= self.refresh_cooldown:
                    keys = jwks.get_signing_keys(refresh=True)
                    self._keys_fetched_at = now
                    key = jwks.match_kid(keys, kid)
            except jwt.PyJWKClientConnectionError as exc:
                raise Unavailable(str(exc)) from exc
            except jwt.PyJWKClientError as exc:
                raise Unavailable(f"the tenant's key set is unusable: {exc}") from exc
        if key is None:
            raise TokenRejected(
                401, "invalid_token", "the token is not signed by a key of the tenant"
            )
        return issuers, key.key


def _invalid(description: str) -> TokenRejected:
    return TokenRejected(401, "invalid_token", description)


# Messages for PyJWT's exceptions, most specific first. They are fixed strings: nothing from
# the token is echoed into a header.
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not for this API (aud)"),
    (jwt.InvalidIssuerError, "the token is not from this API's tenant (iss)"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token is not signed with RS256"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim"),
    (jwt.DecodeError, "the token is malformed"),
)


def validate(authorization: str | None, settings: ApiSettings, keys: TenantKeys) -> dict[str, Any]:
    """The claims of a valid bearer token with the required role; raises ``TokenRejected``."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        # RFC 6750 section 3.1: no error code when the request has no bearer token at all.
        raise TokenRejected(401, None, "a bearer token is required")
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise _invalid("the token is malformed") from None
    if header.get("alg") != "RS256":
        raise _invalid("the token is not signed with RS256")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _invalid("the token names no signing key (kid)")
    issuers, key = keys.issuers_and_key(kid)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            audience=list(settings.audiences),
            issuer=list(issuers),
            leeway=settings.clock_skew,
            options={"require": ["exp", "nbf", "iat", "iss", "aud", "tid"]},
        )
    except jwt.InvalidTokenError as exc:
        reason = next((text for kind, text in _REASONS if isinstance(exc, kind)), None)
        raise _invalid(reason or "the token is invalid") from None
    if str(claims["tid"]).lower() != settings.tenant_id:
        raise _invalid("the token is not from this API's tenant (tid)")
    roles = claims.get("roles")
    if not isinstance(roles, list) or settings.required_role not in roles:
        raise TokenRejected(
            403,
            "insufficient_scope",
            f"the token does not carry the app role {settings.required_role}",
        )
    return claims


settings = ApiSettings.from_environ(os.environ)
tenant_keys = TenantKeys(settings)
app = Flask(__name__)
app.logger.setLevel(os.environ.get("API_LOG_LEVEL", "INFO").upper())

F = TypeVar("F", bound=Callable[..., Any])


def requires_token(view: F) -> F:
    """Run ``view`` only for a valid token with the required role (claims in ``g.claims``)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            g.claims = validate(request.headers.get("Authorization"), settings, tenant_keys)
        except TokenRejected as rejected:
            app.logger.info("refused %s %s: %s", request.method, request.path, rejected)
            return _refusal(rejected)
        except Unavailable as exc:
            app.logger.error("cannot validate tokens: %s", exc)
            answer = jsonify(error="temporarily_unavailable", error_description=str(exc))
            answer.status_code = 503
            answer.headers["Retry-After"] = "10"
            return answer
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _refusal(rejected: TokenRejected) -> Response:
    challenge = "Bearer"
    body: dict[str, str] = {"error_description": rejected.description}
    if rejected.error:
        challenge += f' error="{rejected.error}", error_description="{rejected.description}"'
        body["error"] = rejected.error
    answer = jsonify(body)
    answer.status_code = rejected.status
    answer.headers["WWW-Authenticate"] = challenge
    return answer


@app.get("/data")
@requires_token
def data() -> Response:
    claims = g.claims
    return jsonify(
        items=[
            {"id": 1, "name": "alpha"},
            {"id": 2, "name": "beta"},
            {"id": 3, "name": "gamma"},
        ],
        caller={
            # v1 tokens name the client in appid, v2 tokens in azp
            "appid": claims.get("appid") or claims.get("azp"),
            "oid": claims.get("oid"),
            "tid": claims.get("tid"),
            "roles": claims.get("roles"),
            "ver": claims.get("ver"),
        },
    )


@app.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")
