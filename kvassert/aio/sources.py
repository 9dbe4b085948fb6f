"""Async credential sources: the sync sources wherever no network is involved.

``make_sources`` runs the sync ``make_sources`` (so ``SourceType`` dispatch, ``Skip`` and the
clear error for Windows stores are the sync code's) and swaps in async classes only for the two
sources that talk to a service: ``KeyVault`` (the async vault signer) and
``SignedAssertionFromManagedIdentity`` (an async managed identity credential). ``Path``,
``Base64Encoded``, ``ClientSecret``, ``SignedAssertionFilePath`` and the store sources are the
sync objects behind ``LocalSource``: their I/O is a small local file read and their signing is
CPU-only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from kvassert import sources as sync
from kvassert.assertion import build_assertion
from kvassert.errors import CredentialUnavailableError, KeyVaultError
from kvassert.signing import CertificateChain, b64url
from kvassert.token_client import assertion_fields
from kvassert.transport import ca_bundle_for, is_loopback_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential

    from kvassert.aio.vault_signer import KeyVaultSigner
    from kvassert.settings import AzureAdSettings, CredentialDescription
    from kvassert.transport import RetryPolicy
    from kvassert.vault_signer import VaultCertificate

_LOG = logging.getLogger("kvassert.sources")

AsyncVaultCredentialFactory = Callable[["CredentialDescription"], "AsyncTokenCredential"]


class AsyncSigner(Protocol):
    """A signer whose ``sign`` is a coroutine (the async Key Vault signer)."""

    @property
    def chain(self) -> CertificateChain: ...

    @property
    def algorithm(self) -> str: ...

    async def sign(self, signing_input: bytes) -> bytes: ...


@dataclass
class _SigningInput:
    """A ``Signer`` that keeps what it is asked to sign and signs nothing, so the pure builder
    lays out the assertion and the remote signature is added afterwards."""

    chain: CertificateChain
    algorithm: str
    value: bytes = field(default=b"", repr=False)

    def sign(self, signing_input: bytes) -> bytes:
        self.value = signing_input
        return b""


async def build_assertion_async(signer: AsyncSigner, **options: Any) -> str:
    """``kvassert.build_assertion`` (same keywords, same checks) with an async signer: the pure
    builder yields ``header.payload.`` with an empty signature, then the one awaited sign
    completes the compact JWS (RFC 7515 §7.1)."""
    capture = _SigningInput(signer.chain, signer.algorithm)
    unsigned = build_assertion(capture, **options)
    assert unsigned == capture.value.decode("ascii") + "."
    return unsigned + b64url(await signer.sign(capture.value))


class AsyncCredentialSource(ABC):
    """A configured credential, async: ``load``, ``form_fields``, ``reload`` as in the sync
    ``CredentialSource``; ``assertion`` for sources that sign assertions."""

    signs_assertions = False

    def __init__(self, description: CredentialDescription, label: str) -> None:
        self.description = description
        self.label = label

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"

    @abstractmethod
    async def load(self) -> None:
        """Prepare for use (idempotent); raises ``CredentialUnavailableError``."""

    @abstractmethod
    async def form_fields(self, audience: str, now: float) -> dict[str, str]:
        """The credential fields of one token request whose endpoint is ``audience``."""

    async def assertion(self, audience: str, now: float) -> str:
        raise CredentialUnavailableError(
            "does not produce signed assertions", source=self.description.path
        )

    async def refresh_if_stale(self, now: float) -> None:  # noqa: B027 - a no-op by default
        """Re-read the credential when the last read is old (Key Vault only)."""

    async def reload(self) -> bool:
        """Re-read the credential after Entra rejected it; True when something changed."""
        return False

    def accepted(self) -> None:  # noqa: B027 - only sources with versions care
        """Entra accepted this credential: remember what was used as known good."""

    def hint_context(self) -> dict[str, str]:
        return {}

    async def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release clients and sessions."""


