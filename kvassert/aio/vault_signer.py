"""The async Key Vault signer: ``kvassert.vault_signer.KeyVaultSigner`` on the SDK's aio clients.

Everything that is not a call to the vault is the sync module's: which certificate version can
sign (``usable``, ``fallback_version``), what a certificate bundle means (``VaultCertificate``),
client options for loopback vaults, turning vault errors into ``KeyVaultError`` with hints, and
checking each signature against the certificate. What is restated here is the order of the
calls, with ``await``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from typing import TYPE_CHECKING

from kvassert.errors import KeyVaultError, SigningError
from kvassert.signing import SUPPORTED_ALGORITHMS, CertificateChain, verify_signature
from kvassert.transport import RetryPolicy
from kvassert.vault_signer import (
    VAULT_SCOPE,
    VaultCertificate,
    client_options,
    describe_certificate,
    explain_http_error,
    fallback_version,
    key_for,
    usable,
)

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.certificates import KeyVaultCertificate
    from azure.keyvault.certificates.aio import CertificateClient
    from azure.keyvault.keys.crypto.aio import CryptographyClient


class KeyVaultSigner:
    """An async signer whose private key stays in Key Vault.

    ``await load()`` reads the certificate (one ``certificates/get``; a version listing only when
    the latest version is disabled or outside its validity); ``await sign()`` makes one
    ``keys/sign`` call. ``chain`` and ``certificate`` need a prior ``load()``. Raises
    ``KeyVaultError`` (with a hint) on vault errors and ``SigningError`` when the vault's
    signature does not verify against the certificate. Close it (``await close()``) to release
    the SDK clients.
    """

    def __init__(
        self,
        vault_url: str,
        certificate_name: str,
        credential: AsyncTokenCredential,
        *,
        algorithm: str = "PS256",
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        if algorithm not in SUPPORTED_ALGORITHMS:
            raise SigningError(f"unsupported algorithm {algorithm!r}; expected PS256 or RS256")
        self.vault_url = vault_url.rstrip("/")
        self.certificate_name = certificate_name
        self.algorithm = algorithm
        self._credential = credential
        self._options = client_options(self.vault_url, retry_policy or RetryPolicy())
        self._lock = asyncio.Lock()
        self._certificate: VaultCertificate | None = None
        self._certificates_client: CertificateClient | None = None
        self._crypto: CryptographyClient | None = None
        # Clients of replaced key versions: a sign may still be using one, so they are closed
        # with the signer rather than on rotation.
        self._retired: list[CryptographyClient] = []
        self.signs = 0
        self.certificate_reads = 0

    def __repr__(self) -> str:
        version = self._certificate.version if self._certificate else "not loaded"
        return (
            f"KeyVaultSigner(vault_url={self.vault_url!r}, "
            f"certificate={self.certificate_name!r}, version={version!r}, "
            f"algorithm={self.algorithm!r}, aio=True)"
        )

    @property
    def certificate(self) -> VaultCertificate:
        if self._certificate is None:
            raise SigningError(f"{self!r} is not loaded: await load() first")
        return self._certificate

    @property
    def chain(self) -> CertificateChain:
        return self.certificate.chain

    async def load(self) -> VaultCertificate:
        """Read (or re-read) the certificate and bind the signer to its key version."""
        async with self._lock:
            certificate = await self._read_certificate()
            self._bind(certificate)
            return certificate

    async def use(self, certificate: VaultCertificate) -> None:
        """Sign with ``certificate`` (a version read earlier), e.g. to fall back to the version
        Entra last accepted."""
        async with self._lock:
            self._bind(certificate)

    def _bind(self, certificate: VaultCertificate) -> None:
        if self._certificate is None or certificate.key_id != self._certificate.key_id:
            if self._crypto is not None:
                self._retired.append(self._crypto)
            self._crypto = self._crypto_client(certificate)
        self._certificate = certificate

    async def sign(self, signing_input: bytes) -> bytes:
        from azure.core.exceptions import AzureError, HttpResponseError
        from azure.keyvault.keys.crypto import SignatureAlgorithm

        certificate = self.certificate
        crypto = self._crypto
        assert crypto is not None
        digest = hashlib.sha256(signing_input).digest()
        algorithm = (
            SignatureAlgorithm.ps256 if self.algorithm == "PS256" else SignatureAlgorithm.rs256
        )
        self.signs += 1
        try:
            result = await crypto.sign(algorithm, digest)
        except HttpResponseError as exc:
            raise explain_http_error(
                exc,
                operation="sign",
                vault_url=self.vault_url,
                name=self.certificate_name,
                principal=await self._principal(),
            ) from None
        except AzureError as exc:
            raise KeyVaultError(
                f"Key Vault sign on {self.vault_url} failed: {type(exc).__name__}",
                operation="sign",
            ) from None
        except (ValueError, KeyError, TypeError):
            # As in the sync signer: the SDK lets a garbage body (HTML from a proxy, truncated
            # JSON) escape as a JSON or model error.
            raise KeyVaultError(
                f"Key Vault sign on {self.vault_url} answered a body that is not a sign result",
                operation="sign",
            ) from None
        signature = bytes(result.signature or b"")
        if not verify_signature(certificate.chain, self.algorithm, signing_input, signature):
            raise SigningError(
                f"Key Vault key {certificate.key_id} produced a signature that does not verify "
                f"against certificate {self.certificate_name!r} version {certificate.version} "
                f"(x5t#S256={certificate.chain.x5t_s256}): the key is not the certificate's"
            )
        return signature

    async def close(self) -> None:
        clients = [self._certificates_client, self._crypto, *self._retired]
        self._certificates_client, self._crypto, self._retired = None, None, []
        for client in clients:
            if client is not None:
                await client.close()

    def _client(self) -> CertificateClient:
        if self._certificates_client is None:
            from azure.keyvault.certificates.aio import CertificateClient

            self._certificates_client = CertificateClient(
                self.vault_url, self._credential, **self._options
            )
        return self._certificates_client

    async def _read_certificate(self) -> VaultCertificate:
        from azure.core.exceptions import AzureError, HttpResponseError

        client = self._client()
        now = dt.datetime.now(dt.timezone.utc)
        try:
            self.certificate_reads += 1
            latest = await client.get_certificate(self.certificate_name)
            chosen = latest
            if latest.properties is None or not usable(latest.properties, now):
                chosen = await self._fallback_version(client, latest, now)
        except HttpResponseError as exc:
            raise explain_http_error(
                exc,
                operation="certificate get",
                vault_url=self.vault_url,
                name=self.certificate_name,
                principal=await self._principal(),
            ) from None
        except AzureError as exc:
            raise KeyVaultError(
                f"Key Vault certificate get on {self.vault_url} failed: {type(exc).__name__}",
                operation="certificate_get",
            ) from None
        except (ValueError, KeyError, TypeError):
            raise KeyVaultError(
                f"Key Vault certificate get on {self.vault_url} answered a body that is not a "
                "certificate",
                operation="certificate_get",
            ) from None
        return describe_certificate(self.vault_url, self.certificate_name, chosen, latest.policy)

    async def _fallback_version(
        self, client: CertificateClient, latest: KeyVaultCertificate, now: dt.datetime
    ) -> KeyVaultCertificate:
        """The version to sign with when the newest cannot sign now (``fallback_version``)."""
        versions = [
            v async for v in client.list_properties_of_certificate_versions(self.certificate_name)
        ]
        version = fallback_version(
            latest, versions, now, name=self.certificate_name, vault_url=self.vault_url
        )
        if version is None:
            return latest
        self.certificate_reads += 1
        return await client.get_certificate_version(self.certificate_name, version.version)

    def _crypto_client(self, certificate: VaultCertificate) -> CryptographyClient:
        from azure.keyvault.keys.crypto.aio import CryptographyClient

        return CryptographyClient(key_for(certificate), self._credential, **self._options)

    async def _principal(self) -> str:
        """The object id in the vault token, for hints that name who needs a role."""
        try:
            import jwt

            token = (await self._credential.get_token(VAULT_SCOPE)).token
            claims = jwt.decode(token, options={"verify_signature": False})
            return str(claims.get("oid") or "")
        except Exception:  # a hint must never mask the real error
            return ""
