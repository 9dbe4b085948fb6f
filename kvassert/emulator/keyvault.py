"""Key Vault data-plane routes: challenge, bearer validation, RBAC, then parse -> state -> render.

Every route goes through ``_authorize``: a request without a bearer token gets the 401 challenge
Key Vault sends (``WWW-Authenticate: Bearer authorization="{authority}/{tenant}",
resource="https://vault.azure.net"``; the SDK's first request carries neither token nor body);
a token must be one the emulator issued, unexpired, for the vault audience and the vault's
tenant; then the caller's role assignments must grant the operation's data action, else 403
``Forbidden`` / ``ForbiddenByRbac``. Any ``api-version`` is accepted, but one is required.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from werkzeug.wrappers import Response

from kvassert.emulator import kvwire as wire
from kvassert.emulator.directory import InvalidAccessToken
from kvassert.emulator.routing import RequestContext, Route, WireError, json_response
from kvassert.emulator.vault import BadParameter, VaultError

VAULT_RESOURCE = "https://vault.azure.net"
VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"  # Key Vault's first-party application id
AUDIENCES = frozenset({VAULT_RESOURCE, VAULT_RESOURCE + "/", VAULT_APP_ID})
MAX_RESULTS = 25
_CODES = {
    400: "BadParameter",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    413: "RequestEntityTooLarge",
    429: "Throttled",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}


class KeyVaultError(WireError):
    """Key Vault's error body: ``{"error":{"code","message","innererror"?:{"code"}}}``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        inner_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status)
        self.code = code or _CODES.get(
            self.status, "BadParameter" if self.status < 500 else "InternalServerError"
        )
        self.inner_code = inner_code
        self.headers = dict(headers or {})

    @classmethod
    def from_vault(cls, exc: VaultError) -> KeyVaultError:
        return cls(exc.message, status=exc.status, code=exc.code, inner_code=exc.inner_code)

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innererror"] = {"code": self.inner_code}
        return json_response({"error": error}, status=self.status, headers=self.headers)


# ---- authentication and authorisation -----------------------------------------------------


def challenge_header(ctx: RequestContext) -> str:
    tenant = ctx.state.directory.tenant_id
    return f'Bearer authorization="{ctx.base_url}/{tenant}", resource="{VAULT_RESOURCE}"'


def _unauthorized(ctx: RequestContext, message: str) -> KeyVaultError:
    return KeyVaultError(message, status=401, headers={"WWW-Authenticate": challenge_header(ctx)})


def _authorize(ctx: RequestContext, operation: str) -> None:
    scheme, _, token = ctx.request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(ctx, "AKV10000: Request is missing a Bearer or PoP token.")
    directory = ctx.state.directory
    try:
        claims = directory.validate_access_token(token.strip(), audiences=AUDIENCES)
    except InvalidAccessToken as exc:
        if "audience" in exc.reason:
            raise _unauthorized(
                ctx, f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}: {exc.reason}."
            ) from None
        raise _unauthorized(ctx, f"AKV10000: The bearer token is invalid: {exc.reason}.") from None
    issuer = str(claims.get("iss", ""))
    if claims.get("tid") != directory.tenant_id:
        raise _unauthorized(
            ctx,
            f"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/"
            f"{directory.tenant_id}/, found: {issuer}.",
        )
    principal = str(claims.get("oid", ""))
    ctx.principal = principal
    app = claims.get("appid") or claims.get("azp") or ""
    caller = f"appid={app};oid={principal};iss={issuer}"
    ctx.state.rbac.check(principal, operation, caller=caller)
    if not ctx.request.args.get("api-version"):
        raise BadParameter("The 'api-version' query parameter is required.")


def _body(ctx: RequestContext) -> dict[str, Any]:
    return wire.parse_body(ctx.request.get_data(cache=True))


def _required(data: Mapping[str, Any], field: str, kind: type) -> Any:
    value = wire.get(data, field, kind)
    if value is None:
        raise BadParameter(f"Property '{field}' is required.")
    return value


