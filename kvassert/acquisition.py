"""How one token is acquired: the order of attempts, written once for sync and async.

``acquisition_flow`` is a generator in the style of httpx's auth flows: it yields ``Send`` and
``Reload`` steps, the sync or async credential performs each step's I/O and sends back the
result (or throws the error), and the generator returns the token. Credentials are tried in
order; one that cannot load is skipped; one Entra rejects with a credential-problem code falls
through to the next; a clock skew (AADSTS700024) or a rotated certificate earns exactly one
retry. ``resolve_target`` and ``request_context`` are the pure parts around it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from kvassert.errors import (
    AllCredentialsFailedError,
    CredentialUnavailableError,
    KvassertError,
    SigningError,
    TokenRequestError,
)
from kvassert.token_client import AccessToken, TokenTarget, target_for

if TYPE_CHECKING:
    from kvassert.settings import AzureAdSettings

_LOG = logging.getLogger("kvassert")
SKEW_CODE = 700024
# The Date header has 1-second resolution and the round trip adds a little: smaller offsets are
# noise, not skew.
SKEW_TOLERANCE_SECONDS = 5.0

_S = TypeVar("_S", bound="_Labelled")


class _Labelled(Protocol):
    @property
    def label(self) -> str: ...


class _Skewed(Protocol):
    clock_offset: float


@dataclass(frozen=True)
class Send(Generic[_S]):
    """Flow step: send one token request with ``source``; the result is the token."""

    source: _S


@dataclass(frozen=True)
class Reload(Generic[_S]):
    """Flow step: re-read ``source``; the result is True when it changed."""

    source: _S


Step = Send[_S] | Reload[_S]


def acquisition_flow(
    sources: Sequence[_S], clock: _Skewed
) -> Generator[Step[_S], Any, AccessToken]:
    """The order of attempts behind one token, written once for the sync and async credentials
    (as httpx writes an auth flow once): it yields ``Send``/``Reload`` steps, is sent their
    results or thrown their errors by the caller, which owns all I/O, and returns the token.

    Credentials are tried in order: one that cannot load is skipped, one that Entra rejects with
    a credential-problem code falls through to the next; one error is raised as itself, several
    as ``AllCredentialsFailedError``. ``clock.clock_offset`` is updated on a skew correction.
    """
    failures: list[tuple[str, str]] = []
    errors: list[KvassertError] = []
    for source in sources:
        try:
            return (yield from _recovering(source, clock))
        except (CredentialUnavailableError, SigningError) as exc:
            _LOG.warning("credential %s skipped: %s", source.label, exc)
            failures.append((source.label, str(exc)))
            errors.append(exc)
        except TokenRequestError as exc:
            if not exc.credential_problem:
                raise
            _LOG.warning(
                "credential %s rejected by Entra (AADSTS%s); trying the next one",
                source.label,
                exc.aadsts,
            )
            failures.append((source.label, str(exc)))
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise AllCredentialsFailedError(failures)


def _recovering(source: _S, clock: _Skewed) -> Generator[Step[_S], Any, AccessToken]:
    """One request, and at most one retry when the rejection can be fixed here: a clock skew
    (AADSTS700024 with the server's Date) or a rotated certificate."""
    try:
        token: AccessToken = yield Send(source)
        return token
    except TokenRequestError as exc:
        if exc.aadsts == SKEW_CODE and exc.server_time is not None:
            offset = exc.server_time - time.time()
            if abs(offset - clock.clock_offset) >= SKEW_TOLERANCE_SECONDS:
                _LOG.warning(
                    "Entra's clock differs from this machine's by %+.0f s (AADSTS700024); "
                    "correcting assertion times and retrying once",
                    offset,
                )
                clock.clock_offset = offset
                token = yield Send(source)
                return token
        elif exc.credential_problem and (yield Reload(source)):
            _LOG.warning(
                "credential %s was rejected (AADSTS%s) and has changed in the vault; retrying once",
                source.label,
                exc.aadsts,
            )
            token = yield Send(source)
            return token
        raise


def resolve_target(
    settings: AzureAdSettings,
    allowed_tenants: frozenset[str],
    scopes: tuple[str, ...],
    tenant_id: str | None,
) -> tuple[Hashable, TokenTarget]:
    """The cache key and token target for ``scopes`` in ``tenant_id`` (default: the configured
    tenant); raises ``KvassertError`` for a tenant not in ``allowed_tenants`` and
    ``ValueError`` for bad scopes."""
    endpoint = settings.token_endpoint()
    if tenant_id and tenant_id != settings.tenant_id:
        if "*" not in allowed_tenants and tenant_id not in allowed_tenants:
            raise KvassertError(
                f"a token for tenant {tenant_id!r} was requested, but the credential is "
                f"configured for {settings.tenant_id!r}; add it to "
                "additionally_allowed_tenants to allow it"
            )
        endpoint = endpoint.replace(f"/{settings.tenant_id}/", f"/{tenant_id}/", 1)
    target = target_for(endpoint, settings.token_version, tuple(scopes))
    return (endpoint, settings.client_id, target.scope, target.resource), target


def request_context(
    settings: AzureAdSettings, target: TokenTarget, hints: Mapping[str, str]
) -> dict[str, str]:
    """What error hints may name about a token request (never a secret)."""
    return {
        "client_id": settings.client_id,
        "tenant": settings.tenant_id,
        "scope": target.label,
        **hints,
    }
