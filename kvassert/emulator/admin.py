"""The admin API (``{base_url}/admin``): JSON in and out, loopback callers only.

- ``POST /admin/applications``: create or replace an app registration. ``certificates`` are
  base64 DER; ``vault_certificates`` names vault certificates whose enabled versions (at the
  time of the call) are registered too.
- ``POST /admin/identities``: a user-assigned managed identity.
- ``POST``/``DELETE``/``GET /admin/role-assignments``: built-in role (name or id) or custom
  ``data_actions``; DELETE with only ``principal_id`` removes all of that principal's.
- ``POST``/``DELETE``/``GET /admin/faults``: inject faults per operation.
- ``POST``/``GET /admin/clock``: shift the emulator's now by ``offset_seconds``.
- ``GET``/``DELETE /admin/log``: the request log (admin calls are not logged).
- ``POST /admin/reset``, ``GET /admin/state`` (a summary), ``GET /admin/info``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from werkzeug.wrappers import Response

from kvassert.emulator import kvwire as wire
from kvassert.emulator.routing import RequestContext, Route, WireError, json_response
from kvassert.emulator.state import Fault
from kvassert.emulator.vault import VaultError

MAX_LATENCY_MS = 60_000
MAX_CLOCK_OFFSET = 100 * 366 * 86_400


class AdminError(WireError):
    """``{"error": {"code", "message"}}``; 400 unless told otherwise."""

    def response(self) -> Response:
        code = {403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}.get(
            self.status, "BadRequest" if self.status < 500 else "InternalError"
        )
        return json_response({"error": {"code": code, "message": self.message}}, status=self.status)


def info(ctx: RequestContext) -> dict[str, str]:
    """The startup line's fields that the application itself knows (all but ``ca_file``)."""
    directory = ctx.state.directory
    return {
        "vault_url": ctx.base_url,
        "authority": ctx.base_url,
        "tenant_id": directory.tenant_id,
        "identity_endpoint": f"{ctx.base_url}/msi/token",
        "identity_header": directory.identity_header,
        "principal_id": directory.system_identity.principal_id,
        "client_id": directory.system_identity.client_id,
        "admin_url": f"{ctx.base_url}/admin",
    }


def _body(ctx: RequestContext) -> dict[str, Any]:
    raw = ctx.request.get_data(cache=True)
    if not raw:
        return {}
    try:
        return wire.parse_body(raw)
    except VaultError as exc:
        raise AdminError(exc.message) from None


def _field(
    data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None
) -> Any:
    try:
        return wire.get(data, name, kind, default)
    except VaultError:
        raise AdminError(f"'{name}' has an invalid type") from None


def _strings(data: Mapping[str, Any], name: str) -> list[str]:
    values = _field(data, name, list, [])
    if not all(isinstance(v, str) for v in values):
        raise AdminError(f"'{name}' must be a list of strings")
    return list(values)


def _required_str(data: Mapping[str, Any], name: str) -> str:
    value = _field(data, name, str)
    if not value:
        raise AdminError(f"'{name}' is required")
    return str(value)


# ---- handlers -----------------------------------------------------------------------------


def get_info(ctx: RequestContext) -> Response:
    return json_response(info(ctx))


def post_application(ctx: RequestContext) -> Response:
    body = _body(ctx)
    client_id = _required_str(body, "client_id")
    certificates: list[bytes] = []
    for text in _strings(body, "certificates"):
        try:
            certificates.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise AdminError("'certificates' must hold base64 DER certificates") from None
    for name in _strings(body, "vault_certificates"):
        try:
            versions = ctx.state.vault.certificates.versions(name)
        except VaultError:
            raise AdminError(f"unknown vault certificate {name!r}", status=404) from None
        certificates += [v.der for v in versions if v.attributes.enabled]
    known = {"client_id", "tenant_id", "certificates", "vault_certificates", "secrets",
             "federated_identities"}  # fmt: skip
    extra = {k: v for k, v in body.items() if k not in known}
    try:
        app = ctx.state.directory.register_application(
            client_id,
            tenant_id=_field(body, "tenant_id", str),
            certificates=certificates,
            secrets=_strings(body, "secrets"),
            federated_identities=_strings(body, "federated_identities"),
            **extra,
        )
    except (TypeError, ValueError, OverflowError) as exc:  # int(Infinity): OverflowError
        raise AdminError(str(exc)) from None
    return json_response(
        {
            "client_id": app.client_id,
            "principal_id": app.principal_id,
            "tenant_id": app.tenant_id,
            "certificates": len(app.certificates),
        }
    )


def post_identity(ctx: RequestContext) -> Response:
    body = _body(ctx)
    identity = ctx.state.directory.create_user_assigned_identity(
        _field(body, "client_id", str), _field(body, "principal_id", str)
    )
    return json_response(asdict(identity))


def _assignment_args(body: Mapping[str, Any]) -> tuple[str, str | None, list[str]]:
    return (
        _required_str(body, "principal_id"),
        _field(body, "role", str),
        _strings(body, "data_actions"),
    )


def post_role_assignment(ctx: RequestContext) -> Response:
    principal, role, actions = _assignment_args(_body(ctx))
    try:
        assignment = ctx.state.rbac.assign(principal, role, actions)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    return json_response(assignment.to_dict())