def _page(ctx: RequestContext, items: list[dict[str, Any]]) -> Response:
    """One page of a list (``maxresults`` 1-25, opaque ``$skiptoken``), as the service pages."""
    args = ctx.request.args
    try:
        size = int(args.get("maxresults", MAX_RESULTS))
        skip = int(args.get("$skiptoken", 0))
    except ValueError:
        raise BadParameter("Invalid maxresults or $skiptoken.") from None
    if not 1 <= size <= MAX_RESULTS or skip < 0:
        raise BadParameter(f"maxresults must be between 1 and {MAX_RESULTS}.")
    next_link = None
    if skip + size < len(items):
        api = args.get("api-version", "")
        next_link = (
            f"{ctx.base_url}{ctx.request.path}?api-version={api}"
            f"&$skiptoken={skip + size}&maxresults={size}"
        )
    return json_response({"value": items[skip : skip + size], "nextLink": next_link})


# ---- keys -------------------------------------------------------------------------------


def key_create(ctx: RequestContext, name: str) -> Response:
    body = _body(ctx)
    kty = _required(body, "kty", str)
    enabled, nbf, exp = wire.attributes(body)
    if wire.get(wire.get(body, "attributes", dict, {}), "exportable", bool):
        raise BadParameter("Exportable keys need a release policy, which the emulator lacks.")
    if body.get("crv") is not None:
        raise BadParameter("'crv' applies to EC keys; the emulator supports RSA only.")
    keys = ctx.state.vault.keys
    key = keys.create(
        name,
        kty=kty,
        key_size=wire.get(body, "key_size", int),
        public_exponent=wire.get(body, "public_exponent", int),
        key_ops=wire.strings(body, "key_ops"),
        attributes=keys.attributes(enabled is not False, nbf, exp),
        tags=wire.tags(body),
    )
    return json_response(wire.key_bundle(ctx.base_url, key))


def key_import(ctx: RequestContext, name: str) -> Response:
    body = _body(ctx)
    jwk = _required(body, "key", dict)
    kty = _required(jwk, "kty", str)
    hsm = wire.get(body, "Hsm", bool, False)
    enabled, nbf, exp = wire.attributes(body)
    keys = ctx.state.vault.keys
    key = keys.import_key(
        name,
        wire.jwk_private_key(jwk),
        kty="RSA-HSM" if hsm else kty,
        key_ops=wire.strings(jwk, "key_ops"),
        attributes=keys.attributes(enabled is not False, nbf, exp),
        tags=wire.tags(body),
    )
    return json_response(wire.key_bundle(ctx.base_url, key))


def key_get(ctx: RequestContext, name: str, version: str = "") -> Response:
    return json_response(wire.key_bundle(ctx.base_url, ctx.state.vault.keys.get(name, version)))


def key_update(ctx: RequestContext, name: str, version: str = "") -> Response:
    body = _body(ctx)
    enabled, nbf, exp = wire.attributes(body)
    key = ctx.state.vault.keys.update(
        name,
        version,
        enabled=enabled,
        not_before=nbf,
        expires=exp,
        key_ops=wire.strings(body, "key_ops"),
        tags=wire.tags(body),
    )
    return json_response(wire.key_bundle(ctx.base_url, key))


def key_list_versions(ctx: RequestContext, name: str) -> Response:
    versions = ctx.state.vault.keys.versions(name)
    return _page(ctx, [wire.key_item(ctx.base_url, k, versioned=True) for k in versions])


def key_list(ctx: RequestContext) -> Response:
    keys = ctx.state.vault.keys
    latest = [keys.get(name) for name in keys.names()]
    return _page(ctx, [wire.key_item(ctx.base_url, k, versioned=False) for k in latest])


