"""Verify a client assertion the way Entra's token endpoint does: pure functions, no state.

The rules, and where each was checked (sources cited again next to the code that applies them):

- Assertion format: Microsoft identity platform "certificate credentials" page
  (MicrosoftDocs/entra-docs ``docs/identity-platform/certificate-credentials.md``): header
  ``alg`` PS256 (or RS256), ``typ`` JWT, ``x5t#S256`` (or ``x5t``); claims ``aud`` = token
  endpoint, ``iss`` = ``sub`` = client id, ``jti``, ``exp``, ``nbf``, ``iat``. The page also says
  "Microsoft Entra ID doesn't place restrictions on the exp time currently". The emulator still
  bounds the lifetime (``AssertionPolicy.max_lifetime_seconds``, 1 hour by default): being
  stricter than Entra is safe (what the emulator accepts, Entra accepts), the bound still admits
  msal's 10-minute and azure-identity's 30-minute assertions, and it catches a client that mints
  day-long assertions, which Entra's own guidance (5-10 minutes) warns against.
- Entra accepts what the Microsoft SDKs send, so the emulator must too: msal-python sends float
  ``iat``/``exp`` (``msal/oauth2cli/assertion.py``: ``now = time.time()``) and re-sends the same
  assertion (same ``jti``) for up to 540 s (``AutoRefresher``), and azure-identity's own JWS
  (``_internal/aad_client_base.py``) uses padded base64url and a 30 minute lifetime. Hence: numbers
  (not only integers) are accepted, ``jti`` is not replay-checked, ``=`` padding is tolerated.
  ``AssertionPolicy`` turns each of those stricter for callers that want to test their own client.
- Error codes and texts: ``reference-error-codes.md`` (entra-docs) and real responses quoted in
  public issues, cited per code below.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CERT_DOC = "https://learn.microsoft.com/entra/identity-platform/certificate-credentials"


@dataclass(frozen=True)
class AadstsKind:
    """An AADSTS code with the OAuth ``error`` string and HTTP status Entra sends with it."""

    code: int
    error: str
    status: int


# RFC 6749 section 5.2 allows 401 only for invalid_client; Entra answers invalid_client with 401
# (e.g. 7000215 "resulted in a `401 Unauthorized` response", BookStackApp/BookStack#4089).
INVALID_JWT = AadstsKind(50027, "invalid_request", 400)  # docs: InvalidJwtToken
MISSING_FIELD = AadstsKind(90014, "invalid_request", 400)  # docs: MissingRequiredField
INVALID_REQUEST = AadstsKind(90023, "invalid_request", 400)  # docs: InvalidRequest
SUBJECT_MISMATCHES_ISSUER = AadstsKind(50048, "invalid_client", 401)  # docs: 50048
ISSUER_NOT_CLIENT = AadstsKind(700021, "invalid_client", 401)  # Java SDK troubleshooting page
AUDIENCE_MISMATCH = AadstsKind(700023, "invalid_client", 401)  # msal-dotnet#2746 (invalid_client)
OUT_OF_TIME_RANGE = AadstsKind(700024, "invalid_client", 401)  # msal-dotnet#4951
BAD_SIGNATURE = AadstsKind(700027, "invalid_client", 401)  # keycloak#19425 (invalid_client)
CERT_NOT_VALID = AadstsKind(1000502, "invalid_client", 401)  # microsoft-identity-web#2840


class EntraError(Exception):
    """A refusal in Entra's terms; ``entra.py`` renders it with trace id, timestamp, etc."""

    def __init__(self, kind: AadstsKind, message: str) -> None:
        super().__init__(f"AADSTS{kind.code}: {message}")
        self.kind = kind
        self.message = message

    @property
    def code(self) -> int:
        return self.kind.code

    @property
    def description(self) -> str:
        return f"AADSTS{self.kind.code}: {self.message}"


