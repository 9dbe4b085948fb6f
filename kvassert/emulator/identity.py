"""App Service managed identity endpoint (``IDENTITY_ENDPOINT``, api-version 2019-08-01).

Protocol (App Service "managed identity" docs, ``articles/app-service/overview-managed-identity.md``
in MicrosoftDocs/azure-docs): ``GET {IDENTITY_ENDPOINT}?resource=...&api-version=2019-08-01`` with
header ``X-IDENTITY-HEADER: {IDENTITY_HEADER}``; optional ``client_id``, ``principal_id`` (alias
``object_id``) or ``mi_res_id``, at most one of them, none meaning the system-assigned identity.
Success: ``access_token``, ``expires_on`` and ``not_before`` (epoch seconds as strings),
``resource``, ``token_type``, ``client_id``.

Errors use the endpoint's own shape ``{"statusCode", "message", "correlationId"}``: an unknown
identity is a 400 "Unable to load the proper Managed Identity." (Azure/azure-sdk-for-net#43691);
a resource Entra refuses comes back as a vague 500 (msal-python ``managed_identity.py``: "wrong
resource ends up with a vague statusCode=500"). The 401 for a missing or wrong header follows the
same shape; its exact text is not documented.

azure-identity's ``ManagedIdentityCredential`` (App Service flavour) and msal-python send exactly
``api-version``, ``resource`` and one selector (``client_id``, ``mi_res_id`` or ``object_id``),
with ``X-IDENTITY-HEADER`` and ``Metadata: true``; they never send ``scope``.
"""

from __future__ import annotations

import hmac
import uuid

from werkzeug.http import http_date
from werkzeug.wrappers import Response

from kvassert.emulator.assertion_checks import EntraError
from kvassert.emulator.routing import RequestContext, Route, json_response

API_VERSIONS = {"2019-08-01"}
SELECTORS = ("client_id", "principal_id", "object_id", "mi_res_id")


def _error(ctx: RequestContext, status: int, message: str) -> Response:
    correlation = str(uuid.uuid4())
    return json_response(
        {"statusCode": status, "message": message, "correlationId": correlation},
        status=status,
        headers={"X-CORRELATION-ID": correlation, "Date": http_date(ctx.now())},
    )


def msi_token(ctx: RequestContext) -> Response:
    directory = ctx.state.directory
    args = ctx.request.args
    presented = ctx.request.headers.get("X-IDENTITY-HEADER", "")
    # Bytes: compare_digest refuses str with non-ASCII characters (a latin-1 header value).
    expected = directory.identity_header.encode()
    if not presented or not hmac.compare_digest(presented.encode(), expected):
        return _error(ctx, 401, "Unauthorized: the X-IDENTITY-HEADER header is missing or invalid.")
    api_version = args.get("api-version", "")
    if api_version not in API_VERSIONS:
        return _error(
            ctx, 400, f"The api-version '{api_version}' is not supported; use 2019-08-01."
        )
    resource_name = args.get("resource", "")
    if not resource_name:
        return _error(ctx, 400, "The 'resource' query parameter is required.")
    given = {name: args[name] for name in SELECTORS if args.get(name)}
    if len(given) > 1:
        return _error(ctx, 400, f"Only one of {', '.join(SELECTORS)} may be specified.")
    identity = directory.find_identity(
        client_id=given.get("client_id", ""),
        principal_id=given.get("principal_id") or given.get("object_id", ""),
        resource_id=given.get("mi_res_id", ""),
    )
    if identity is None:
        return _error(ctx, 400, "Unable to load the proper Managed Identity.")
    ctx.principal = identity.principal_id
    tenant = directory.tenant_id
    try:
        resource = directory.resolve_resource(tenant, resource_name)
    except EntraError as err:
        return _error(ctx, 500, f"An unexpected error occurred while fetching the AAD Token. {err}")
    issued = directory.issue_token(
        identity,
        resource,
        tenant_id=tenant,
        base_url=ctx.base_url,
        version=resource.accepted_version,
        acr="2",
    )
    return json_response(
        {
            "access_token": issued.access_token,
            "expires_on": str(issued.expires_on),
            "not_before": str(issued.issued_at),
            "resource": issued.resource,
            "token_type": "Bearer",
            "client_id": identity.client_id,
        },
        headers={"Date": http_date(ctx.now())},  # the emulator clock, as in entra.py
    )


ROUTES: list[Route] = [Route("/msi/token", ("GET",), "identity", msi_token, "identity")]