def sign(ctx: RequestContext, name: str, version: str = "") -> Response:
    body = _body(ctx)
    algorithm = _required(body, "alg", str)
    digest = wire.b64url_decode(_required(body, "value", str), "value")
    key, signature = ctx.state.vault.keys.sign(name, version, algorithm, digest)
    kid = wire.key_id(ctx.base_url, name, key.version)
    return json_response({"kid": kid, "value": wire.b64url(signature)})


def verify(ctx: RequestContext, name: str, version: str = "") -> Response:
    body = _body(ctx)
    algorithm = _required(body, "alg", str)
    digest = wire.b64url_decode(_required(body, "digest", str), "digest")
    signature = wire.b64url_decode(_required(body, "value", str), "value")
    _, valid = ctx.state.vault.keys.verify(name, version, algorithm, digest, signature)
    return json_response({"value": valid})


# ---- certificates and their secrets -------------------------------------------------------


def certificate_create(ctx: RequestContext, name: str) -> Response:
    body = _body(ctx)
    policy_data = wire.get(body, "policy", dict)
    policy = None if policy_data is None else wire.parse_policy(policy_data)
    enabled, _, _ = wire.attributes(body)
    operation = ctx.state.vault.certificates.create(
        name, policy, enabled=enabled is not False, tags=wire.tags(body)
    )
    # The caller's api-version goes into a header: percent-encoded, so no CR/LF gets there.
    api = quote(ctx.request.args.get("api-version", ""), safe="")
    location = f"{ctx.base_url}/certificates/{name}/pending?api-version={api}"
    return json_response(
        wire.operation_json(ctx.base_url, name, operation),
        status=202,
        headers={"Location": location, "Retry-After": "10"},
    )


def certificate_pending(ctx: RequestContext, name: str) -> Response:
    operation = ctx.state.vault.certificates.operation(name)
    return json_response(wire.operation_json(ctx.base_url, name, operation))


def _material(value: str) -> bytes:
    """PEM text as is; anything else is base64 (the SDK base64-encodes PEM files too)."""
    if value.lstrip().startswith("-----BEGIN"):
        try:
            return value.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800") is valid JSON, not text
            raise BadParameter("Property 'value' is not a readable PEM certificate.") from None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadParameter("Property 'value' must be a base64 PFX or PEM certificate.") from None


def certificate_import(ctx: RequestContext, name: str) -> Response:
    body = _body(ctx)
    material = _material(_required(body, "value", str))
    policy_data = wire.get(body, "policy", dict)
    enabled, _, _ = wire.attributes(body)
    certificates = ctx.state.vault.certificates
    cert = certificates.import_certificate(
        name,
        material,
        password=wire.get(body, "pwd", str),
        policy=None if policy_data is None else wire.parse_policy(policy_data),
        enabled=enabled is not False,
        tags=wire.tags(body),
    )
    return json_response(wire.certificate_bundle(ctx.base_url, cert, certificates.policy(name)))


def certificate_get(ctx: RequestContext, name: str, version: str = "") -> Response:
    certificates = ctx.state.vault.certificates
    cert = certificates.get(name, version)
    return json_response(wire.certificate_bundle(ctx.base_url, cert, certificates.policy(name)))


def certificate_update(ctx: RequestContext, name: str, version: str = "") -> Response:
    body = _body(ctx)
    policy_data = wire.get(body, "policy", dict)
    enabled, _, _ = wire.attributes(body)
    certificates = ctx.state.vault.certificates
    cert = certificates.update(
        name,
        version,
        enabled=enabled,
        tags=wire.tags(body),
        policy=None if policy_data is None else wire.parse_policy(policy_data),
    )
    return json_response(wire.certificate_bundle(ctx.base_url, cert, certificates.policy(name)))


def certificate_policy_get(ctx: RequestContext, name: str) -> Response:
    policy = ctx.state.vault.certificates.policy(name)
    return json_response(wire.policy_json(ctx.base_url, name, policy))


