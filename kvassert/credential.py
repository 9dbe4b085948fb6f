"""The public credential: an azure-core ``TokenCredential`` built from an ``AzureAd`` section.

``get_token`` serves from the cache (a lock-free hit) and otherwise acquires once per key for all
concurrent callers: it tries the configured credentials in order, skipping ones that cannot load
and falling through on Entra's credential-problem codes, and raises one error that lists every
credential and why it failed. ``client_assertion`` is a zero-argument callable returning a fresh
assertion for the app's own token endpoint, for msal and azure-identity.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kvassert.acquisition import Reload, acquisition_flow, request_context, resolve_target
from kvassert.cache import TokenCache
from kvassert.errors import (
    AllCredentialsFailedError,
    CredentialUnavailableError,
    KvassertError,
    SigningError,
)
from kvassert.refresher import BackgroundRefresher, Wait, refresh_due, wall_wait
from kvassert.sources import (
    CertificateSource,
    CredentialSource,
    KeyVaultSource,
    VaultCredentialFactory,
    make_sources,
)
from kvassert.token_client import AccessToken, TokenClient, TokenTarget, build_form
from kvassert.transport import RetryPolicy, ca_bundle_for

if TYPE_CHECKING:
    import os

    from azure.core.credentials import AccessToken as AzureAccessToken
    from azure.core.credentials import AccessTokenInfo, TokenRequestOptions

    from kvassert.settings import AzureAdSettings
    from kvassert.shared_cache import RedisTokenStore

_LOG = logging.getLogger("kvassert")


class _Hot:
    """A served token with its azure-core forms built once, so a cache hit allocates nothing."""

    __slots__ = ("azure", "info", "token", "used")

    def __init__(self, token: AccessToken, *, used: bool) -> None:
        # azure-core's types, with the token kept out of their repr
        from kvassert._azure_tokens import RedactedAccessToken, RedactedAccessTokenInfo

        self.token = token
        self.azure = RedactedAccessToken(token.token, token.expires_on)
        self.info = RedactedAccessTokenInfo(
            token.token, token.expires_on, token_type=token.token_type, refresh_on=token.refresh_on
        )
        self.used = used


class AzureAdCredential:
    """Tokens for the app configured in ``settings`` (see ``from_appsettings``).

    Implements azure-core's ``TokenCredential`` and ``SupportsTokenInfo``. Thread-safe; close it
    (or use it as a context manager) to release HTTP sessions and Key Vault clients.
    """

    def __init__(
        self,
        settings: AzureAdSettings,
        *,
        vault_credential: VaultCredentialFactory | None = None,
        sources: Iterable[CredentialSource] | None = None,
        retry_policy: RetryPolicy | None = None,
        token_client: TokenClient | None = None,
        cache: TokenCache | None = None,
        additionally_allowed_tenants: Iterable[str] = (),
        certificate_refresh_interval: float | None = None,
        expiry_warning_days: int | None = None,
        background_refresh: bool | None = None,
        shared_cache: RedisTokenStore | None = None,
        refresh_wait: Wait = wall_wait,
    ) -> None:
        self.settings = settings
        # Keyword options win over the AzureAd:Kvassert settings, which give the defaults.
        if certificate_refresh_interval is None:
            certificate_refresh_interval = float(settings.certificate_refresh_interval_seconds)
        if expiry_warning_days is None:
            expiry_warning_days = settings.certificate_expiry_warning_days
        if background_refresh is None:
            background_refresh = settings.background_refresh
        self._owns_shared_cache = shared_cache is None and bool(settings.shared_cache_redis_url)
        if self._owns_shared_cache:
            from kvassert.shared_cache import RedisTokenStore

            shared_cache = RedisTokenStore(
                settings.shared_cache_redis_url or "",
                encryption_key=settings.shared_cache_encryption_key or "",
            )
        self._sources = (
            list(sources)
            if sources is not None
            else make_sources(
                settings,
                vault_credential=vault_credential,
                certificate_refresh_interval=certificate_refresh_interval,
                expiry_warning_days=expiry_warning_days,
                retry_policy=retry_policy,
            )
        )
        if not self._sources:
            raise KvassertError(
                f"{settings.section}: no usable credential is configured (every entry of "
                "ClientCredentials is skipped or missing)"
            )
        self._cache = cache or TokenCache()
        # One clock for the cache's decisions, the background refresh and the token times.
        self._clock = self._cache.clock
        self._client = token_client or TokenClient(policy=retry_policy, clock=self._clock)
        self._shared = shared_cache
        # The hot path: scopes -> the token and its prebuilt azure-core objects, for calls
        # without claims or tenant (nearly all). Entries are replaced, never changed, except
        # for the ``used`` mark that tells the background refresh the token is still wanted.
        self._hot: dict[tuple[str, ...], _Hot] = {}
        self._refresher = (
            BackgroundRefresher(self._refresh_in_background, clock=self._clock, wait=refresh_wait)
            if background_refresh
            else None
        )
        self._allowed_tenants = frozenset(additionally_allowed_tenants)
        self._targets: dict[tuple[Any, ...], tuple[Hashable, TokenTarget]] = {}
        self._targets_lock = threading.Lock()
        # Seconds to add to this machine's clock when building assertions, learned from the
        # token endpoint's Date header after AADSTS700024 (see _request_with_recovery).
        self.clock_offset = 0.0
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"AzureAdCredential(client_id={self.settings.client_id!r}, "
            f"authority={self.settings.authority!r}, "
            f"credentials={[source.label for source in self._sources]!r})"
        )

    # azure-core protocols -----------------------------------------------------------------

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AzureAccessToken:
        """An access token for ``scopes``; raises ``TokenRequestError``,
        ``AllCredentialsFailedError`` or another ``KvassertError`` subclass."""
        hot = self._hot.get(scopes)
        if (
            hot is not None
            and claims is None
            and tenant_id is None
            and self._clock() < hot.token.refresh_on
        ):
            hot.used = True
            return hot.azure
        return self._slow(scopes, claims, tenant_id).azure

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """Like ``get_token``, with ``refresh_on`` and ``token_type``."""
        claims = options.get("claims") if options else None
        tenant_id = options.get("tenant_id") if options else None
        hot = self._hot.get(scopes)
        if (
            hot is not None
            and claims is None
            and tenant_id is None
            and self._clock() < hot.token.refresh_on
        ):
            hot.used = True
            return hot.info
        return self._slow(scopes, claims, tenant_id).info

    def _slow(self, scopes: tuple[str, ...], claims: str | None, tenant_id: str | None) -> _Hot:
        token = self.token(*scopes, claims=claims, tenant_id=tenant_id)
        current = self._hot.get(scopes)
        if current is not None and current.token is token:
            current.used = True
            return current
        entry = _Hot(token, used=True)
        if tenant_id is None:
            self._hot[scopes] = entry
            if self._refresher is not None:
                self._refresher.schedule(scopes, refresh_due(token.issued_at, token.refresh_on))
        return entry

    def _refresh_in_background(self, scopes: Hashable) -> None:
        """Renew a token callers used since it was issued; let unused ones lapse."""
        assert isinstance(scopes, tuple)
        hot = self._hot.get(scopes)
        if hot is None or not hot.used or self._closed:
            return
        key, target = self._targets[(scopes, None)]
        current = hot.token
        token = self._cache.renew(key, lambda: self._acquire_shared(key, target, current))
        self._hot[scopes] = _Hot(token, used=False)
        assert self._refresher is not None
        self._refresher.schedule(scopes, refresh_due(token.issued_at, token.refresh_on))

    # kvassert API ---------------------------------------------------------------------------

    def token(
        self, *scopes: str, claims: str | None = None, tenant_id: str | None = None
    ) -> AccessToken:
        """The kvassert ``AccessToken`` (with ``refresh_on`` and ``issued_at``) for ``scopes``."""
        lookup = (scopes, tenant_id)
        cached = self._targets.get(lookup)
        if cached is None:
            cached = self._resolve_target(scopes, tenant_id)
        key, target = cached
        if claims:
            # A claims challenge (CAE) asks for a token the cached one cannot satisfy.
            fresh = self._acquire(target, claims)
            self._cache.put(key, fresh)
            return fresh
        return self._cache.get(key, lambda: self._acquire_shared(key, target, None))

    @property
    def client_assertion(self) -> Callable[[], str]:
        """A zero-argument callable returning a fresh assertion for this app's own token
        endpoint: msal's ``{"client_assertion": cred.client_assertion}`` and azure-identity's
        ``ClientAssertionCredential(func=cred.client_assertion)``."""
        return self.assertion

    def assertion(self, audience: str | None = None) -> str:
        """A fresh signed assertion from the first certificate credential that loads."""
        audience = audience or self.settings.token_endpoint()
        failures: list[tuple[str, str]] = []
        for source in self._sources:
            if not isinstance(source, CertificateSource):
                failures.append((source.label, "does not produce signed assertions"))
                continue
            try:
                source.load()
                return source.assertion(audience, time.time())
            except (CredentialUnavailableError, SigningError) as exc:
                _LOG.warning("credential %s unavailable: %s", source.label, exc)
                failures.append((source.label, str(exc)))
        raise AllCredentialsFailedError(failures)

    @property
    def sources(self) -> tuple[CredentialSource, ...]:
        return tuple(self._sources)

    @property
    def token_requests(self) -> int:
        """How many token requests this credential has sent (for tests and benchmarks)."""
        return self._client.requests_sent

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refresher is not None:
            self._refresher.close()
        if self._owns_shared_cache and self._shared is not None:
            self._shared.close()
        for source in self._sources:
            source.close()
        self._client.close()

    def __enter__(self) -> AzureAdCredential:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # acquisition ------------------------------------------------------------------------------

    def _resolve_target(
        self, scopes: tuple[str, ...], tenant_id: str | None
    ) -> tuple[Hashable, TokenTarget]:
        resolved = resolve_target(self.settings, self._allowed_tenants, scopes, tenant_id)
        with self._targets_lock:
            self._targets[(scopes, tenant_id)] = resolved
        return resolved

    def _acquire_shared(
        self, key: Hashable, target: TokenTarget, replacing: AccessToken | None
    ) -> AccessToken:
        """One acquisition for all processes sharing the Redis store, if one is configured."""
        if self._shared is None:
            return self._acquire(target, None)
        return self._shared.fetch_or_acquire(
            key, lambda: self._acquire(target, None), clock=self._clock, newer_than=replacing
        )

    def _acquire(self, target: TokenTarget, claims: str | None) -> AccessToken:
        """Drive ``acquisition_flow``: do each step's I/O, hand back its result or error."""
        flow = acquisition_flow(self._sources, self)
        step = next(flow)
        while True:
            try:
                try:
                    if isinstance(step, Reload):
                        outcome: Any = step.source.reload()
                    else:
                        outcome = self._request_with(step.source, target, claims)
                except Exception as exc:
                    step = flow.throw(exc)
                else:
                    step = flow.send(outcome)
            except StopIteration as done:
                token: AccessToken = done.value
                return token

    def _request_with(
        self, source: CredentialSource, target: TokenTarget, claims: str | None
    ) -> AccessToken:
        source.load()
        endpoint = target.endpoint
        # Assertion times are claims Entra checks against its own clock: this machine's wall
        # clock plus the learned skew, whatever clock the cache keeps tokens on.
        now = time.time()
        if isinstance(source, KeyVaultSource):
            source.refresh_if_stale(now)
        fields = source.form_fields(endpoint, now + self.clock_offset)
        form = build_form(self.settings.client_id, target, fields, claims=claims)
        context = request_context(self.settings, target, source.hint_context())
        token = self._client.request(
            endpoint, form, verify=ca_bundle_for(endpoint), context=context
        )
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
    """Load ``appsettings.json`` (layered as .NET does) and build the credential.

    ``options`` go to ``AzureAdCredential`` (``vault_credential``, ``retry_policy``,
    ``additionally_allowed_tenants``...). Raises ``ConfigError`` for configuration problems.
    """
    from kvassert.settings import load_settings

    settings = load_settings(path, section=section, environment=environment, env=env)
    return AzureAdCredential(settings, **options)
