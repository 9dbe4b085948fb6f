"""The Key Vault signer: the certificate's public part is read once, the key signs in the vault.

Only two Key Vault operations are used: ``certificates/get`` (the ``cer``, thumbprints and the
``kid`` of the key version bound to the certificate version) and ``keys/sign`` on that key
version, with the SHA-256 digest of the JWS signing input. The certificate's secret, which holds
the private key of an exportable certificate, is never read, so non-exportable and HSM keys work
and the least privilege is ``certificates/read`` + ``keys/sign/action``. Every signature is
verified locally against the certificate before it leaves the process: a key that does not match
the certificate is caught here, not by Entra.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from cryptography import x509

from kvassert.errors import KeyVaultError, SigningError
from kvassert.signing import SUPPORTED_ALGORITHMS, CertificateChain, verify_signature
from kvassert.transport import RetryPolicy, ca_bundle_for, is_loopback_url

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.certificates import CertificateClient, KeyVaultCertificate
    from azure.keyvault.keys import KeyVaultKey
    from azure.keyvault.keys.crypto import CryptographyClient

_LOG = logging.getLogger("kvassert.keyvault")
VAULT_SCOPE = "https://vault.azure.net/.default"


@dataclass(frozen=True)
class VaultCertificate:
    """What kvassert knows of one certificate version: never any private material."""

    vault_url: str
    name: str
    version: str
    key_id: str
    chain: CertificateChain
    enabled: bool
    not_before: dt.datetime | None
    expires_on: dt.datetime | None
    exportable: bool | None = None
    key_type: str | None = None
    key_size: int | None = None


def client_options(vault_url: str, policy: RetryPolicy | None = None) -> dict[str, Any]:
    """SDK client keywords. Loopback (emulator) hosts get the emulator CA and skip the challenge
    resource check, which cannot pass for ``https://127.0.0.1:PORT``; real vaults keep both.
    ``policy`` maps kvassert's retry policy onto azure-core's, so a vault outage ends in an
    error within the same deadline as a token request instead of azure-core's 10 retries."""
    # A redirect must never carry the vault token elsewhere: the SDK strips Authorization on a
    # host change, and kvassert does not follow redirects at all.
    options: dict[str, Any] = {"permit_redirects": False}
    if policy is not None:
        options.update(
            retry_total=policy.attempts - 1,
            retry_backoff_factor=policy.backoff,
            retry_backoff_max=policy.backoff_max,
            timeout=policy.deadline,
            connection_timeout=policy.timeout[0],
            read_timeout=policy.timeout[1],
        )
    if is_loopback_url(vault_url):
        options.update(connection_verify=ca_bundle_for(vault_url), verify_challenge_resource=False)
    return options


def usable(version: Any, now: dt.datetime) -> bool:
    """Enabled, and inside its validity window (properties from the certificates API)."""
    if version.enabled is False:
        return False
    if version.not_before is not None and version.not_before > now:
        return False
    return not (version.expires_on is not None and version.expires_on <= now)


def not_yet_valid_here(version: Any, now: dt.datetime) -> bool:
    """Enabled and unexpired, but with a ``not_before`` still ahead of this machine's clock."""
    return (
        version.enabled is not False
        and version.not_before is not None
        and version.not_before > now
        and (version.expires_on is None or version.expires_on > now)
    )


def fallback_version(
    latest: Any, versions: Iterable[Any], now: dt.datetime, *, name: str, vault_url: str
) -> Any | None:
    """When the newest version (``latest``) cannot sign now: the version to read instead (the
    newest usable one), or None to use ``latest`` after all. Rotation may leave the newest
    version disabled or not yet valid; when nothing else can sign and it only looks early
    because this machine's clock is behind the vault's, the vault judges. Raises
    ``KeyVaultError`` when no version can sign."""
    version = newest_usable(versions, now)
    if version is not None:
        return version
    if latest.properties is not None and not_yet_valid_here(latest.properties, now):
        _LOG.warning(
            "certificate %r version %s is not valid before %s by this machine's clock; "
            "using it anyway (is the clock behind?)",
            name,
            latest.properties.version,
            latest.properties.not_before,
        )
        return None
    raise KeyVaultError(
        f"certificate {name!r} in {vault_url} has no enabled version that is valid now",
        operation="certificate_get",
        hint="enable a version or create a new one",
    )


def newest_usable(versions: Iterable[Any], now: dt.datetime) -> Any | None:
    """The most recently created usable version, or None."""
    epoch = dt.datetime.min.replace(tzinfo=dt.timezone.utc)
    candidates = [v for v in versions if usable(v, now)]
    return max(candidates, key=lambda v: v.created_on or epoch, default=None)


