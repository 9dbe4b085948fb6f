"""Token requests to the Entra token endpoint: pure building and parsing, and a thin send.

``build_form`` and ``parse_token_response`` do no I/O, so every shape Entra can answer with is
testable without a server; ``TokenClient.request`` only posts through the shared session (whose
adapter owns retries, see ``transport``) and hands the answer to the parser.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote_plus

from kvassert.aadsts import CREDENTIAL_PROBLEM_CODES, hint_for
from kvassert.errors import TokenRequestError

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SCOPE_SUFFIX = "/.default"
# ASCII digits and a bounded count: \d also matches other scripts' digits, and int() refuses
# strings over 4300 digits (CVE-2020-10735), so a hostile body must not reach int() unbounded.
_AADSTS = re.compile(r"AADSTS([0-9]{1,9})")
_DIGITS = re.compile(r"[0-9]{1,15}")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An access token and the times that govern it (integer epoch seconds).

    ``refresh_on`` is when a caller should stop relying on the cached copy: Entra's
    ``refresh_in`` when it sends one, otherwise well before ``expires_on`` (see
    ``default_refresh_on``). The token string never appears in ``repr``.
    """

    token: str = field(repr=False)
    expires_on: int
    refresh_on: int
    token_type: str = "Bearer"
    issued_at: int = 0

    def __repr__(self) -> str:
        return (
            f"AccessToken(token=<redacted>, token_type={self.token_type!r}, "
            f"expires_on={self.expires_on}, refresh_on={self.refresh_on})"
        )


def default_refresh_on(issued_at: int, expires_on: int) -> int:
    """Refresh a twelfth of the lifetime (at least 5 minutes) before expiry, never before half
    of it: a 1-hour token refreshes at 55 minutes (as msal and azure-identity do, so kvassert
    signs no more often than they), a 24-hour one at 22 hours, a 10-minute one at 5. The
    background refresh runs a little earlier still (``refresher.refresh_due``)."""
    lifetime = max(0, expires_on - issued_at)
    # Half rounded up, so even a 1-second token is not due for refresh the moment it arrives.
    return max(issued_at + (lifetime + 1) // 2, expires_on - max(300, lifetime // 12))


@dataclass(frozen=True, slots=True)
class TokenTarget:
    """Where and for what a token is asked: the endpoint, and a v2 scope or a v1 resource."""

    endpoint: str
    scope: str = ""
    resource: str = ""

    @property
    def label(self) -> str:
        return self.scope or self.resource


def target_for(endpoint: str, version: str, scopes: tuple[str, ...]) -> TokenTarget:
    """Turn azure-core style scopes into a v2 ``scope`` or a v1 ``resource``.

    Raises ``ValueError`` when no scope is given, or several for v1 (a v1 request names one
    resource).
    """
    if not scopes or not all(isinstance(s, str) and s.strip() for s in scopes):
        raise ValueError("at least one non-empty scope is required, e.g. api://my-api/.default")
    if version == "v1":
        if len(scopes) != 1:
            raise ValueError("a v1 token request takes exactly one resource")
        resource = scopes[0]
        if resource.endswith(DEFAULT_SCOPE_SUFFIX):
            resource = resource[: -len(DEFAULT_SCOPE_SUFFIX)]
        return TokenTarget(endpoint=endpoint, resource=resource)
    return TokenTarget(endpoint=endpoint, scope=" ".join(scopes))


def build_form(
    client_id: str,
    target: TokenTarget,
    credential_fields: Mapping[str, str],
    *,
    claims: str | None = None,
) -> dict[str, str]:
    """The form-encoded body of a client-credentials request (DESIGN section 2)."""
    form = {"client_id": client_id, "grant_type": GRANT_TYPE}
    if target.resource:
        form["resource"] = target.resource
    else:
        form["scope"] = target.scope
    form.update(credential_fields)
    if claims:
        form["claims"] = claims
    return form


def assertion_fields(assertion: str) -> dict[str, str]:
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


def server_time(headers: Mapping[str, str]) -> float | None:
    """The response's ``Date`` header as epoch seconds, used to measure clock skew."""
    value = headers.get("Date") or headers.get("date")
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
        if moment.tzinfo is None:
            # RFC 5322 §3.3: "-0000" is still UT, only without the sender's zone; left naive,
            # timestamp() would read it as this machine's local time.
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        return int(value)
    return None


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    context: Mapping[str, str],
) -> AccessToken:
    """An ``AccessToken`` from a 200 answer, else a ``TokenRequestError`` with the AADSTS code,
    ids and a hint. Garbage (HTML, truncated JSON, missing fields) is an error, never a crash."""
    endpoint = context.get("endpoint", "the token endpoint")
    try:
        document = json.loads(body.decode("utf-8")) if body else None
    except (ValueError, RecursionError):
        # ValueError covers bad UTF-8, bad JSON and numbers past int()'s digit limit;
        # RecursionError, nesting deeper than the interpreter allows.
        document = None
    if status == 200:
        return _parse_success(document, status, now, endpoint)
    if not isinstance(document, dict):
        raise TokenRequestError(
            f"{endpoint} answered HTTP {status} with a body that is not an Entra error "
            f"({_describe(body)})",
            status=status,
            retry_after=_retry_after(headers),
        )
    return _raise_error(document, status, headers, context)