def delete_role_assignment(ctx: RequestContext) -> Response:
    principal, role, actions = _assignment_args(_body(ctx))
    try:
        removed = ctx.state.rbac.unassign(principal, role, actions)
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    return json_response({"removed": removed})


def get_role_assignments(ctx: RequestContext) -> Response:
    assignments = ctx.state.rbac.assignments(ctx.request.args.get("principal_id"))
    return json_response({"value": [a.to_dict() for a in assignments]})


def post_fault(ctx: RequestContext) -> Response:
    body = _body(ctx)
    route = _required_str(body, "route")
    operations = sorted(ctx.extra.get("operations", ()))
    if route not in operations or route.startswith("admin"):
        raise AdminError(f"unknown route {route!r}: expected one of {', '.join(operations)}")
    fault = Fault(
        route=route,
        status=_field(body, "status", int),
        retry_after=_field(body, "retry_after", int),
        count=_field(body, "count", int),
        latency_ms=_field(body, "latency_ms", int, 0),
        drop=_field(body, "drop", bool, False),
        body=_field(body, "body", str),
        content_type=_field(body, "content_type", str),
    )
    if fault.status is not None and not 100 <= fault.status <= 599:
        raise AdminError("'status' must be an HTTP status (100-599)")
    if fault.count is not None and fault.count < 1:
        raise AdminError("'count' must be at least 1 (omit it for 'until cleared')")
    if not 0 <= fault.latency_ms <= MAX_LATENCY_MS or (fault.retry_after or 0) < 0:
        raise AdminError(f"'latency_ms' must be 0-{MAX_LATENCY_MS} and 'retry_after' >= 0")
    if not (fault.status or fault.latency_ms or fault.drop or fault.body is not None):
        raise AdminError("a fault needs 'status', 'latency_ms', 'drop' or 'body'")
    return json_response(asdict(ctx.state.faults.add(fault)))


def delete_faults(ctx: RequestContext) -> Response:
    route = ctx.request.args.get("route") or _field(_body(ctx), "route", str)
    return json_response({"removed": ctx.state.faults.clear(route)})


def get_faults(ctx: RequestContext) -> Response:
    return json_response({"value": [asdict(f) for f in ctx.state.faults.list()]})


def clock(ctx: RequestContext) -> Response:
    if ctx.request.method == "POST":
        offset = _field(_body(ctx), "offset_seconds", (int, float))
        if offset is None:
            raise AdminError("'offset_seconds' is required")
        # NaN, infinities or 1e300 would break every time the emulator renders afterwards.
        if not -MAX_CLOCK_OFFSET <= offset <= MAX_CLOCK_OFFSET:
            raise AdminError(f"'offset_seconds' must be within +-{MAX_CLOCK_OFFSET} s (100 years)")
        ctx.state.clock.set_offset(float(offset))
    clock_ = ctx.state.clock
    return json_response({"offset_seconds": clock_.offset_seconds, "now": clock_.now()})


def get_log(ctx: RequestContext) -> Response:
    args = ctx.request.args
    entries = ctx.state.log.entries(
        operation=args.get("operation"), principal=args.get("principal")
    )
    return json_response({"value": [asdict(e) for e in entries]})


def delete_log(ctx: RequestContext) -> Response:
    ctx.state.log.clear()
    return json_response({"cleared": True})


def post_reset(ctx: RequestContext) -> Response:
    ctx.state.reset()
    return json_response(info(ctx))


def get_state(ctx: RequestContext) -> Response:
    return json_response(ctx.state.summary())


# ---- the route table ----------------------------------------------------------------------


def _is_loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _admin(
    rule: str, methods: tuple[str, ...], name: str, fn: Callable[[RequestContext], Response]
) -> Route:
    def handler(ctx: RequestContext) -> Response:
        # The admin API can reset and re-key the emulator: loopback callers only.
        if not _is_loopback(ctx.request.remote_addr):
            raise AdminError("the admin API answers loopback callers only", status=403)
        return fn(ctx)

    return Route(f"/admin{rule}", methods, f"admin_{name}", handler, "admin")


ROUTES: list[Route] = [
    _admin("", ("GET",), "info", get_info),
    _admin("/info", ("GET",), "info", get_info),
    _admin("/applications", ("POST",), "applications", post_application),
    _admin("/identities", ("POST",), "identities", post_identity),
    _admin("/role-assignments", ("POST",), "role_assign", post_role_assignment),
    _admin("/role-assignments", ("DELETE",), "role_unassign", delete_role_assignment),
    _admin("/role-assignments", ("GET",), "role_assignments", get_role_assignments),
    _admin("/faults", ("POST",), "fault_add", post_fault),
    _admin("/faults", ("DELETE",), "fault_clear", delete_faults),
    _admin("/faults", ("GET",), "faults", get_faults),
    _admin("/clock", ("GET", "POST"), "clock", clock),
    _admin("/log", ("GET",), "log", get_log),
    _admin("/log", ("DELETE",), "log_clear", delete_log),
    _admin("/reset", ("POST",), "reset", post_reset),
    _admin("/state", ("GET",), "state", get_state),
]
