"""Entra ID routes: token endpoints (v2 and v1, client credentials), OIDC discovery, JWKS.

Handlers parse the request, call ``state.directory`` and render Entra's own shapes: token
responses as in the v2/v1 client-credentials docs, errors as in ``reference-error-codes.md``
(``error``, ``error_description`` ending in Trace ID / Correlation ID / Timestamp lines,
``error_codes``, ``timestamp``, ``trace_id``, ``correlation_id``, ``error_uri``).

msal-python against ``authority=f"{base}/{tenant}"`` reads
``{authority}/v2.0/.well-known/openid-configuration`` (``msal/authority.py``) and posts to its
``token_endpoint``; instance discovery must be off (``instance_discovery=False``) because the
emulator's host is not a Microsoft cloud.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any
from urllib.parse import unquote_plus

from werkzeug.http import http_date
from werkzeug.wrappers import Response

from kvassert.emulator.assertion_checks import AadstsKind, EntraError
from kvassert.emulator.client_auth import TWO_CREDENTIALS, authenticate_client
from kvassert.emulator.directory import Directory
from kvassert.emulator.routing import RequestContext, Route, WireError, json_response

SPECIAL_TENANTS = {"common", "organizations", "consumers"}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
DEFAULT = "/.default"

TENANT_NOT_FOUND = AadstsKind(90002, "invalid_tenant", 400)  # windowsupdates-webapp-sample#6
BAD_TENANT_NAME = AadstsKind(900023, "invalid_request", 400)  # MicrosoftDocs/azure-docs#100978
NO_TENANT = AadstsKind(50059, "invalid_request", 400)  # MicrosoftDocs/azure-docs#24064
UNSUPPORTED_GRANT = AadstsKind(70003, "unsupported_grant_type", 400)  # docs: 70003
MISSING_PARAMETER = AadstsKind(900144, "invalid_request", 400)  # docs: 900144
POST_ONLY = AadstsKind(900561, "invalid_request", 400)  # docs: 900561
SCOPE_NOT_DEFAULT = AadstsKind(1002012, "invalid_scope", 400)  # MicrosoftDocs/azure-docs#99862
SCOPE_MULTIPLE = AadstsKind(700022, "invalid_scope", 400)  # docs: InvalidMultipleResourcesScope


def _missing(name: str) -> EntraError:
    return EntraError(
        MISSING_PARAMETER, f"The request body must contain the following parameter: '{name}'."
    )


def entra_timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(now))


def error_body(
    err: EntraError, *, base_url: str, now: float, correlation_id: str, trace_id: str
) -> dict[str, Any]:
    stamp = entra_timestamp(now)
    return {
        "error": err.kind.error,
        "error_description": f"{err.description}\r\nTrace ID: {trace_id}\r\n"
        f"Correlation ID: {correlation_id}\r\nTimestamp: {stamp}",
        "error_codes": [err.code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"{base_url}/error?code={err.code}",
    }


class EntraWireError(WireError):
    """An Entra error raised outside a handler (injected faults): renders Entra's shape with
    a public-cloud ``error_uri``, since no request context is at hand. The default code fits the
    status: 429 is 90055 (docs: TenantThrottlingError), 5xx 90033 (docs: service unavailable),
    anything else 90023 (docs: InvalidRequest)."""

    def __init__(
        self, message: str, *, status: int | None = None, code: int = 0, error: str = ""
    ) -> None:
        super().__init__(message, status=status)
        if self.status == 429 or self.status >= 500:
            default = (90055 if self.status == 429 else 90033, "temporarily_unavailable")
        else:
            default = (90023, "invalid_request")
        kind = AadstsKind(code or default[0], error or default[1], self.status)
        self.entra = EntraError(kind, message)

    def response(self) -> Response:
        trace = str(uuid.uuid4())
        body = error_body(
            self.entra,
            base_url="https://login.microsoftonline.com",
            now=time.time(),
            correlation_id=str(uuid.uuid4()),
            trace_id=trace,
        )
        return json_response(body, status=self.status, headers={"x-ms-request-id": trace})


class _Call:
    """Per-request identifiers: Entra echoes ``client-request-id`` as the correlation id."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.trace_id = str(uuid.uuid4())
        self.correlation_id = ctx.request.headers.get("client-request-id") or str(uuid.uuid4())

    def headers(self, cache: str = "no-store, no-cache") -> dict[str, str]:
        # Date from the emulator clock: clients measure their skew from it after AADSTS700024,
        # as they would from Entra's own Date header.
        headers = {
            "Cache-Control": cache,
            "Date": http_date(self.ctx.now()),
            "x-ms-request-id": self.trace_id,
        }
        if cache.startswith("no-store"):
            headers["Pragma"] = "no-cache"
        if self.ctx.request.headers.get("return-client-request-id", "").lower() == "true":
            headers["client-request-id"] = self.correlation_id
        return headers

    def error(self, err: EntraError) -> Response:
        body = error_body(
            err,
            base_url=self.ctx.base_url,
            now=self.ctx.now(),
            correlation_id=self.correlation_id,
            trace_id=self.trace_id,
        )
        return json_response(body, status=err.kind.status, headers=self.headers())