@dataclass(frozen=True)
class AssertionPolicy:
    """How strict the checks are. The defaults are Entra's; each knob only adds strictness."""

    clock_skew_seconds: int = 300  # Microsoft.IdentityModel's default clock skew is 5 minutes
    max_lifetime_seconds: int | None = 3600  # Entra sets none "currently"; see module docstring
    require_integer_times: bool = False  # msal-python sends floats and Entra accepts them
    allow_padded_base64: bool = True  # azure-identity's hand-built JWS carries '=' padding

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AssertionPolicy:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class RegisteredCertificate:
    """The public part of a key credential registered on an app (``keyCredentials``)."""

    der: bytes
    sha1: bytes
    sha256: bytes
    not_before: float
    not_after: float
    public_key: rsa.RSAPublicKey = field(compare=False, repr=False)

    @classmethod
    def load(cls, data: bytes) -> RegisteredCertificate:
        """PEM or DER X.509; raises ``ValueError`` for anything but an RSA certificate."""
        try:
            cert = (
                x509.load_pem_x509_certificate(data)
                if data.lstrip().startswith(b"-----BEGIN")
                else x509.load_der_x509_certificate(data)
            )
        except ValueError as exc:
            raise ValueError(f"not an X.509 certificate: {exc}") from None
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("Entra client assertions need an RSA certificate")
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            der=der,
            sha1=hashlib.sha1(der).digest(),  # noqa: S324 - x5t is defined as SHA-1 (RFC 7515)
            sha256=hashlib.sha256(der).digest(),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            public_key=key,
        )


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


_B64URL = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")