def explain_http_error(
    exc: Any, *, operation: str, vault_url: str, name: str, principal: str
) -> KeyVaultError:
    """Turn an azure-core ``HttpResponseError`` into a ``KeyVaultError`` that says what to fix."""
    status = int(getattr(exc, "status_code", 0) or 0)
    code, inner, message = _error_parts(exc)
    who = f"principal {principal}" if principal else "the app's identity"
    hint = ""
    if status == 403 and inner not in ("", "ForbiddenByRbac", "ForbiddenByPolicy"):
        hint = (
            f"Key Vault refused the operation on this key version ({inner}): check that "
            "the certificate version is enabled and inside its validity period"
        )
    elif status == 403 and operation == "sign":
        hint = (
            f"grant Key Vault Crypto User (or a role with "
            f"Microsoft.KeyVault/vaults/keys/sign/action) on {vault_url} to {who}"
        )
    elif status == 403:
        hint = (
            f"grant a role with Microsoft.KeyVault/vaults/certificates/read on {vault_url} "
            f"to {who} (Key Vault Certificate User also grants secret reads; prefer a "
            "custom role with certificates/read and keys/sign/action)"
        )
    elif status == 404:
        hint = (
            f"no certificate named {name!r} in {vault_url}: check "
            "KeyVaultCertificateName and KeyVaultUrl"
        )
    elif status == 401:
        hint = "the vault refused the identity's token: check the tenant of the managed identity"
    elif status == 429:
        hint = "Key Vault is throttling: the token cache keeps signs rare; retry later"
    text = f"Key Vault {operation} on {vault_url} for {name!r} failed: HTTP {status}"
    if code:
        text += f" {code}"
    if inner:
        text += f" ({inner})"
    if message:
        text += f": {message}"
    return KeyVaultError(
        text, status=status, code=code, inner_code=inner, operation=operation, hint=hint
    )


def _error_parts(exc: Any) -> tuple[str, str, str]:
    import json

    response = getattr(exc, "response", None)
    try:
        body = json.loads(response.text()) if response is not None else None
    except Exception:  # garbage bodies (HTML, truncated JSON) are expected here
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return "", "", ""
    inner = error.get("innererror")
    inner_code = inner.get("code", "") if isinstance(inner, dict) else ""
    # Key Vault's messages carry "\r\nCaller: ...\r\nAction: ..." details: keep them, on one line.
    message = " ".join(str(error.get("message") or "").split())[:300]
    return str(error.get("code") or ""), str(inner_code), message


def key_for(certificate: VaultCertificate) -> KeyVaultKey:
    """The certificate's public key as a ``KeyVaultKey``: handed to ``CryptographyClient`` it
    stops the client from calling keys/get (an extra request, and a permission the
    least-privilege role does not have) before the first sign."""
    from azure.keyvault.keys import KeyVaultKey

    numbers = certificate.chain.public_key.public_numbers()
    jwk = {
        "kid": certificate.key_id,
        "kty": "RSA",
        "key_ops": ["sign", "verify"],
        "n": numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big"),
        "e": numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big"),
    }
    return KeyVaultKey(key_id=certificate.key_id, jwk=jwk)


