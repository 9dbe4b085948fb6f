"""What Entra's AADSTS codes mean for a confidential client, and what to do about each.

Hints are templates filled with what kvassert knows about the request (client id, tenant,
thumbprints, endpoint), so an error says exactly what to fix. ``CREDENTIAL_PROBLEM_CODES`` are the
codes after which reloading the credential (a rotated certificate) or falling back to the next
configured credential can help (DESIGN section 2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Aadsts:
    code: int
    meaning: str
    hint: str


_TABLE: tuple[Aadsts, ...] = (
    Aadsts(
        700027,
        "the assertion's signature or key was not found among the app's certificates",
        "the certificate with x5t#S256={x5t_s256} (x5t={x5t}) is not registered on app "
        "{client_id}: upload its public part under Certificates & secrets, or check that the "
        "vault certificate is the one registered",
    ),
    Aadsts(
        700024,
        "the assertion is outside its valid time range",
        "the clock of this machine and Entra's differ, or the assertion lifetime is wrong; "
        "check the system clock (NTP)",
    ),
    Aadsts(
        7000274,
        "the assertion's key is not valid yet or no longer valid",
        "the registered certificate {x5t_s256} has expired or is not yet valid on app "
        "{client_id}: register the current certificate version",
    ),
    Aadsts(
        7000277,
        "the certificate credential on the app has expired",
        "register a new certificate on app {client_id} and rotate the vault certificate",
    ),
    Aadsts(
        7000214,
        "the certificate has been revoked",
        "register a certificate that has not been revoked on app {client_id}",
    ),
    Aadsts(
        1000502,
        "the certificate is outside its validity period",
        "the certificate used to sign has expired or is not yet valid: rotate it in Key Vault "
        "and register the new version on app {client_id}",
    ),
    Aadsts(
        700016,
        "the application was not found in the tenant",
        "app {client_id} does not exist in tenant {tenant}: check AzureAd:ClientId and "
        "AzureAd:TenantId, and that the app was consented in that tenant",
    ),
    Aadsts(
        7000215,
        "an invalid client secret was provided",
        "the client secret is wrong or expired: use the secret's value (not its id) for app "
        "{client_id}",
    ),
    Aadsts(
        7000222,
        "the client secret has expired",
        "create a new client secret for app {client_id}",
    ),
    Aadsts(
        700023,
        "the assertion's audience is not the token endpoint",
        "the assertion's aud must be exactly {endpoint}: check AzureAd:Instance / "
        "AzureAd:Authority",
    ),
    Aadsts(
        7000218,
        "the request has no client credential",
        "configure a credential in AzureAd:ClientCredentials",
    ),
    Aadsts(
        50012,
        "the client assertion is invalid",
        "the assertion failed validation (signature, claims or format); run "
        "`kvassert check --online` to test-sign and verify",
    ),
    Aadsts(
        50027,
        "the assertion is not a valid JWT",
        "the assertion is malformed; for SignedAssertionFilePath check the file's content",
    ),
    Aadsts(
        700030,
        "the certificate is not valid for this tenant or cloud",
        "check that AzureAd:Instance names the cloud the app lives in",
    ),
    Aadsts(
        50048,
        "the assertion's subject does not match the issuer",
        "iss and sub must both be the client id {client_id}",
    ),
    Aadsts(
        90002,
        "the tenant was not found",
        "tenant {tenant} does not exist in this cloud: check AzureAd:TenantId and Instance",
    ),
    Aadsts(
        500011,
        "the resource principal was not found in the tenant",
        "the scope/resource {scope} is not an API known in tenant {tenant}: check the scope "
        "(api://<app-id-uri>/.default) and that the API's service principal exists",
    ),
    Aadsts(
        70011,
        "the scope is invalid",
        "client credentials need a scope ending in /.default, e.g. api://my-api/.default",
    ),
    Aadsts(
        1002012,
        "the scope is not valid for client credentials",
        "client credentials need the resource's /.default scope, e.g. api://my-api/.default, "
        "not {scope}",
    ),
    Aadsts(
        700021,
        "the client assertion's application identifier does not match the client id",
        "iss/sub of the assertion must equal client_id {client_id}",
    ),
    Aadsts(
        70021,
        "no federated identity credential matched the presented assertion",
        "add a federated credential to app {client_id} whose issuer/subject match the managed "
        "identity token (TokenExchangeUrl audience)",
    ),
)

BY_CODE: Mapping[int, Aadsts] = {entry.code: entry for entry in _TABLE}

CREDENTIAL_PROBLEM_CODES = frozenset({700027, 700024, 7000274, 7000277, 7000214, 1000502})


def hint_for(code: int, context: Mapping[str, str]) -> str:
    """The hint for ``code`` with ``context`` filled in; unknown fields print as '?'."""
    entry = BY_CODE.get(code)
    if entry is None:
        return ""
    return entry.hint.format_map(_Missing(context))


class _Missing(dict[str, str]):
    def __init__(self, context: Mapping[str, str]) -> None:
        super().__init__({k: v for k, v in context.items() if v})

    def __missing__(self, key: str) -> str:
        return "?"


def troubleshooting_rows() -> list[tuple[int, str, str]]:
    """(code, meaning, hint with placeholders) for the README's troubleshooting table."""
    return [(entry.code, entry.meaning, entry.hint) for entry in _TABLE]