def b64url_decode(text: str, *, allow_padding: bool = True) -> bytes:
    """Strict base64url (RFC 7515 section 2): foreign characters are errors, not skipped."""
    if not _B64URL.match(text) or ("=" in text and not allow_padding):
        raise ValueError("not base64url")
    bare = text.rstrip("=")
    if len(bare) % 4 == 1:
        raise ValueError("truncated base64url")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def _json_object(raw: bytes) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):  # docs (50027): "duplicate claim"
            raise ValueError("duplicate member")
        return dict(pairs)

    def no_constant(name: str) -> Any:  # NaN and Infinity are not JSON (RFC 8259 section 6)
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constant
        )
    except RecursionError:  # nesting past the interpreter's recursion limit
        raise ValueError("too deeply nested") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def parse_compact_jws(token: str, *, allow_padding: bool = True) -> CompactJws:
    """Split and decode a compact JWS; raises ``EntraError`` (50027) when it is not one."""
    parts = token.split(".")
    try:
        if len(parts) != 3 or not all(parts):
            raise ValueError("a compact JWS has three non-empty parts")
        header = _json_object(b64url_decode(parts[0], allow_padding=allow_padding))
        claims = _json_object(b64url_decode(parts[1], allow_padding=allow_padding))
        signature = b64url_decode(parts[2], allow_padding=allow_padding)
    except (ValueError, UnicodeDecodeError):
        # Message as quoted in panva/openid-client#348 (an aud array sent to Entra).
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.") from None
    return CompactJws(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def _hex(digest: bytes) -> str:
    return digest.hex().upper()


def _key_not_found(client_id: str, thumbprint: str) -> EntraError:
    # Text of real 700027 answers (keycloak/keycloak#19425, microsoft-authentication-library-
    # for-js#8339): the key is looked up among the app's keyCredentials by thumbprint.
    return EntraError(
        BAD_SIGNATURE,
        "The certificate with identifier used to sign the client assertion is not registered "
        f"on application. [Reason - The key was not found., Thumbprint of key used by client: "
        f"'{thumbprint}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph "
        f"to see configured keys for app Id '{client_id}'. Review the documentation at "
        "https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding "
        "service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view="
        "graph-rest-1.0&tabs=http to build a query request URL, such as "
        f"'https://graph.microsoft.com/beta/applications/{client_id}'].",
    )


def _thumbprint(header: Mapping[str, Any], name: str, size: int) -> bytes | None:
    value = header.get(name)
    if value is None:
        return None
    try:
        raw = b64url_decode(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    return raw


def _x5c_leaf(header: Mapping[str, Any]) -> bytes | None:
    chain = header.get("x5c")
    if chain is None:
        return None
    # RFC 7515 section 4.1.6: standard (not url-safe) base64 DER, leaf first. msal-python sends
    # the PEM body with its line breaks (``_extract_cert_and_thumbprints``) and Entra takes it,
    # so whitespace inside a value is ignored.
    try:
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
            raise ValueError("x5c is a non-empty array of strings")
        return base64.b64decode("".join(chain[0].split()), validate=True)
    except (ValueError, binascii.Error):
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.") from None


def select_certificate(
    header: Mapping[str, Any], certificates: Sequence[RegisteredCertificate], client_id: str
) -> RegisteredCertificate:
    """Find the registered certificate the header names: ``x5t#S256``, else ``x5t``, else the
    ``x5c`` leaf (subject name + issuer style). An ``x5c`` leaf must be that same certificate."""
    s256 = _thumbprint(header, "x5t#S256", 32)
    sha1 = _thumbprint(header, "x5t", 20)
    leaf = _x5c_leaf(header)
    if s256 is not None:
        found = next((c for c in certificates if c.sha256 == s256), None)
        shown = _hex(s256)
        if found is not None and sha1 is not None and found.sha1 != sha1:
            found = None  # two thumbprints naming different certificates
    elif sha1 is not None:
        found = next((c for c in certificates if c.sha1 == sha1), None)
        shown = _hex(sha1)
    elif leaf is not None:
        found = next((c for c in certificates if c.der == leaf), None)
        shown = _hex(hashlib.sha1(leaf).digest())  # noqa: S324 - thumbprint display only
    else:
        raise _key_not_found(client_id, "")
    if found is None or (leaf is not None and leaf != found.der):
        raise _key_not_found(client_id, shown)
    return found


def entra_instant(seconds: float) -> str:
    moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def _us_date(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%m/%d/%Y %H:%M:%S")


def verify_signature(jws: CompactJws, cert: RegisteredCertificate, *, now: float) -> None:
    """Check the signature with the padding ``alg`` names; raises ``EntraError``.

    PS256 is RSASSA-PSS with SHA-256, MGF1-SHA-256 and a salt as long as the hash (RFC 7518
    section 3.5); OpenSSL enforces the exact salt length when it is given. RS256 is PKCS#1 v1.5.
    """
    alg = jws.header.get("alg")
    pad: padding.AsymmetricPadding
    if alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    elif alg == "RS256":
        pad = padding.PKCS1v15()
    else:
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    if not cert.not_before <= now < cert.not_after:
        raise EntraError(
            CERT_NOT_VALID,
            "The certificate used to sign the client assertion is not within its valid time "
            f"range. Current time: {entra_instant(now)}, certificate valid from "
            f"{entra_instant(cert.not_before)}, expiry time {entra_instant(cert.not_after)}.",
        )
    try:
        cert.public_key.verify(jws.signature, jws.signing_input, pad, hashes.SHA256())
    except InvalidSignature:
        # Reason text as Entra words it for a key that was found (Azure/azure-sdk-for-java#25109).
        raise EntraError(
            BAD_SIGNATURE,
            "Client assertion failed signature validation. [Reason - Key was found, but use of "
            "the key to verify the signature failed., Thumbprint of key used by client: "
            f"'{_hex(cert.sha1)}', Found key 'Start={_us_date(cert.not_before)}, "
            f"End={_us_date(cert.not_after)}']",
        ) from None


def check_header(header: Mapping[str, Any]) -> None:
    """``typ``, when present, must say JWT (RFC 7519 section 5.1); ``crit`` is not understood."""
    typ = header.get("typ")
    if (typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT")) or "crit" in header:
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")


# NumericDate (RFC 7519 section 2) values that are instants at all: years 1 to 9999, the range
# .NET's DateTime (and Python's datetime) can hold. Anything else cannot be a time Entra reads.
_EARLIEST, _LATEST = -62135596800, 253402300799


def _number(claims: Mapping[str, Any], name: str, *, integer: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    if integer and not isinstance(value, int):
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    if not _EARLIEST <= value <= _LATEST:  # also refuses NaN; float(10**400) would overflow
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    return float(value)


def _missing(name: str) -> EntraError:
    return EntraError(
        MISSING_FIELD,
        f"The required field '{name}' is missing from the credential. Ensure that you have all "
        "the necessary parameters for the login request.",
    )


def same_endpoint(aud: str, endpoint_url: str) -> bool:
    """``aud`` names the endpoint the request came to. Scheme and host compare without case
    (they are case-insensitive in URLs), the path exactly but for the tenant GUID's case. No v1/v2
    sibling and no trailing-slash variant: MSAL.NET#3352 reports that ESTS refuses an assertion
    whose ``aud`` differs from the token endpoint used, and no Microsoft page lists variants."""
    try:
        got = urlsplit(aud)
    except ValueError:  # e.g. "https://[::1": not a URL, so not this endpoint
        return False
    want = urlsplit(endpoint_url)
    got_path, want_path = got.path.split("/"), want.path.split("/")
    return (
        (got.scheme.lower(), got.netloc.lower()) == (want.scheme.lower(), want.netloc.lower())
        and not got.query
        and not got.fragment
        and len(got_path) == len(want_path) > 1
        and got_path[1].lower() == want_path[1].lower()
        and got_path[2:] == want_path[2:]
    )


def check_time(claims: Mapping[str, Any], *, now: float, policy: AssertionPolicy) -> None:
    """exp/nbf/iat must be numbers; now within [nbf - skew, exp + skew); optional lifetime cap."""
    exp = _number(claims, "exp", integer=policy.require_integer_times)
    nbf = _number(claims, "nbf", integer=policy.require_integer_times)
    iat = _number(claims, "iat", integer=policy.require_integer_times)
    if exp is None:
        raise _missing("exp")
    start = nbf if nbf is not None else iat
    skew = policy.clock_skew_seconds
    too_long = (
        policy.max_lifetime_seconds is not None
        and exp - (start if start is not None else now) > policy.max_lifetime_seconds
    )
    if now >= exp + skew or (nbf is not None and now < nbf - skew) or too_long:
        # Wording of a real answer (msal-dotnet#4951), which also shows that a missing nbf reads
        # as "valid from 1970-01-01".
        raise EntraError(
            OUT_OF_TIME_RANGE,
            f"Client assertion is not within its valid time range. Current time: "
            f"{entra_instant(now)}, assertion valid from {entra_instant(nbf or 0.0)}, expiry "
            f"time of assertion {entra_instant(exp)}. Review the documentation at {CERT_DOC}",
        )


def check_identity_claims(claims: Mapping[str, Any], *, client_id: str, endpoint_url: str) -> None:
    """Presence and type of aud/iss/sub/jti, iss = sub (50048), iss = client_id (700021), aud."""
    for name in ("aud", "iss", "sub", "jti"):
        if name not in claims:
            raise _missing(name)
    if not all(isinstance(claims[n], str) and claims[n] for n in ("aud", "iss", "sub", "jti")):
        # An aud array is refused as malformed (panva/openid-client#348).
        raise EntraError(INVALID_JWT, "JWT token is invalid or malformed.")
    if claims["sub"] != claims["iss"]:
        raise EntraError(
            SUBJECT_MISMATCHES_ISSUER,
            "Subject mismatches Issuer claim in the client assertion. Contact the tenant admin.",
        )
    if claims["iss"] != client_id:
        raise EntraError(
            ISSUER_NOT_CLIENT,
            "Client assertion application identifier doesn't match 'client_id' parameter. "
            f"Review the documentation at {CERT_DOC} .",
        )
    if not same_endpoint(claims["aud"], endpoint_url):
        raise EntraError(
            AUDIENCE_MISMATCH,
            "Client assertion audience claim does not match Realm issuer. Review the "
            f"documentation at {CERT_DOC} .",
        )


def verify_certificate_assertion(
    jws: CompactJws,
    *,
    client_id: str,
    certificates: Sequence[RegisteredCertificate],
    endpoint_url: str,
    now: float,
    policy: AssertionPolicy,
) -> RegisteredCertificate:
    """All checks for a certificate-signed assertion, in this order: header, claims, time, key
    lookup, certificate validity, signature. Returns the certificate that verified it."""
    check_header(jws.header)
    check_identity_claims(jws.claims, client_id=client_id, endpoint_url=endpoint_url)
    check_time(jws.claims, now=now, policy=policy)
    cert = select_certificate(jws.header, certificates, client_id)
    verify_signature(jws, cert, now=now)
    return cert
