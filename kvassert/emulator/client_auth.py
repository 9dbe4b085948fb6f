"""Client authentication at the token endpoint, as Entra does it: which app is asking, and how
it proves it (client secret, certificate-signed assertion, or a federated credential: a token
this STS issued to a managed identity the app trusts).

Order of checks: the app must exist in the tenant (700016), one credential only (90023), then
the secret (7000215) or the assertion (``assertion_checks`` / ``sts_tokens``); no credential at
all is 7000218. An assertion whose ``iss`` is this STS (and not the client id) is a federated
credential; any other is checked as a certificate assertion.
"""

from __future__ import annotations

from kvassert.emulator.assertion_checks import (
    CLIENT_ASSERTION_TYPE,
    AadstsKind,
    EntraError,
    parse_compact_jws,
    verify_certificate_assertion,
)
from kvassert.emulator.directory import FIRST_PARTY, TOKEN_EXCHANGE, Application, Directory
from kvassert.emulator.sts_tokens import verify_federated_assertion

# Message texts are those of real answers quoted in the cited issues.
APP_NOT_FOUND = AadstsKind(700016, "unauthorized_client", 400)  # Office365itpros#23
BAD_SECRET = AadstsKind(7000215, "invalid_client", 401)  # Azure/sap-automation#418 (401)
NO_CREDENTIAL = AadstsKind(7000218, "invalid_client", 401)  # haystack-editor#41; 401 per
# Azure-Samples/active-directory-dotnet-native-aspnetcore#22
# Two client authentication methods at once (RFC 6749 section 2.3); docs: 90023 InvalidRequest.
TWO_CREDENTIALS = AadstsKind(90023, "invalid_request", 400)
MISSING_PARAMETER = AadstsKind(900144, "invalid_request", 400)  # docs: 900144


def authenticate_client(
    directory: Directory,
    *,
    tenant_id: str,
    client_id: str,
    client_secret: str | None = None,
    client_assertion: str | None = None,
    client_assertion_type: str | None = None,
    endpoint_url: str,
    base_url: str,
) -> tuple[Application, str]:
    """The app the request authenticates as, and its ``appidacr`` ("1" secret, "2" certificate
    or federated credential). ``endpoint_url`` is the token endpoint the request came to (the
    only ``aud`` accepted). Raises ``EntraError`` with Entra's code."""
    app = directory.get_application(client_id, tenant_id)
    if app is None:
        raise EntraError(
            APP_NOT_FOUND,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{tenant_id}'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant. You may "
            "have sent your authentication request to the wrong tenant.",
        )
    if client_secret and client_assertion:
        raise EntraError(TWO_CREDENTIALS, "The request is not valid: use one credential.")
    if client_secret:
        if not app.check_secret(client_secret):
            raise EntraError(
                BAD_SECRET,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{app.client_id}'.",
            )
        return app, "1"
    if not client_assertion:
        raise EntraError(
            NO_CREDENTIAL,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )
    if client_assertion_type != CLIENT_ASSERTION_TYPE:
        raise EntraError(
            MISSING_PARAMETER,
            "The request body must contain the following parameter: 'client_assertion_type'.",
        )
    policy = directory.policy
    jws = parse_compact_jws(client_assertion, allow_padding=policy.allow_padded_base64)
    iss = jws.claims.get("iss")
    if isinstance(iss, str) and iss != client_id and iss.startswith(f"{base_url}/"):
        _verify_federated(directory, app, client_assertion, tenant_id=tenant_id, base_url=base_url)
        return app, "2"
    verify_certificate_assertion(
        jws,
        client_id=client_id,
        certificates=app.certificates,
        endpoint_url=endpoint_url,
        now=directory.clock.now(),
        policy=policy,
    )
    return app, "2"


def _verify_federated(
    directory: Directory, app: Application, token: str, *, tenant_id: str, base_url: str
) -> None:
    """Managed identity as federated credential: issuer this tenant, audience
    ``api://AzureADTokenExchange``, subject the object id of an identity the app trusts (listed
    in ``federated_identities`` by client id or object id)."""
    trusted = set(app.federated_identities)
    subjects = trusted | {
        mi.principal_id
        for mi in directory.identities()
        if {mi.client_id, mi.principal_id} & trusted
    }
    verify_federated_assertion(
        token,
        directory.signing_keys(),
        issuers=directory.issuers(base_url, tenant_id) if trusted else (),
        audiences={TOKEN_EXCHANGE, FIRST_PARTY[TOKEN_EXCHANGE.lower()]},
        subjects=subjects,
        now=directory.clock.now(),
        leeway=directory.policy.clock_skew_seconds,
    )
