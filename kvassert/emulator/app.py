"""The emulator's WSGI application: one werkzeug ``Map`` built from every route module's
``ROUTES`` (Key Vault, Entra, managed identity, admin), then for each request: match, inject the
route's fault if one is set, call the handler, answer errors in the owning service's shape, log.

Malformed input never produces an unhandled 500: handlers raise ``WireError``s, werkzeug's HTTP
errors (body too large, bad form data) and any unexpected exception are turned into the
service's own error body (the latter logged with its traceback).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule
from werkzeug.wrappers import Request, Response

from kvassert.emulator import admin, entra, identity, keyvault
from kvassert.emulator.routing import RequestContext, Route, WireError, json_response
from kvassert.emulator.state import EmulatorState, Fault, LogEntry

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

logger = logging.getLogger("kvassert.emulator")

MAX_BODY_BYTES = 1024 * 1024
DRAIN_LIMIT = 16 * MAX_BODY_BYTES  # past this, an over-limit client may see a reset instead
ROUTE_MODULES = (keyvault, entra, identity, admin)


class IdentityError(WireError):
    """The App Service identity endpoint's error shape (``{"statusCode","message",
    "correlationId"}``, as ``identity.py`` renders it), for injected faults."""

    def response(self) -> Response:
        correlation = str(uuid.uuid4())
        body = {"statusCode": self.status, "message": self.message, "correlationId": correlation}
        return json_response(body, status=self.status, headers={"X-CORRELATION-ID": correlation})


# Service -> the WireError class that renders its error body: ``cls(message, status=...)``.
SERVICE_ERRORS: dict[str, type[WireError]] = {
    "keyvault": keyvault.KeyVaultError,
    "entra": entra.EntraWireError,
    "identity": IdentityError,
    "admin": admin.AdminError,
}


class DroppedConnection(ConnectionResetError):
    """Raised to the WSGI server to close the connection without an answer (fault ``drop``).
    cheroot closes silently on ECONNRESET."""

    def __init__(self) -> None:
        super().__init__(errno.ECONNRESET, "connection dropped by an injected fault")


def buffer_streamed_body(environ: WSGIEnvironment, limit: int) -> WSGIEnvironment:
    """A body sent without Content-Length (chunked; the server dechunks it), read into memory up
    to one byte past ``limit`` and given the length it had.

    werkzeug stops reading such a stream at ``max_content_length`` without complaint, so an
    over-limit body would reach a handler cut to the limit; with a length, werkzeug answers 413
    as for any body. A malformed chunk keeps what was read and claims one byte more: werkzeug
    then reports the client as disconnected (400), as it did when it read the stream itself."""
    stream = environ["wsgi.input"]
    try:
        body, broken = stream.read(limit + 1), False
    except (OSError, ValueError):  # cheroot: "Bad chunked transfer size", a dropped client
        body, broken = b"", True
    if len(body) > limit:  # read the rest too (see drain_oversized_body)
        with contextlib.suppress(OSError, ValueError):
            _drain(stream, DRAIN_LIMIT)
    # A chunked Transfer-Encoding makes werkzeug ignore Content-Length: the body is plain now.
    streamed = ("wsgi.input_terminated", "HTTP_TRANSFER_ENCODING")
    buffered = {k: v for k, v in environ.items() if k not in streamed}
    buffered.update({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body) + broken)})
    return buffered


def drain_oversized_body(environ: WSGIEnvironment, limit: int) -> None:
    """Read and drop a body whose Content-Length is over ``limit`` (up to ``DRAIN_LIMIT``), so
    that the client has sent it all when the 413 goes out: cheroot closes the connection after a
    413 without reading on, and a client still sending would see a reset, not the answer."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    if length > limit:
        with contextlib.suppress(OSError, ValueError):  # the client went away: nobody waits
            _drain(environ["wsgi.input"], min(length, DRAIN_LIMIT))


def _drain(stream: Any, most: int) -> None:
    while most > 0:
        block = stream.read(min(most, 65536))
        if not block:
            return
        most -= len(block)


def default_routes() -> list[Route]:
    return [route for module in ROUTE_MODULES for route in module.ROUTES]


def service_for_path(path: str) -> str:
    """The service an unmatched path most likely addresses, for the shape of its 404."""
    first = path.lstrip("/").split("/", 1)[0]
    if first == "admin":
        return "admin"
    if first in ("keys", "certificates", "secrets", "deletedkeys", "deletedcertificates"):
        return "keyvault"
    if first == "msi":
        return "identity"
    return "entra" if "oauth2" in path or "discovery" in path or "openid" in path else "keyvault"


