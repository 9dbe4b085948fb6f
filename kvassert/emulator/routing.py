"""What every route module shares: the route record, the request context and wire errors.

Route modules (``keyvault``, ``entra``, ``identity``, ``admin``) each export ``ROUTES``: a list of
``Route``. The application (``app.py``) matches the URL, records the request in the log, applies
injected faults for the route's ``operation`` and calls the handler. A handler parses its input,
calls the state model, and renders; it signals a service error by raising a ``WireError``
subclass that renders the service's own error shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from kvassert.emulator.state import EmulatorState


@dataclass
class RequestContext:
    """One request as a handler sees it.

    ``base_url`` is the emulator's own origin (``https://127.0.0.1:PORT``) without a trailing
    slash; ``principal`` is filled by authentication (the ``oid`` of the bearer token) so the
    request log can show who asked.
    """

    state: EmulatorState
    request: Request
    base_url: str
    principal: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def now(self) -> float:
        return self.state.clock.now()


Handler = Callable[..., Response]


@dataclass(frozen=True)
class Route:
    """A URL rule (werkzeug syntax), its methods, the operation name used by the log, faults and
    RBAC (``sign``, ``certificate_get``, ``token``...), the handler ``(ctx, **url_values)``, and
    the service (``keyvault``, ``entra``, ``identity``, ``admin``) whose error shape an injected
    fault must use."""

    rule: str
    methods: tuple[str, ...]
    operation: str
    handler: Handler
    service: str


class WireError(Exception):
    """A service-level error: subclasses render the owning service's error body."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def response(self) -> Response:
        return json_response({"error": {"message": self.message}}, status=self.status)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Compact JSON, as the Azure services send it."""
    import json

    return Response(
        json.dumps(body, separators=(",", ":")),
        status=status,
        headers=headers or {},
        content_type="application/json; charset=utf-8",
    )
