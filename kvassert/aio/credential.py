"""The async credential: an azure-core ``AsyncTokenCredential`` built from an ``AzureAd`` section.

It is the sync ``kvassert.credential.AzureAdCredential`` with ``await``: the same target and
cache-key resolution (``resolve_target``), the same order of attempts (``acquisition_flow``, the
generator both credentials drive: fallback over the configured credentials, one retry after a
clock-skew correction or a certificate rotation), the same request building and answer parsing,
and the same cache rules (``AsyncTokenCache``). Use it from one event loop, and close it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kvassert.acquisition import Reload, acquisition_flow, request_context, resolve_target
from kvassert.aio.cache import AsyncTokenCache
from kvassert.aio.sources import (
    AsyncCredentialSource,
    AsyncVaultCredentialFactory,
    DefaultVaultCredentials,
    make_sources,
)
from kvassert.aio.token_client import AsyncTokenClient
from kvassert.errors import (
    AllCredentialsFailedError,
    CredentialUnavailableError,
    KvassertError,
    SigningError,
)
from kvassert.token_client import AccessToken, TokenTarget, build_form

if TYPE_CHECKING:
    import os

    from azure.core.credentials import AccessToken as AzureAccessToken
    from azure.core.credentials import AccessTokenInfo, TokenRequestOptions

    from kvassert.settings import AzureAdSettings
    from kvassert.transport import RetryPolicy

_LOG = logging.getLogger("kvassert")


class AzureAdCredential:
    """Tokens for the app configured in ``settings``, async (see ``from_appsettings``).

    Implements azure-core's ``AsyncTokenCredential`` and ``AsyncSupportsTokenInfo``. Coroutines
    of one event loop may share it; ``await close()`` it (or use ``async with``) to release the
    aiohttp session, the Key Vault clients and the managed identity credentials it made.
    ``vault_credential`` maps a ``CredentialDescription`` to an ``AsyncTokenCredential`` for Key
    Vault (default: ``azure.identity.aio.DefaultAzureCredential`` per managed identity).
    """

    def __init__(
        self,
        settings: AzureAdSettings,
        *,
        vault_credential: AsyncVaultCredentialFactory | None = None,
        sources: Iterable[AsyncCredentialSource] | None = None,
        retry_policy: RetryPolicy | None = None,
        token_client: AsyncTokenClient | None = None,
        cache: AsyncTokenCache | None = None,
        additionally_allowed_tenants: Iterable[str] = (),
        certificate_refresh_interval: float | None = None,
        expiry_warning_days: int | None = None,
    ) -> None:
        self.settings = settings
        # Keyword options win over the AzureAd:Kvassert settings, which give the defaults.
        if certificate_refresh_interval is None:
            certificate_refresh_interval = float(settings.certificate_refresh_interval_seconds)
        if expiry_warning_days is None:
            expiry_warning_days = settings.certificate_expiry_warning_days
        self._own_vault_credentials: DefaultVaultCredentials | None = None
        if sources is not None:
            self._sources = list(sources)
        else:
            if vault_credential is None:
                vault_credential = self._own_vault_credentials = DefaultVaultCredentials()
            self._sources = make_sources(
                settings,
                vault_credential,
                certificate_refresh_interval=certificate_refresh_interval,
                expiry_warning_days=expiry_warning_days,
                retry_policy=retry_policy,
            )
        if not self._sources:
            raise KvassertError(
                f"{settings.section}: no usable credential is configured (every entry of "
                "ClientCredentials is skipped or missing)"
            )
        self._client = token_client or AsyncTokenClient(policy=retry_policy)
        self._cache = cache or AsyncTokenCache()
        self._allowed_tenants = frozenset(additionally_allowed_tenants)
        self._targets: dict[tuple[Any, ...], tuple[Hashable, TokenTarget]] = {}
        # Seconds to add to this machine's clock when building assertions, learned from the
        # token endpoint's Date header after AADSTS700024 (see kvassert.credential).
        self.clock_offset = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"kvassert.aio.AzureAdCredential(client_id={self.settings.client_id!r}, "
            f"authority={self.settings.authority!r}, "
            f"credentials={[source.label for source in self._sources]!r})"
        )

    # azure-core protocols -----------------------------------------------------------------

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AzureAccessToken:
        """An access token for ``scopes``; raises ``TokenRequestError``,
        ``AllCredentialsFailedError`` or another ``KvassertError`` subclass."""
        from kvassert._azure_tokens import RedactedAccessToken

        token = await self.token(*scopes, claims=claims, tenant_id=tenant_id)
        return RedactedAccessToken(token.token, token.expires_on)

    async def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """Like ``get_token``, with ``refresh_on`` and ``token_type``."""
        from kvassert._azure_tokens import RedactedAccessTokenInfo

        options = options or {}
        token = await self.token(
            *scopes, claims=options.get("claims"), tenant_id=options.get("tenant_id")
        )
        return RedactedAccessTokenInfo(
            token.token,
            token.expires_on,
            token_type=token.token_type,
            refresh_on=token.refresh_on,
        )

    # kvassert API ---------------------------------------------------------------------------

    async def token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None
    ) -> AccessToken:
        """The kvassert ``AccessToken`` (with ``refresh_on`` and ``issued_at``) for ``scopes``."""
        lookup = (scopes, tenant_id)
        resolved = self._targets.get(lookup)
        if resolved is None:
            resolved = resolve_target(self.settings, self._allowed_tenants, scopes, tenant_id)
            self._targets[lookup] = resolved
        key, target = resolved
        if claims:
            # A claims challenge (CAE) asks for a token the cached one cannot satisfy.
            fresh = await self._acquire(target, claims)
            self._cache.put(key, fresh)
            return fresh
        return await self._cache.get(key, lambda: self._acquire(target, None))

    @property
    def client_assertion(self) -> Callable[[], Awaitable[str]]:
        """A zero-argument coroutine function returning a fresh assertion for this app's own
        token endpoint: ``await credential.client_assertion()``."""
        return self.assertion

    async def assertion(self, audience: str | None = None) -> str:
        """A fresh signed assertion from the first certificate credential that loads."""
        audience = audience or self.settings.token_endpoint()
        failures: list[tuple[str, str]] = []
        for source in self._sources:
            if not source.signs_assertions:
                failures.append((source.label, "does not produce signed assertions"))
                continue
            try:
                await source.load()
                return await source.assertion(audience, time.time())
            except (CredentialUnavailableError, SigningError) as exc:
                _LOG.warning("credential %s unavailable: %s", source.label, exc)
                failures.append((source.label, str(exc)))
        raise AllCredentialsFailedError(failures)

    @property
    def sources(self) -> tuple[AsyncCredentialSource, ...]:
        return tuple(self._sources)

    @property
    def token_requests(self) -> int:
        """How many token requests this credential has sent (for tests and benchmarks)."""
        return self._client.requests_sent

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for source in self._sources:
            await source.close()
        await self._client.close()
        if self._own_vault_credentials is not None:
            await self._own_vault_credentials.close()

    async def __aenter__(self) -> AzureAdCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # acquisition ------------------------------------------------------------------------------

    async def _acquire(self, target: TokenTarget, claims: str | None) -> AccessToken:
        """Drive ``acquisition_flow`` (as the sync credential does): await each step's I/O and
        hand back its result or error."""
        flow = acquisition_flow(self._sources, self)
        step = next(flow)
        while True:
            try:
                try:
                    if isinstance(step, Reload):
                        outcome: Any = await step.source.reload()
                    else:
                        outcome = await self._request_with(step.source, target, claims)
                except Exception as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(outcome)
            except StopIteration as done:
                token: AccessToken = done.value
                return token

    async def _request_with(
        self, source: AsyncCredentialSource, target: TokenTarget, claims: str | None
    ) -> AccessToken:
        await source.load()
        now = time.time()
        await source.refresh_if_stale(now)
        fields = await source.form_fields(target.endpoint, now + self.clock_offset)
        form = build_form(self.settings.client_id, target, fields, claims=claims)
        context = request_context(self.settings, target, source.hint_context())
        token = await self._client.request(target.endpoint, form, context=context)
        source.accepted()
        return token


def from_appsettings(
    path: str | os.PathLike[str] | None = None,
    *,
    section: str = "AzureAd",
    environment: str | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> AzureAdCredential:
    """Load ``appsettings.json`` (layered as .NET does; the sync loader) and build the async
    credential. ``options`` go to ``AzureAdCredential``. Raises ``ConfigError``."""
    from kvassert.settings import load_settings

    settings = load_settings(path, section=section, environment=environment, env=env)
    return AzureAdCredential(settings, **options)
