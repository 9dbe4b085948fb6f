"""One class per ``SourceType``: each turns a configured credential into token-request fields.

A source is built from its ``CredentialDescription`` without I/O; ``load()`` does the I/O that
can fail (read a file, read the vault certificate) and raises ``CredentialUnavailableError`` so
the credential can skip to the next configured source; ``form_fields(audience, now)`` yields the
``client_assertion`` (or ``client_secret``) for one token request.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvassert.assertion import build_assertion
from kvassert.errors import CredentialUnavailableError, KeyVaultError
from kvassert.signing import LocalCertificateSigner, Signer
from kvassert.token_client import assertion_fields

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

    from kvassert.settings import AzureAdSettings, CredentialDescription
    from kvassert.transport import RetryPolicy
    from kvassert.vault_signer import KeyVaultSigner, VaultCertificate

_LOG = logging.getLogger("kvassert.sources")

VaultCredentialFactory = Callable[["CredentialDescription"], "TokenCredential"]


class CredentialSource(ABC):
    """A configured credential. ``label`` names it in logs and errors (never a secret)."""

    produces_assertions = True

    def __init__(self, description: CredentialDescription) -> None:
        self.description = description
        self.label = f"{description.path} ({description.describe()})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"

    @abstractmethod
    def load(self) -> None:
        """Prepare for use (idempotent); raises ``CredentialUnavailableError``."""

    @abstractmethod
    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        """The credential fields of one token request whose endpoint is ``audience``."""

    def reload(self) -> bool:
        """Re-read the credential after Entra rejected it; True when something changed."""
        return False

    def accepted(self) -> None:  # noqa: B027 - only sources with versions care
        """Entra accepted this credential: remember what was used as known good."""

    def hint_context(self) -> dict[str, str]:
        return {}

    def close(self) -> None:  # noqa: B027 - most sources hold nothing to release
        """Release clients and sessions."""


class CertificateSource(CredentialSource):
    """A certificate credential: builds an assertion and has its ``Signer`` sign it."""

    def __init__(self, description: CredentialDescription, settings: AzureAdSettings) -> None:
        super().__init__(description)
        self._settings = settings
        self._signer: Signer | None = None
        self._lock = threading.Lock()

    @abstractmethod
    def make_signer(self) -> Signer:
        """Create the signer; raises ``CredentialUnavailableError``."""

    @property
    def signer(self) -> Signer:
        self.load()
        assert self._signer is not None
        return self._signer

    def load(self) -> None:
        if self._signer is None:
            with self._lock:
                if self._signer is None:
                    self._signer = self.make_signer()

    def assertion(self, audience: str, now: float) -> str:
        return build_assertion(
            self.signer,
            client_id=self._settings.client_id,
            audience=audience,
            send_x5c=self._settings.send_x5c,
            lifetime=self._settings.assertion_lifetime_seconds,
            now=now,
        )

    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        return assertion_fields(self.assertion(audience, now))

    def hint_context(self) -> dict[str, str]:
        if self._signer is None:
            return {}
        chain = self._signer.chain
        return {"x5t_s256": chain.x5t_s256, "x5t": chain.x5t}


class PathSource(CertificateSource):
    """``SourceType: Path``: a PEM or PFX file on disk."""

    def make_signer(self) -> Signer:
        path = Path(self.description.certificate_disk_path or "")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CredentialUnavailableError(
                f"cannot read certificate file {str(path)!r}: {exc.strerror or exc}",
                source=self.description.path,
            ) from None
        return LocalCertificateSigner.from_bytes(
            data,
            password=self.description.certificate_password,
            algorithm=self._settings.signing_algorithm,
            source=f"{self.description.path}:CertificateDiskPath ({path})",
        )


class Base64Source(CertificateSource):
    """``SourceType: Base64Encoded``: a base64 PFX (or PEM) in the configuration itself."""

    def make_signer(self) -> Signer:
        try:
            data = base64.b64decode(self.description.base64_encoded_value or "", validate=False)
        except (binascii.Error, ValueError):
            raise CredentialUnavailableError(
                "Base64EncodedValue is not valid base64", source=self.description.path
            ) from None
        return LocalCertificateSigner.from_bytes(
            data,
            password=self.description.certificate_password,
            algorithm=self._settings.signing_algorithm,
            source=f"{self.description.path}:Base64EncodedValue",
        )


class KeyVaultSource(CertificateSource):
    """``SourceType: KeyVault``: the certificate's key signs inside Key Vault.

    The certificate's metadata is re-read every ``refresh_interval`` seconds (and on demand
    after Entra rejects the credential), so a rotated certificate is picked up without a
    restart; only one thread re-reads at a time, the others keep signing with the current one.
    """

    def __init__(
        self,
        description: CredentialDescription,
        settings: AzureAdSettings,
        vault_credential: VaultCredentialFactory,
        *,
        refresh_interval: float = 3600.0,
        expiry_warning_days: int = 30,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        super().__init__(description, settings)
        self._vault_credential = vault_credential
        self._retry_policy = retry_policy
        self.refresh_interval = refresh_interval
        self.expiry_warning_days = expiry_warning_days
        self._loaded_at = 0.0
        self._reloading = threading.Lock()
        self._warned_versions: set[str] = set()
        # The certificate version Entra last accepted: when a newer version is rejected (made
        # current in the vault before its public key was registered on the app), kvassert falls
        # back to it instead of failing until the registration catches up.
        self._known_good: VaultCertificate | None = None

    def make_signer(self) -> Signer:
        from kvassert.vault_signer import KeyVaultSigner

        signer = KeyVaultSigner(
            self.description.key_vault_url or "",
            self.description.key_vault_certificate_name or "",
            self._vault_credential(self.description),
            algorithm=self._settings.signing_algorithm,
            retry_policy=self._retry_policy,
        )
        try:
            signer.load()
        except KeyVaultError as exc:
            signer.close()
            raise CredentialUnavailableError(str(exc), source=self.description.path) from exc
        self._loaded(signer)
        return signer

    @property
    def vault_signer(self) -> KeyVaultSigner:
        from kvassert.vault_signer import KeyVaultSigner

        signer = self.signer
        assert isinstance(signer, KeyVaultSigner)
        return signer

    def refresh_if_stale(self, now: float) -> None:
        """Re-read the certificate when the last read is older than ``refresh_interval``."""
        if self._signer is not None and now - self._loaded_at >= self.refresh_interval:
            self._reload(blocking=False)

    def reload(self) -> bool:
        return self._reload(blocking=True)

    def _reload(self, *, blocking: bool) -> bool:
        if self._signer is None:
            return False
        if not self._reloading.acquire(blocking=blocking):
            return False  # another thread is re-reading; keep using the current certificate
        try:
            signer = self.vault_signer
            before = signer.certificate.version
            try:
                after = signer.load()
            except KeyVaultError as exc:
                _LOG.warning("re-reading %s failed: %s", self.label, exc)
                return False
            self._loaded(signer)
            changed, fallback = after_reread(
                self.label, before, after, self._known_good, rejected=blocking
            )
            if fallback is not None:
                signer.use(fallback)
            return changed
        finally:
            self._reloading.release()

    def accepted(self) -> None:
        if self._signer is not None:
            self._known_good = self.vault_signer.certificate

    def _loaded(self, signer: KeyVaultSigner) -> None:
        import time

        self._loaded_at = time.time()
        warn_if_expiring(
            self.label, signer.certificate, self._warned_versions, self.expiry_warning_days
        )

    def close(self) -> None:
        if self._signer is not None:
            self.vault_signer.close()


def after_reread(
    label: str,
    before: str,
    after: VaultCertificate,
    known_good: VaultCertificate | None,
    *,
    rejected: bool,
) -> tuple[bool, VaultCertificate | None]:
    """What a re-read of the vault certificate means (sync and async sources share it): whether
    what signs has changed, and the version to fall back to, if any. ``rejected`` is true when
    the re-read follows a rejection by Entra."""
    if after.version != before:
        _LOG.warning(
            "%s: now signing with certificate version %s (was %s)", label, after.version, before
        )
        return True, None
    if rejected and known_good is not None and known_good.version != after.version:
        # The vault's current version is not the one Entra last accepted: it is probably not
        # registered on the app yet.
        _LOG.warning(
            "%s: certificate version %s was rejected; falling back to version %s, which "
            "Entra accepted (register the new version's public key on the app)",
            label,
            after.version,
            known_good.version,
        )
        return True, known_good
    return False, None


def warn_if_expiring(
    label: str, certificate: VaultCertificate, warned_versions: set[str], warning_days: int
) -> None:
    """Log once per certificate version that it expires within ``warning_days``."""
    import datetime as dt

    if certificate.expires_on is None or certificate.version in warned_versions:
        return
    left = certificate.expires_on - dt.datetime.now(dt.timezone.utc)
    if left < dt.timedelta(days=warning_days):
        warned_versions.add(certificate.version)
        _LOG.warning(
            "%s: certificate version %s expires on %s (in %d days): rotate it in Key Vault "
            "and register the new version on the app",
            label,
            certificate.version,
            f"{certificate.expires_on:%Y-%m-%d}",
            left.days,
        )


class ClientSecretSource(CredentialSource):
    """``SourceType: ClientSecret`` (and the top-level ``AzureAd:ClientSecret``)."""

    produces_assertions = False

    def load(self) -> None:
        if not self.description.client_secret:
            raise CredentialUnavailableError("the client secret is empty", source=self.label)

    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        return {"client_secret": self.description.client_secret or ""}


class SignedAssertionFileSource(CredentialSource):
    """``SourceType: SignedAssertionFilePath``: a ready assertion in a file that something else
    (Kubernetes workload identity) rotates; re-read whenever the file changes."""

    def __init__(self, description: CredentialDescription) -> None:
        super().__init__(description)
        self._cached: tuple[float, int, str] | None = None

    @property
    def path(self) -> Path:
        return Path(self.description.signed_assertion_file_disk_path or "")

    def load(self) -> None:
        self._read()

    def _read(self) -> str:
        try:
            stat = self.path.stat()
            if self._cached and self._cached[:2] == (stat.st_mtime, stat.st_size):
                return self._cached[2]
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise CredentialUnavailableError(
                f"cannot read signed assertion file {str(self.path)!r}: {exc.strerror or exc}",
                source=self.description.path,
            ) from None
        if text.count(".") != 2:
            raise CredentialUnavailableError(
                f"{str(self.path)!r} does not hold a compact JWT", source=self.description.path
            )
        self._cached = (stat.st_mtime, stat.st_size, text)
        return text

    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        return assertion_fields(self._read())

    def reload(self) -> bool:
        self._cached = None
        return True


class ManagedIdentityAssertionSource(CredentialSource):
    """``SourceType: SignedAssertionFromManagedIdentity``: a managed identity token for
    ``TokenExchangeUrl`` is the assertion (a federated identity credential on the app)."""

    def __init__(
        self, description: CredentialDescription, credential_factory: VaultCredentialFactory
    ) -> None:
        super().__init__(description)
        self._factory = credential_factory
        self._credential: TokenCredential | None = None

    def load(self) -> None:
        if self._credential is None:
            self._credential = self._factory(self.description)

    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        from azure.core.exceptions import AzureError

        self.load()
        assert self._credential is not None
        scope = (self.description.token_exchange_url or "api://AzureADTokenExchange").rstrip("/")
        try:
            token = self._credential.get_token(f"{scope}/.default").token
        except AzureError as exc:
            raise CredentialUnavailableError(
                f"managed identity token for {scope} failed: {type(exc).__name__}",
                source=self.description.path,
            ) from None
        return assertion_fields(token)

    def close(self) -> None:
        close = getattr(self._credential, "close", None)
        if close is not None:
            close()


class UnavailableSource(CredentialSource):
    """A source that cannot work here (Windows certificate stores on Linux)."""

    def __init__(self, description: CredentialDescription, reason: str) -> None:
        super().__init__(description)
        self.reason = reason

    def load(self) -> None:
        raise CredentialUnavailableError(self.reason, source=self.description.path)

    def form_fields(self, audience: str, now: float) -> dict[str, str]:
        raise CredentialUnavailableError(self.reason, source=self.description.path)


def identity_client_id(description: CredentialDescription, env: Mapping[str, str]) -> str:
    """The managed identity a source authenticates as: ``ManagedIdentityClientId``, else
    ``AZURE_CLIENT_ID``, else "" (the system-assigned identity)."""
    return description.managed_identity_client_id or env.get("AZURE_CLIENT_ID") or ""


def default_vault_credential(
    env: Mapping[str, str] | None = None,
) -> VaultCredentialFactory:
    """Authenticate to Key Vault as Microsoft.Identity.Web does: ``DefaultAzureCredential``,
    with ``ManagedIdentityClientId`` (else ``AZURE_CLIENT_ID``) selecting a user-assigned
    identity. One credential per identity is shared by every source that uses it."""
    env = os.environ if env is None else env
    made: dict[str, Any] = {}
    lock = threading.Lock()

    def factory(description: CredentialDescription) -> TokenCredential:
        client_id = identity_client_id(description, env)
        with lock:
            if client_id not in made:
                from azure.identity import DefaultAzureCredential

                made[client_id] = DefaultAzureCredential(
                    managed_identity_client_id=client_id or None
                )
            credential: TokenCredential = made[client_id]
            return credential

    return factory


def make_sources(
    settings: AzureAdSettings,
    *,
    vault_credential: VaultCredentialFactory | None = None,
    certificate_refresh_interval: float = 3600.0,
    expiry_warning_days: int = 30,
    retry_policy: RetryPolicy | None = None,
) -> list[CredentialSource]:
    """The configured credentials in order, ``Skip``-ped ones left out."""
    factory = vault_credential or default_vault_credential()
    sources: list[CredentialSource] = []
    for description in settings.credentials:
        if description.skip:
            continue
        kind = description.source_type
        if kind == "KeyVault":
            sources.append(
                KeyVaultSource(
                    description,
                    settings,
                    factory,
                    refresh_interval=certificate_refresh_interval,
                    expiry_warning_days=expiry_warning_days,
                    retry_policy=retry_policy,
                )
            )
        elif kind == "Path":
            sources.append(PathSource(description, settings))
        elif kind == "Base64Encoded":
            sources.append(Base64Source(description, settings))
        elif kind == "ClientSecret":
            sources.append(ClientSecretSource(description))
        elif kind == "SignedAssertionFilePath":
            sources.append(SignedAssertionFileSource(description))
        elif kind == "SignedAssertionFromManagedIdentity":
            sources.append(ManagedIdentityAssertionSource(description, factory))
        elif kind in ("StoreWithThumbprint", "StoreWithDistinguishedName"):
            sources.append(
                UnavailableSource(
                    description,
                    f"{kind}: the Windows certificate store is not available on this platform; "
                    "use SourceType KeyVault (recommended) or Path",
                )
            )
        else:  # settings validation makes this unreachable; keep the failure explicit
            sources.append(UnavailableSource(description, f"unsupported SourceType {kind!r}"))
    return sources