class EmulatorApp:
    """WSGI callable. ``base_url`` (``https://127.0.0.1:PORT``) is the origin used in ids and
    challenges; without it the request's own host is used."""

    def __init__(
        self,
        state: EmulatorState,
        *,
        base_url: str | None = None,
        routes: Sequence[Route] | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.state = state
        self.base_url = base_url.rstrip("/") if base_url else None
        self.routes = list(routes) if routes is not None else default_routes()
        self.operations = frozenset(r.operation for r in self.routes)
        self.max_body_bytes = max_body_bytes
        rules = [
            Rule(r.rule, methods=list(r.methods), endpoint=index)
            for index, r in enumerate(self.routes)
        ]
        self.url_map = Map(rules, merge_slashes=False, strict_slashes=False)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("wsgi.input_terminated") and not environ.get("CONTENT_LENGTH"):
            environ = buffer_streamed_body(environ, self.max_body_bytes)
        else:
            drain_oversized_body(environ, self.max_body_bytes)
        request = Request(environ)
        request.max_content_length = self.max_body_bytes
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        """Answer one request (raises ``DroppedConnection`` for a ``drop`` fault)."""
        base_url = self.base_url or f"{request.scheme}://{request.host}"
        ctx = RequestContext(self.state, request, base_url, extra={"operations": self.operations})
        route, values, service = self._match(request)
        if isinstance(route, Response):  # logged as the service whose shape the answer has
            handle = self._begin(request, "unmatched", service)
            self.state.log.finish(handle, status=route.status_code, principal="", fault=False)
            return route
        if route.service == "admin":  # the admin API is neither logged nor faulted
            return self._call(route, ctx, values)
        handle = self._begin(request, route.operation, route.service)
        fault = self.state.faults.take(route.operation)
        injected = fault is not None and (
            fault.drop or fault.status is not None or fault.body is not None
        )
        try:
            response = self._fault(route, fault, request) if fault else None
        except DroppedConnection:
            self.state.log.finish(handle, status=0, principal=ctx.principal, fault=True)
            raise
        if response is None:
            response = self._call(route, ctx, values)
        self.state.log.finish(
            handle, status=response.status_code, principal=ctx.principal, fault=injected
        )
        if request.method not in ("GET", "HEAD") and response.status_code < 400:
            self.state.changed()
        return response

    def _begin(self, request: Request, operation: str, service: str) -> list[LogEntry]:
        entry = LogEntry(self.state.clock.now(), request.method, request.path, operation, service)
        return self.state.log.begin(entry)

    def _match(self, request: Request) -> tuple[Route | Response, dict[str, Any], str]:
        """The route and its values, or the error answer; and the service either belongs to."""
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            index, values = adapter.match()
            route = self.routes[int(index)]
            return route, dict(values), route.service
        except MethodNotAllowed as exc:
            allowed = sorted(exc.valid_methods or ())
            service = self._service_of(adapter, allowed) or service_for_path(request.path)
            error = self._error(service, f"The {request.method} method is not allowed here.", 405)
            error.headers["Allow"] = ", ".join(allowed)
            return error, {}, service
        except (NotFound, RequestRedirect):
            service = service_for_path(request.path)
            return self._error(service, f"No route for {request.path[:200]}.", 404), {}, service

    def _service_of(self, adapter: MapAdapter, methods: Sequence[str]) -> str | None:
        for method in methods:
            try:
                index, _ = adapter.match(method=method)
                return self.routes[int(index)].service
            except HTTPException:
                continue
        return None

    def _call(self, route: Route, ctx: RequestContext, values: dict[str, Any]) -> Response:
        try:
            return route.handler(ctx, **values)
        except WireError as exc:
            return exc.response()
        except HTTPException as exc:  # e.g. 413 from max_content_length, 400 from bad forms
            return self._error(route.service, exc.description or exc.name, exc.code or 400)
        except (ConnectionError, TimeoutError):
            raise
        except Exception:
            logger.exception("unhandled error in %s %s", ctx.request.method, ctx.request.path)
            return self._error(route.service, "The emulator hit an internal error.", 500)

    def _error(self, service: str, message: str, status: int) -> Response:
        cls = SERVICE_ERRORS.get(service, keyvault.KeyVaultError)
        return cls(message, status=status).response()

    def _fault(self, route: Route, fault: Fault, request: Request) -> Response | None:
        """The injected answer, or None to let the handler run after a pure delay."""
        if fault.latency_ms:
            time.sleep(fault.latency_ms / 1000)
        if fault.drop:
            raise DroppedConnection()
        if fault.body is not None:
            content_type = fault.content_type or (
                "text/html; charset=utf-8"
                if fault.body.lstrip().startswith("<")
                else "application/json; charset=utf-8"
            )
            response = Response(fault.body, status=fault.status or 200, content_type=content_type)
        elif fault.status is not None:
            message = f"Injected fault: {route.operation} answered {fault.status}."
            if fault.status == 429:
                message = "Rate limit is exceeded. Try again in a few seconds (injected fault)."
            response = self._error(route.service, message, fault.status)
        else:
            return None
        if fault.retry_after is not None:
            response.headers["Retry-After"] = str(fault.retry_after)
        return response