def _parse_success(document: Any, status: int, now: float, endpoint: str) -> AccessToken:
    if not isinstance(document, dict):
        raise TokenRequestError(
            f"{endpoint} answered HTTP 200 with a body that is not a JSON object", status=status
        )
    token = document.get("access_token")
    expires_in = _int_field(document, "expires_in")
    if not isinstance(token, str) or not token or expires_in is None or expires_in <= 0:
        raise TokenRequestError(
            f"{endpoint} answered HTTP 200 without a usable access_token/expires_in",
            status=status,
        )
    issued_at = int(now)
    expires_on = issued_at + expires_in
    refresh_in = _int_field(document, "refresh_in")
    refresh_on = (
        issued_at + refresh_in
        if refresh_in is not None and 0 < refresh_in < expires_in
        else default_refresh_on(issued_at, expires_on)
    )
    token_type = document.get("token_type")
    return AccessToken(
        token=token,
        expires_on=expires_on,
        refresh_on=refresh_on,
        token_type=token_type if isinstance(token_type, str) and token_type else "Bearer",
        issued_at=issued_at,
    )


def _raise_error(
    document: Mapping[str, Any],
    status: int,
    headers: Mapping[str, str],
    context: Mapping[str, str],
) -> AccessToken:
    error = str(document.get("error") or "")
    description = str(document.get("error_description") or "")
    codes = document.get("error_codes")
    code = 0
    if isinstance(codes, list) and codes and type(codes[0]) is int:  # not bool
        code = codes[0]
    elif match := _AADSTS.search(description):
        code = int(match.group(1))
    # Entra appends "Trace ID: ... Correlation ID: ... Timestamp: ..." to the description; the
    # ids are reported separately, so keep only the sentence that explains the failure.
    summary = description.split("\r\n")[0].split(" Trace ID:")[0].strip()
    message = f"token request to {context.get('endpoint', 'Entra')} failed: HTTP {status}"
    if error:
        message += f" {error}"
    if summary:
        message += f": {summary}"
    raise TokenRequestError(
        message,
        status=status,
        error=error,
        aadsts=code,
        correlation_id=str(document.get("correlation_id") or ""),
        trace_id=str(document.get("trace_id") or ""),
        hint=hint_for(code, context),
        credential_problem=code in CREDENTIAL_PROBLEM_CODES,
        retry_after=_retry_after(headers),
        server_time=server_time(headers),
    )


def token_from_answer(
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    context: Mapping[str, str],
    sent: Mapping[str, str] | None = None,
) -> AccessToken:
    """What the sync and async clients do with an answer: refuse a redirect (it could carry the
    credential to another host), else ``parse_token_response`` of the body without the
    credential of ``sent`` (the request's form; see ``without_credential``)."""
    if 300 <= status < 400:
        raise TokenRequestError(
            f"{endpoint} answered a redirect (HTTP {status}); kvassert never follows a redirect "
            "with a credential: check AzureAd:Instance",
            status=status,
        )
    return parse_token_response(
        status,
        headers,
        without_credential(body, sent or {}),
        now=now,
        context={**context, "endpoint": endpoint},
    )


def without_credential(body: bytes, form: Mapping[str, str]) -> bytes:
    """``body`` with the request's client secret and assertion blanked out. Error text quotes
    Entra's description and the start of a body that is not JSON; a proxy's error page or an
    STS that echoes the request would otherwise carry the credential into logs."""
    for name in ("client_secret", "client_assertion"):
        value = form.get(name)
        if value:
            for written in {value, quote_plus(value)}:
                body = body.replace(written.encode(), b"<redacted>")
    return body


def unreachable(endpoint: str, exc: BaseException, deadline: float) -> TokenRequestError:
    """The error for a token request that got no answer, even after retries."""
    return TokenRequestError(
        f"could not reach {endpoint}: {type(exc).__name__} (after retries within {deadline:g}s)",
        status=0,
    )


def _describe(body: bytes) -> str:
    if not body:
        return "empty body"
    head = body[:40].decode("utf-8", "replace").strip().replace("\n", " ")
    return f"{len(body)} bytes starting {head!r}"


class TokenClient:
    """Posts token requests through a pooled, retrying session (see ``transport``).

    ``clock`` dates the answers: a token's ``issued_at``, ``expires_on`` and ``refresh_on`` are
    read on it, so they compare with the clock of the cache that keeps the token.
    """

    def __init__(
        self, session: Any = None, *, policy: Any = None, clock: Callable[[], float] = time.time
    ) -> None:
        from kvassert.transport import RetryPolicy, make_session

        self.policy = policy or RetryPolicy()
        self._session = session or make_session(self.policy)
        self._clock = clock
        self.requests_sent = 0

    def request(
        self,
        endpoint: str,
        form: Mapping[str, str],
        *,
        verify: str | bool = True,
        context: Mapping[str, str],
    ) -> AccessToken:
        """Send one token request (retried by the transport); raises ``TokenRequestError``."""
        import requests

        self.requests_sent += 1
        try:
            response = self._session.post(
                endpoint,
                data=dict(form),
                timeout=self.policy.timeout,
                verify=verify,
                allow_redirects=False,
                headers={"Accept": "application/json"},
            )
        except requests.RequestException as exc:
            raise unreachable(endpoint, exc, self.policy.deadline) from None
        return token_from_answer(
            endpoint,
            response.status_code,
            response.headers,
            response.content,
            now=self._clock(),
            context=context,
            sent=form,
        )

    def close(self) -> None:
        self._session.close()