class LocalSource(AsyncCredentialSource):
    """A sync source without network I/O, used as is."""

    def __init__(self, source: sync.CredentialSource) -> None:
        super().__init__(source.description, source.label)
        self.source = source
        self.signs_assertions = isinstance(source, sync.CertificateSource)

    async def load(self) -> None:
        self.source.load()

    async def form_fields(self, audience: str, now: float) -> dict[str, str]:
        return self.source.form_fields(audience, now)

    async def assertion(self, audience: str, now: float) -> str:
        if isinstance(self.source, sync.CertificateSource):
            return self.source.assertion(audience, now)
        return await super().assertion(audience, now)

    async def reload(self) -> bool:
        return self.source.reload()

    def accepted(self) -> None:
        self.source.accepted()

    def hint_context(self) -> dict[str, str]:
        return self.source.hint_context()

    async def close(self) -> None:
        self.source.close()


class KeyVaultSource(AsyncCredentialSource):
    """``SourceType: KeyVault`` with the async signer; re-read every ``refresh_interval``
    seconds and after Entra rejects the credential, as the sync source is."""

    signs_assertions = True

    def __init__(
        self,
        description: CredentialDescription,
        label: str,
        settings: AzureAdSettings,
        vault_credential: AsyncVaultCredentialFactory,
        *,
        refresh_interval: float = 3600.0,
        expiry_warning_days: int = 30,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(description, label)
        self._settings = settings
        self._vault_credential = vault_credential
        self._retry_policy = retry_policy
        self.refresh_interval = refresh_interval
        self.expiry_warning_days = expiry_warning_days
        self._signer: KeyVaultSigner | None = None
        self._loading = asyncio.Lock()
        self._reloading = asyncio.Lock()
        self._loaded_at = 0.0
        self._warned_versions: set[str] = set()
        self._known_good: VaultCertificate | None = None  # what Entra last accepted

    @property
    def vault_signer(self) -> KeyVaultSigner:
        if self._signer is None:
            raise CredentialUnavailableError("not loaded", source=self.description.path)
        return self._signer

    async def load(self) -> None:
        if self._signer is None:
            async with self._loading:
                if self._signer is None:
                    self._signer = await self._make_signer()

    async def _make_signer(self) -> KeyVaultSigner:
        from kvassert.aio.vault_signer import KeyVaultSigner

        signer = KeyVaultSigner(
            self.description.key_vault_url or "",
            self.description.key_vault_certificate_name or "",
            self._vault_credential(self.description),
            algorithm=self._settings.signing_algorithm,
            retry_policy=self._retry_policy,
        )
        try:
            await signer.load()
        except KeyVaultError as exc:
            await signer.close()
            raise CredentialUnavailableError(str(exc), source=self.description.path) from exc
        self._loaded(signer)
        return signer

    async def assertion(self, audience: str, now: float) -> str:
        await self.load()
        return await build_assertion_async(
            self.vault_signer,
            client_id=self._settings.client_id,
            audience=audience,
            send_x5c=self._settings.send_x5c,
            lifetime=self._settings.assertion_lifetime_seconds,
            now=now,
        )

    async def form_fields(self, audience: str, now: float) -> dict[str, str]:
        return assertion_fields(await self.assertion(audience, now))

    async def refresh_if_stale(self, now: float) -> None:
        if self._signer is not None and now - self._loaded_at >= self.refresh_interval:
            await self._reload(wait=False)

    async def reload(self) -> bool:
        return await self._reload(wait=True)

    async def _reload(self, *, wait: bool) -> bool:
        if self._signer is None or (not wait and self._reloading.locked()):
            return False  # another coroutine is re-reading; keep using the current certificate
        async with self._reloading:
            signer = self._signer
            before = signer.certificate.version
            try:
                after = await signer.load()
            except KeyVaultError as exc:
                _LOG.warning("re-reading %s failed: %s", self.label, exc)
                return False
            self._loaded(signer)
            changed, fallback = sync.after_reread(
                self.label, before, after, self._known_good, rejected=wait
            )
            if fallback is not None:
                await signer.use(fallback)
            return changed

    def accepted(self) -> None:
        if self._signer is not None:
            self._known_good = self._signer.certificate

    def _loaded(self, signer: KeyVaultSigner) -> None:
        import time

        self._loaded_at = time.time()
        sync.warn_if_expiring(
            self.label, signer.certificate, self._warned_versions, self.expiry_warning_days
        )

    def hint_context(self) -> dict[str, str]:
        if self._signer is None:
            return {}
        chain = self._signer.chain
        return {"x5t_s256": chain.x5t_s256, "x5t": chain.x5t}

    async def close(self) -> None:
        if self._signer is not None:
            await self._signer.close()


class ManagedIdentityAssertionSource(AsyncCredentialSource):
    """``SourceType: SignedAssertionFromManagedIdentity`` with an async managed identity
    credential (a federated identity credential on the app)."""

    def __init__(
        self, description: CredentialDescription, label: str, factory: AsyncVaultCredentialFactory
    ) -> None:
        super().__init__(description, label)
        self._factory = factory
        self._credential: AsyncTokenCredential | None = None

    async def load(self) -> None:
        if self._credential is None:
            self._credential = self._factory(self.description)

    async def form_fields(self, audience: str, now: float) -> dict[str, str]:
        from azure.core.exceptions import AzureError

        await self.load()
        assert self._credential is not None
        scope = (self.description.token_exchange_url or "api://AzureADTokenExchange").rstrip("/")
        try:
            token = (await self._credential.get_token(f"{scope}/.default")).token
        except AzureError as exc:
            raise CredentialUnavailableError(
                f"managed identity token for {scope} failed: {type(exc).__name__}",
                source=self.description.path,
            ) from None
        return assertion_fields(token)


class DefaultVaultCredentials:
    """The async twin of ``kvassert.sources.default_vault_credential``: one
    ``azure.identity.aio.DefaultAzureCredential`` per identity (``identity_client_id``), all
    closed by ``close()``."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if env is None else env
        self._made: dict[str, AsyncTokenCredential] = {}

    def __call__(self, description: CredentialDescription) -> AsyncTokenCredential:
        client_id = sync.identity_client_id(description, self._env)
        if client_id not in self._made:
            from azure.identity.aio import DefaultAzureCredential

            self._made[client_id] = DefaultAzureCredential(
                managed_identity_client_id=client_id or None, **self._identity_tls()
            )
        return self._made[client_id]

    def _identity_tls(self) -> dict[str, Any]:
        # aiohttp does not read REQUESTS_CA_BUNDLE as requests does: an https identity endpoint
        # on a loopback host (the emulator) gets the CA file that ca_bundle_for names. App
        # Service's own endpoint is plain http and needs nothing.
        endpoint = self._env.get("IDENTITY_ENDPOINT") or self._env.get("MSI_ENDPOINT") or ""
        if endpoint.startswith("https://") and is_loopback_url(endpoint):
            return {"connection_verify": ca_bundle_for(endpoint, self._env)}
        return {}

    async def close(self) -> None:
        made, self._made = list(self._made.values()), {}
        for credential in made:
            await credential.close()


def _no_sync_credential(description: CredentialDescription) -> TokenCredential:
    raise AssertionError("the async credential never uses a sync vault credential")


def make_sources(
    settings: AzureAdSettings,
    vault_credential: AsyncVaultCredentialFactory,
    *,
    certificate_refresh_interval: float = 3600.0,
    expiry_warning_days: int = 30,
    retry_policy: RetryPolicy | None = None,
) -> list[AsyncCredentialSource]:
    """The configured credentials in order, ``Skip``-ped ones left out (the sync dispatch)."""
    made: list[AsyncCredentialSource] = []
    for source in sync.make_sources(settings, vault_credential=_no_sync_credential):
        if isinstance(source, sync.KeyVaultSource):
            made.append(
                KeyVaultSource(
                    source.description,
                    source.label,
                    settings,
                    vault_credential,
                    refresh_interval=certificate_refresh_interval,
                    expiry_warning_days=expiry_warning_days,
                    retry_policy=retry_policy,
                )
            )
        elif isinstance(source, sync.ManagedIdentityAssertionSource):
            made.append(
                ManagedIdentityAssertionSource(source.description, source.label, vault_credential)
            )
        else:
            made.append(LocalSource(source))
    return made
