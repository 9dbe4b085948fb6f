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
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kvassert.cache import TokenCache
from kvassert.errors import (
    AllCredentialsFailedError,
    CredentialUnavailableError,
    KvassertError,
    SigningError,
    TokenRequestError,
)
from kvassert.sources import (
    CertificateSource,
    CredentialSource,
    KeyVaultSource,
    VaultCredentialFactory,
    make_sources,
)
from kvassert.token_client import AccessToken, TokenClient, build_form, target_for
from kvassert.transport import RetryPolicy, ca_bundle_for

if TYPE_CHECKING:
    import os

    from azure.core.credentials import AccessToken as AzureAccessToken
    from azure.core.credentials import AccessTokenInfo, TokenRequestOptions

    from kvassert.settings import AzureAdSettings

_LOG = logging.getLogger("kvassert")
SKEW_CODE = 700024
# The Date header has 1-second resolution and the round trip adds a little: smaller offsets are
# noise, not skew.
SKEW_TOLERANCE_SECONDS = 5.0


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
        certificate_refresh_interval: float = 3600.0,
        expiry_warning_days: int = 30,
    ) -> None:
        self.settings = settings
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
        self._client = token_client or TokenClient(policy=retry_policy)
        self._cache = cache or TokenCache()
        self._allowed_tenants = frozenset(additionally_allowed_tenants)
        self._targets: dict[tuple[Any, ...], tuple[Any, ...]] = {}
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
        from azure.core.credentials import AccessToken as AzureAccessToken

        token = self.token(*scopes, claims=claims, tenant_id=tenant_id)
        return AzureAccessToken(token.token, token.expires_on)

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """Like ``get_token``, with ``refresh_on`` and ``token_type``."""
        from azure.core.credentials import AccessTokenInfo

        options = options or {}
        token = self.token(
            *scopes, claims=options.get("claims"), tenant_id=options.get("tenant_id")
        )
        return AccessTokenInfo(
            token.token,
            token.expires_on,
            token_type=token.token_type,
            refresh_on=token.refresh_on,
        )

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
        return self._cache.get(key, lambda: self._acquire(target, None))

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
        for source in self._sources:
            source.close()
        self._client.close()

    def __enter__(self) -> AzureAdCredential:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # acquisition ------------------------------------------------------------------------------

    def _resolve_target(self, scopes: tuple[str, ...], tenant_id: str | None) -> tuple[Any, ...]:
        settings = self.settings
        endpoint = settings.token_endpoint()
        if tenant_id and tenant_id != settings.tenant_id:
            if "*" not in self._allowed_tenants and tenant_id not in self._allowed_tenants:
                raise KvassertError(
                    f"a token for tenant {tenant_id!r} was requested, but the credential is "
                    f"configured for {settings.tenant_id!r}; add it to "
                    "additionally_allowed_tenants to allow it"
                )
            endpoint = endpoint.replace(f"/{settings.tenant_id}/", f"/{tenant_id}/", 1)
        target = target_for(endpoint, settings.token_version, tuple(scopes))
        key = (endpoint, settings.client_id, target.scope, target.resource)
        with self._targets_lock:
            self._targets[(scopes, tenant_id)] = (key, target)
        return key, target

    def _acquire(self, target: Any, claims: str | None) -> AccessToken:
        failures: list[tuple[str, str]] = []
        errors: list[KvassertError] = []
        for source in self._sources:
            try:
                return self._request_with_recovery(source, target, claims)
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

    def _request_with_recovery(
        self, source: CredentialSource, target: Any, claims: str | None
    ) -> AccessToken:
        """One request, and at most one retry when the rejection can be fixed here: a clock
        skew (AADSTS700024 with the server's Date) or a rotated certificate."""
        try:
            return self._request_with(source, target, claims)
        except TokenRequestError as exc:
            if exc.aadsts == SKEW_CODE and exc.server_time is not None:
                offset = exc.server_time - time.time()
                if abs(offset - self.clock_offset) >= SKEW_TOLERANCE_SECONDS:
                    _LOG.warning(
                        "Entra's clock differs from this machine's by %+.0f s (AADSTS700024); "
                        "correcting assertion times and retrying once",
                        offset,
                    )
                    self.clock_offset = offset
                    return self._request_with(source, target, claims)
            elif exc.credential_problem and source.reload():
                _LOG.warning(
                    "credential %s was rejected (AADSTS%s) and has changed in the vault; "
                    "retrying once",
                    source.label,
                    exc.aadsts,
                )
                return self._request_with(source, target, claims)
            raise

    def _request_with(
        self, source: CredentialSource, target: Any, claims: str | None
    ) -> AccessToken:
        source.load()
        endpoint = target.endpoint
        now = time.time()
        if isinstance(source, KeyVaultSource):
            source.refresh_if_stale(now)
        fields = source.form_fields(endpoint, now + self.clock_offset)
        form = build_form(self.settings.client_id, target, fields, claims=claims)
        context: Mapping[str, str] = {
            "client_id": self.settings.client_id,
            "tenant": self.settings.tenant_id,
            "scope": target.label,
            **source.hint_context(),
        }
        return self._client.request(endpoint, form, verify=ca_bundle_for(endpoint), context=context)


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