def resolve_tenant(directory: Directory, segment: str, *, allow_special: bool) -> str:
    """The tenant a path segment names (GUID, any case); ``common`` & co. only where allowed."""
    name = segment.lower()
    if name in directory.tenants:
        return name
    if name in SPECIAL_TENANTS:
        if allow_special:
            return name
        # Client credentials need a tenant (MicrosoftDocs/azure-docs#24064).
        raise EntraError(
            NO_TENANT,
            "No tenant-identifying information found in either the request or implied by any "
            "provided credentials.",
        )
    if not _GUID.match(segment) and "." not in segment:
        raise EntraError(
            BAD_TENANT_NAME,
            f"Specified tenant identifier '{segment}' is neither a valid DNS name, nor a valid "
            "external domain.",
        )
    raise EntraError(
        TENANT_NOT_FOUND,
        f"Tenant '{segment}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud. Check with your subscription administrator, this may "
        "happen if there are no active subscriptions for the tenant.",
    )


def _scope_resource(scope: str) -> str:
    """The one resource a client-credentials ``scope`` names (``{resource}/.default``)."""
    scopes = scope.split()
    if not scopes:
        raise _missing("scope")
    for item in scopes:
        if not item.endswith(DEFAULT) or item == DEFAULT:
            raise EntraError(
                SCOPE_NOT_DEFAULT,
                f"The provided value for scope {item} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
    resources = {item[: -len(DEFAULT)] for item in scopes}
    if len(resources) > 1:
        raise EntraError(
            SCOPE_MULTIPLE,
            "The provided value for the input parameter scope isn't valid because it contains "
            "more than one resource.",
        )
    return resources.pop()


def _client_credentials(ctx: RequestContext) -> tuple[str, str | None]:
    """``client_id`` and ``client_secret`` from the form or HTTP Basic (``client_secret_basic``,
    whose parts are form-urlencoded first: RFC 6749 section 2.3.1)."""
    form = ctx.request.form
    client_id = form.get("client_id", "")
    secret = form.get("client_secret")
    auth = ctx.request.authorization
    if auth is not None and auth.type == "basic":
        basic_id = unquote_plus(auth.username or "")
        if secret is not None or (client_id and client_id != basic_id):
            raise EntraError(TWO_CREDENTIALS, "The request is not valid: use one credential.")
        client_id, secret = basic_id, unquote_plus(auth.password or "")
    if not client_id:
        raise _missing("client_id")
    return client_id, secret


def _token(ctx: RequestContext, tenant_segment: str, *, version: int) -> Response:
    call = _Call(ctx)
    directory = ctx.state.directory
    try:
        if ctx.request.method != "POST":
            raise EntraError(
                POST_ONLY,
                "The endpoint only accepts POST requests. Received a "
                f"{ctx.request.method} request.",
            )
        tenant = resolve_tenant(directory, tenant_segment, allow_special=False)
        form = ctx.request.form
        grant = form.get("grant_type")
        if not grant:
            raise _missing("grant_type")
        if grant != "client_credentials":
            raise EntraError(
                UNSUPPORTED_GRANT, f"The app requested an unsupported grant type '{grant}'."
            )
        client_id, secret = _client_credentials(ctx)
        if version == 2:
            resource_name = _scope_resource(form.get("scope", ""))
        else:
            resource_name = form.get("resource", "")
            if not resource_name:
                raise _missing("resource")
        app, acr = authenticate_client(
            directory,
            tenant_id=tenant,
            client_id=client_id,
            client_secret=secret,
            client_assertion=form.get("client_assertion"),
            client_assertion_type=form.get("client_assertion_type"),
            endpoint_url=f"{ctx.base_url}{ctx.request.path}",
            base_url=ctx.base_url,
        )
        ctx.principal = app.principal_id
        resource = directory.resolve_resource(tenant, resource_name)
        token_version = 1 if version == 1 else resource.accepted_version
        issued = directory.issue_token(
            app, resource, tenant_id=tenant, base_url=ctx.base_url, version=token_version, acr=acr
        )
    except EntraError as err:
        return call.error(err)
    body: dict[str, Any] = {"token_type": "Bearer"}
    if version == 2:
        body.update(expires_in=issued.expires_in, ext_expires_in=issued.expires_in)
    else:  # the v1 endpoint answers numbers as strings
        body.update(
            expires_in=str(issued.expires_in),
            ext_expires_in=str(issued.expires_in),
            expires_on=str(issued.expires_on),
            not_before=str(issued.issued_at),
            resource=issued.resource,
        )
    body["access_token"] = issued.access_token
    return json_response(body, headers=call.headers())


def token_v2(ctx: RequestContext, tenant: str) -> Response:
    return _token(ctx, tenant, version=2)


def token_v1(ctx: RequestContext, tenant: str) -> Response:
    return _token(ctx, tenant, version=1)


def _discovery(ctx: RequestContext, tenant_segment: str, *, version: int) -> Response:
    call = _Call(ctx)
    try:
        tenant = resolve_tenant(ctx.state.directory, tenant_segment, allow_special=True)
    except EntraError as err:
        return call.error(err)
    base = ctx.base_url
    # For common/organizations/consumers the issuer carries a "{tenantid}" placeholder.
    issuer_tid = "{tenantid}" if tenant in SPECIAL_TENANTS else tenant
    oauth = f"{base}/{tenant}/oauth2/v2.0" if version == 2 else f"{base}/{tenant}/oauth2"
    doc: dict[str, Any] = {
        "token_endpoint": f"{oauth}/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys"
        if version == 2
        else f"{base}/common/discovery/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{issuer_tid}/v2.0" if version == 2 else f"{base}/{issuer_tid}/",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{oauth}/authorize",
        "device_authorization_endpoint": f"{oauth}/devicecode",
        "end_session_endpoint": f"{oauth}/logout",
        "tenant_region_scope": "WW",
        "cloud_instance_name": "kvassert.emulator",
    }
    return json_response(doc, headers=call.headers("max-age=86400, private"))


def openid_configuration_v2(ctx: RequestContext, tenant: str) -> Response:
    return _discovery(ctx, tenant, version=2)


def openid_configuration_v1(ctx: RequestContext, tenant: str) -> Response:
    return _discovery(ctx, tenant, version=1)


def jwks(ctx: RequestContext, tenant: str) -> Response:
    call = _Call(ctx)
    try:
        resolve_tenant(ctx.state.directory, tenant, allow_special=True)
    except EntraError as err:
        return call.error(err)
    return json_response(ctx.state.directory.jwks(), headers=call.headers("max-age=86400, private"))


ROUTES: list[Route] = [
    Route("/<tenant>/oauth2/v2.0/token", ("GET", "POST"), "token", token_v2, "entra"),
    Route("/<tenant>/oauth2/token", ("GET", "POST"), "token", token_v1, "entra"),
    Route(
        "/<tenant>/v2.0/.well-known/openid-configuration",
        ("GET",),
        "openid_configuration",
        openid_configuration_v2,
        "entra",
    ),
    Route(
        "/<tenant>/.well-known/openid-configuration",
        ("GET",),
        "openid_configuration",
        openid_configuration_v1,
        "entra",
    ),
    Route("/<tenant>/discovery/v2.0/keys", ("GET",), "jwks", jwks, "entra"),
    Route("/<tenant>/discovery/keys", ("GET",), "jwks", jwks, "entra"),
]