def certificate_list_versions(ctx: RequestContext, name: str) -> Response:
    versions = ctx.state.vault.certificates.versions(name)
    return _page(ctx, [wire.certificate_item(ctx.base_url, c, versioned=True) for c in versions])


def certificate_list(ctx: RequestContext) -> Response:
    certificates = ctx.state.vault.certificates
    latest = [certificates.get(n) for n in certificates.names()]
    return _page(ctx, [wire.certificate_item(ctx.base_url, c, versioned=False) for c in latest])


def secret_get(ctx: RequestContext, name: str, version: str = "") -> Response:
    secret, value = ctx.state.vault.certificates.secret(name, version)
    return json_response(wire.secret_bundle(ctx.base_url, secret, value))


def secret_list_versions(ctx: RequestContext, name: str) -> Response:
    secrets = ctx.state.vault.certificates.secret_versions(name)
    return _page(ctx, [wire.secret_item(ctx.base_url, s) for s in secrets])


# ---- the route table ----------------------------------------------------------------------


def _kv(rule: str, methods: tuple[str, ...], operation: str, fn: Callable[..., Response]) -> Route:
    def handler(ctx: RequestContext, **values: str) -> Response:
        try:
            _authorize(ctx, operation)
            return fn(ctx, **values)
        except VaultError as exc:
            raise KeyVaultError.from_vault(exc) from None

    handler.__name__ = fn.__name__
    return Route(rule, methods, operation, handler, "keyvault")


GET, POST, PUT, PATCH = ("GET",), ("POST",), ("PUT",), ("PATCH",)

ROUTES: list[Route] = [
    _kv("/keys", GET, "key_list", key_list),
    _kv("/keys/", GET, "key_list", key_list),
    _kv("/keys/<name>/create", POST, "key_create", key_create),
    _kv("/keys/<name>", PUT, "key_import", key_import),
    _kv("/keys/<name>", GET, "key_get", key_get),
    _kv("/keys/<name>/", GET, "key_get", key_get),
    _kv("/keys/<name>/<version>", GET, "key_get", key_get),
    _kv("/keys/<name>/", PATCH, "key_update", key_update),
    _kv("/keys/<name>/<version>", PATCH, "key_update", key_update),
    _kv("/keys/<name>/versions", GET, "key_list_versions", key_list_versions),
    _kv("/keys/<name>//sign", POST, "sign", sign),
    _kv("/keys/<name>/<version>/sign", POST, "sign", sign),
    _kv("/keys/<name>//verify", POST, "verify", verify),
    _kv("/keys/<name>/<version>/verify", POST, "verify", verify),
    _kv("/certificates", GET, "certificate_list", certificate_list),
    _kv("/certificates/", GET, "certificate_list", certificate_list),
    _kv("/certificates/<name>/create", POST, "certificate_create", certificate_create),
    _kv("/certificates/<name>/pending", GET, "certificate_pending", certificate_pending),
    _kv("/certificates/<name>/import", POST, "certificate_import", certificate_import),
    _kv("/certificates/<name>", GET, "certificate_get", certificate_get),
    _kv("/certificates/<name>/", GET, "certificate_get", certificate_get),
    _kv("/certificates/<name>/<version>", GET, "certificate_get", certificate_get),
    _kv("/certificates/<name>/", PATCH, "certificate_update", certificate_update),
    _kv("/certificates/<name>/<version>", PATCH, "certificate_update", certificate_update),
    _kv("/certificates/<name>/policy", GET, "certificate_policy_get", certificate_policy_get),
    _kv(
        "/certificates/<name>/versions",
        GET,
        "certificate_list_versions",
        certificate_list_versions,
    ),
    _kv("/secrets/<name>", GET, "secret_get", secret_get),
    _kv("/secrets/<name>/", GET, "secret_get", secret_get),
    _kv("/secrets/<name>/<version>", GET, "secret_get", secret_get),
    _kv("/secrets/<name>/versions", GET, "secret_list_versions", secret_list_versions),
]
