"""``kvassert check``: one line per configured credential saying whether it can be used.

Offline, each credential is validated as far as possible without the network (files are read,
certificates parsed and checked against their keys). ``--online`` also reads the Key Vault
certificate, reports its versions, expiry and exportability, test-signs and verifies, and can
request a token; every failure becomes a line that says what to fix.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import dataclass

from kvassert.assertion import build_assertion
from kvassert.errors import KvassertError
from kvassert.settings import AzureAdSettings
from kvassert.sources import (
    CertificateSource,
    CredentialSource,
    KeyVaultSource,
    ManagedIdentityAssertionSource,
    VaultCredentialFactory,
    make_sources,
)

EXPIRY_WARNING_DAYS = 30


@dataclass(frozen=True)
class CheckLine:
    status: str  # "ok", "warn", "fail", "skip"
    label: str
    detail: str

    def render(self) -> str:
        return f"[{self.status}] {self.label}: {' '.join(self.detail.split())}"


def check_settings(
    settings: AzureAdSettings,
    *,
    online: bool = False,
    scope: str | None = None,
    vault_credential: VaultCredentialFactory | None = None,
) -> list[CheckLine]:
    """Check every configured credential; never raises for a credential problem."""
    lines = [
        CheckLine("warn", key, "unknown key, ignored (as .NET does)")
        for key in settings.unknown_keys
    ]
    for description in settings.credentials:
        if description.skip:
            lines.append(
                CheckLine("skip", f"{description.path} ({description.describe()})", "Skip is true")
            )
    sources = make_sources(settings, vault_credential=vault_credential)
    try:
        for source in sources:
            lines.extend(_check_source(settings, source, online=online))
        if online and scope:
            lines.append(_check_token(settings, sources, scope))
    finally:
        for source in sources:
            source.close()
    return lines


def _check_source(
    settings: AzureAdSettings, source: CredentialSource, *, online: bool
) -> Iterator[CheckLine]:
    if isinstance(source, KeyVaultSource) and not online:
        yield CheckLine("ok", source.label, "configuration valid; --online reads the vault")
        return
    if isinstance(source, ManagedIdentityAssertionSource) and not online:
        yield CheckLine("ok", source.label, "configuration valid; --online gets the MI token")
        return
    try:
        source.load()
        if isinstance(source, KeyVaultSource):
            yield from _check_vault(settings, source)
            return
        if isinstance(source, CertificateSource):
            yield _certificate_line(source)
            return
        if isinstance(source, ManagedIdentityAssertionSource):
            source.form_fields(settings.token_endpoint(), time.time())
        yield CheckLine("ok", source.label, "loads")
    except KvassertError as exc:
        yield CheckLine("fail", source.label, str(exc))


def _certificate_line(source: CertificateSource) -> CheckLine:
    chain = source.signer.chain
    days_left = (chain.not_after - dt.datetime.now(dt.timezone.utc)).days
    status = "warn" if days_left < EXPIRY_WARNING_DAYS else "ok"
    return CheckLine(
        status,
        source.label,
        f"certificate {chain.subject}, x5t#S256={chain.x5t_s256}, expires "
        f"{chain.not_after:%Y-%m-%d} ({days_left} days)",
    )


def _check_vault(settings: AzureAdSettings, source: KeyVaultSource) -> Iterator[CheckLine]:
    signer = source.vault_signer
    cert = signer.certificate
    exportable = {
        True: "exportable (the private key can leave the vault: prefer exportable=false)",
        False: "non-exportable",
        None: "exportability unknown (no policy read)",
    }[cert.exportable]
    key = f"{cert.key_type or 'RSA'}" + (f" {cert.key_size}" if cert.key_size else "")
    expires = f"{cert.expires_on:%Y-%m-%d}" if cert.expires_on else "never"
    yield CheckLine(
        "ok" if cert.exportable is False else "warn",
        source.label,
        f"version {cert.version}, {key}, {exportable}, expires {expires}, "
        f"x5t#S256={cert.chain.x5t_s256}",
    )
    try:
        build_assertion(signer, client_id=settings.client_id, audience=settings.token_endpoint())
    except KvassertError as exc:
        yield CheckLine("fail", source.label, f"test sign failed: {exc}")
        return
    yield CheckLine(
        "ok", source.label, f"test sign with {signer.algorithm} on {cert.key_id} verified locally"
    )


def _check_token(
    settings: AzureAdSettings,
    sources: list[CredentialSource],
    scope: str,
) -> CheckLine:
    from kvassert.credential import AzureAdCredential

    label = f"token for {scope}"
    try:
        with AzureAdCredential(settings, sources=sources) as credential:
            token = credential.token(scope)
    except KvassertError as exc:
        return CheckLine("fail", label, str(exc))
    expires = dt.datetime.fromtimestamp(token.expires_on, dt.timezone.utc)
    return CheckLine("ok", label, f"acquired, expires {expires:%Y-%m-%d %H:%M:%S} UTC")