class KeyVaultSigner:
    """A ``Signer`` whose private key stays in Key Vault.

    ``load()`` reads the certificate (one ``certificates/get``; a version listing only when the
    latest version is disabled or outside its validity); ``sign()`` makes one ``keys/sign`` call.
    Raises ``KeyVaultError`` (with a hint) on vault errors and ``SigningError`` when the vault's
    signature does not verify against the certificate.
    """

    def __init__(
        self,
        vault_url: str,
        certificate_name: str,
        credential: TokenCredential,
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
        self._lock = threading.Lock()
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
            f"algorithm={self.algorithm!r})"
        )

    @property
    def certificate(self) -> VaultCertificate:
        if self._certificate is None:
            self.load()
        assert self._certificate is not None
        return self._certificate

    @property
    def chain(self) -> CertificateChain:
        return self.certificate.chain

    def load(self) -> VaultCertificate:
        """Read (or re-read) the certificate and bind the signer to its key version."""
        with self._lock:
            certificate = self._read_certificate()
            self._bind(certificate)
            return certificate

    def use(self, certificate: VaultCertificate) -> None:
        """Sign with ``certificate`` (a version read earlier), e.g. to fall back to the version
        Entra last accepted."""
        with self._lock:
            self._bind(certificate)

    def _bind(self, certificate: VaultCertificate) -> None:
        if self._certificate is None or certificate.key_id != self._certificate.key_id:
            if self._crypto is not None:
                self._retired.append(self._crypto)
            self._crypto = self._crypto_client(certificate)
        self._certificate = certificate

    def sign(self, signing_input: bytes) -> bytes:
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
            result = crypto.sign(algorithm, digest)
        except HttpResponseError as exc:
            raise explain_http_error(
                exc,
                operation="sign",
                vault_url=self.vault_url,
                name=self.certificate_name,
                principal=self._principal(),
            ) from None
        except AzureError as exc:
            raise KeyVaultError(
                f"Key Vault sign on {self.vault_url} failed: {type(exc).__name__}",
                operation="sign",
            ) from None
        except (ValueError, KeyError, TypeError):
            # The SDK lets a garbage body (HTML from a proxy, truncated JSON) escape as a JSON
            # or model error.
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

    def close(self) -> None:
        for client in (self._certificates_client, self._crypto, *self._retired):
            if client is not None:
                client.close()

    def _client(self) -> CertificateClient:
        if self._certificates_client is None:
            from azure.keyvault.certificates import CertificateClient

            self._certificates_client = CertificateClient(
                self.vault_url, self._credential, **self._options
            )
        return self._certificates_client

    def _read_certificate(self) -> VaultCertificate:
        from azure.core.exceptions import AzureError, HttpResponseError

        client = self._client()
        now = dt.datetime.now(dt.timezone.utc)
        try:
            self.certificate_reads += 1
            latest = client.get_certificate(self.certificate_name)
            policy = latest.policy
            chosen = latest
            if latest.properties is None or not usable(latest.properties, now):
                version = fallback_version(
                    latest,
                    client.list_properties_of_certificate_versions(self.certificate_name),
                    now,
                    name=self.certificate_name,
                    vault_url=self.vault_url,
                )
                if version is not None:
                    self.certificate_reads += 1
                    chosen = client.get_certificate_version(self.certificate_name, version.version)
        except HttpResponseError as exc:
            raise explain_http_error(
                exc,
                operation="certificate get",
                vault_url=self.vault_url,
                name=self.certificate_name,
                principal=self._principal(),
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
        return describe_certificate(self.vault_url, self.certificate_name, chosen, policy)

    def _crypto_client(self, certificate: VaultCertificate) -> CryptographyClient:
        from azure.keyvault.keys.crypto import CryptographyClient

        return CryptographyClient(key_for(certificate), self._credential, **self._options)

    def _principal(self) -> str:
        """The object id in the vault token, for hints that name who needs a role."""
        try:
            import jwt

            token = self._credential.get_token(VAULT_SCOPE).token
            claims = jwt.decode(token, options={"verify_signature": False})
            return str(claims.get("oid") or "")
        except Exception:  # a hint must never mask the real error
            return ""


def describe_certificate(
    vault_url: str, name: str, certificate: KeyVaultCertificate, policy: Any
) -> VaultCertificate:
    cer, key_id = certificate.cer, certificate.key_id
    if not (isinstance(cer, (bytes, bytearray)) and cer and isinstance(key_id, str) and key_id):
        raise KeyVaultError(
            f"Key Vault returned certificate {name!r} without its cer or kid",
            operation="certificate_get",
        )
    properties = certificate.properties
    key_props = getattr(policy, "exportable", None), getattr(policy, "key_type", None)
    version = properties.version if properties is not None else None
    try:
        chain = CertificateChain(der=(bytes(cer),))
        _ = chain.leaf  # parse now: a garbage cer must fail here, not at the first sign
        version = version or urlsplit(key_id).path.rsplit("/", 1)[-1]
    except (ValueError, x509.InvalidVersion):  # a bad version field is not a ValueError
        raise KeyVaultError(
            f"Key Vault returned certificate {name!r} in a form that cannot be parsed (the cer "
            "is not a DER X.509 certificate, or the kid is not a URL)",
            operation="certificate_get",
        ) from None
    return VaultCertificate(
        vault_url=vault_url,
        name=name,
        version=version,
        key_id=key_id,
        chain=chain,
        enabled=bool(properties.enabled) if properties is not None else True,
        not_before=properties.not_before if properties is not None else None,
        expires_on=properties.expires_on if properties is not None else None,
        exportable=key_props[0],
        key_type=str(getattr(key_props[1], "value", key_props[1])) if key_props[1] else None,
        key_size=getattr(policy, "key_size", None),
    )
