"""Fuzzing the parsers that read what servers send: every input ends in a result or the typed
error, never another exception.

Targets: the token response parser (``parse_token_response``) and the ``Date`` reader
(``server_time``) of ``token_client``; Key Vault's error reader (``explain_http_error`` and
``_error_parts``) and certificate reader (``describe_certificate``) of ``vault_signer``. The
example count comes from ``KVASSERT_FUZZ_EXAMPLES`` (``tests/fuzzing.py``). Every input that once
broke a parser is kept below as an explicit regression test.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.utils import formatdate
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvassert.errors import KeyVaultError, TokenRequestError
from kvassert.token_client import AccessToken, parse_token_response, server_time
from kvassert.vault_signer import (
    VaultCertificate,
    _error_parts,
    describe_certificate,
    explain_http_error,
)
from tests.certs import make_cert
from tests.fuzzing import fuzz_settings

CONTEXT = {"endpoint": "https://login.microsoftonline.com/t/oauth2/v2.0/token", "client_id": "c"}
TOKEN_FIELDS = [
    "access_token", "expires_in", "refresh_in", "ext_expires_in", "token_type", "expires_on",
    "not_before", "resource", "error", "error_description", "error_codes", "timestamp",
    "trace_id", "correlation_id", "error_uri",
]  # fmt: skip

# --- building blocks ---------------------------------------------------------------------------

# Digit strings Python's int() refuses or mangles: superscripts (str.isdigit() but not decimal),
# other scripts' decimal digits, and runs past int()'s 4300-digit limit.
digit_texts = st.one_of(
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=8),
    st.integers(1, 6000).map(lambda n: "9" * n),
    st.sampled_from(["²", "١٢٣", " 42 ", "+5", "-5", "0", "007", "1e3", "3600.0", "0x10"]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(10**30), 10**30),
    st.floats(),  # NaN and infinities included: json.dumps writes them, json.loads reads them
    st.text(max_size=30),
    digit_texts,
    st.sampled_from(["Bearer", "", "AADSTS700027: bad", "AADSTS", "pop"]),
    digit_texts.map(lambda digits: f"AADSTS{digits}: x"),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(TOKEN_FIELDS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=10,
)
documents = st.dictionaries(st.sampled_from(TOKEN_FIELDS), values, max_size=8)
plausible = st.fixed_dictionaries(
    {
        "access_token": st.text(min_size=1, max_size=20),
        "expires_in": st.integers(-5, 10**6) | digit_texts | st.integers(0, 100).map(str),
    },
    optional={
        "refresh_in": st.integers(-5, 10**6) | digit_texts,
        "token_type": scalars,
        "ext_expires_in": scalars,
    },
)


def json_bytes(document: object) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


bodies = st.one_of(
    st.binary(max_size=200),
    documents.map(json_bytes),
    plausible.map(json_bytes),
    values.map(json_bytes),
    # Truncated JSON, and JSON wrapped in an HTML error page from a proxy.
    st.tuples(documents.map(json_bytes), st.integers(0, 200)).map(lambda cut: cut[0][: cut[1]]),
    documents.map(lambda doc: b"<html><body>" + json_bytes(doc) + b"</body></html>"),
    # Nesting deeper than the recursion limit, closed or not.
    st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 200_000).map(lambda depth: b'{"a":' * depth),
    # A number literal longer than int()'s digit limit.
    st.integers(1, 9000).map(lambda n: b'{"access_token":"t","expires_in":' + b"9" * n + b"}"),
)
statuses = st.sampled_from([200, 200, 200, 400, 401, 403, 429, 500, 503]) | st.integers(-1, 999)
http_dates = st.integers(-(10**12), 10**12).map(
    lambda t: formatdate(max(-62135596800, min(t, 253402300799)), usegmt=True)
)
header_values = st.text(max_size=40) | http_dates | digit_texts | st.sampled_from(["nan", "inf"])
headers = st.dictionaries(
    st.sampled_from(["Date", "date", "Retry-After", "retry-after", "Content-Type"])
    | st.text(max_size=10),
    header_values,
    max_size=4,
)


# --- (1) parse_token_response ------------------------------------------------------------------


def check_token_response(status: int, head: dict[str, str], body: bytes, now: float) -> None:
    """The property: an AccessToken whose times make sense, or a TokenRequestError."""
    try:
        token = parse_token_response(status, head, body, now=now, context=CONTEXT)
    except TokenRequestError as error:
        assert str(error)
        assert type(error.aadsts) is int and type(error.status) is int
        assert error.retry_after is None or error.retry_after >= 0
        assert error.server_time is None or math.isfinite(error.server_time)
        return
    assert isinstance(token, AccessToken)
    assert status == 200
    assert isinstance(token.token, str) and token.token
    assert isinstance(token.token_type, str) and token.token_type
    assert all(type(t) is int for t in (token.issued_at, token.expires_on, token.refresh_on))
    assert 0 < token.refresh_on - token.issued_at <= token.expires_on - token.issued_at


@fuzz_settings()
@given(
    status=statuses,
    head=headers,
    body=bodies,
    now=st.floats(0, 4e9) | st.integers(0, 2**33).map(float),
)
def test_token_response_is_a_token_or_a_token_request_error(
    status: int, head: dict[str, str], body: bytes, now: float
) -> None:
    check_token_response(status, head, body, now)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # json.loads raised RecursionError on nesting deeper than the interpreter's limit.
        (200, b"[" * 100_000 + b"]" * 100_000),
        (400, b'{"a":' * 100_000),
        # json.loads raised ValueError (not JSONDecodeError) past int()'s 4300-digit limit.
        (200, b'{"access_token":"t","expires_in":' + b"9" * 5000 + b"}"),
        # "²".isdigit() is true but int("²") raises ValueError; so did a 5000-digit string.
        (200, b'{"access_token":"t","expires_in":"\\u00b2"}'),
        (200, b'{"access_token":"t","expires_in":"' + b"9" * 5000 + b'"}'),
        (200, b'{"access_token":"t","expires_in":3600,"refresh_in":"\\u00b2"}'),
        # int() on an AADSTS code past the digit limit raised ValueError.
        (400, b'{"error":"x","error_description":"AADSTS' + b"9" * 5000 + b': no"}'),
        # A 1-second token was due for refresh the moment it was issued (refresh_on == issued_at).
        (200, b'{"access_token":"t","expires_in":1}'),
        # error_codes [true] made aadsts the bool True.
        (400, b'{"error":"x","error_codes":[true]}'),
    ],
)
def test_token_response_regressions(status: int, body: bytes) -> None:
    check_token_response(status, {}, body, 1000.0)


def test_regression_values() -> None:
    one_second = parse_token_response(
        200, {}, b'{"access_token":"t","expires_in":1}', now=1000.0, context=CONTEXT
    )
    assert (one_second.issued_at, one_second.refresh_on, one_second.expires_on) == (
        1000,
        1001,
        1001,
    )
    with pytest.raises(TokenRequestError) as info:
        parse_token_response(
            400, {}, b'{"error":"x","error_codes":[true]}', now=0.0, context=CONTEXT
        )
    assert info.value.aadsts == 0


# --- (2) server_time --------------------------------------------------------------------------


@fuzz_settings()
@given(head=headers)
def test_server_time_is_a_finite_number_or_none(head: dict[str, str]) -> None:
    value = server_time(head)
    assert value is None or (isinstance(value, float) and math.isfinite(value))


@contextmanager
def local_timezone(name: str) -> Iterator[None]:
    """Run with the process's local time zone set to ``name`` (POSIX only)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="needs time.tzset (POSIX)")
@fuzz_settings(0.2)
@given(epoch=st.integers(0, 253402300799 - 86400), form=st.sampled_from(["GMT", "-0000", "+0000"]))
def test_server_time_round_trips_whatever_the_local_time_zone(epoch: int, form: str) -> None:
    # RFC 5322 §3.3: "-0000" is UTC too. A naive datetime was read as local time, so on a
    # machine outside UTC the measured clock skew was off by the zone's offset.
    text = formatdate(epoch, usegmt=form == "GMT")
    if form == "+0000":
        text = text.replace("-0000", "+0000")
    with local_timezone("America/Los_Angeles"):
        assert server_time({"Date": text}) == epoch


# --- (3) Key Vault error bodies ----------------------------------------------------------------


class FakeResponse:
    def __init__(self, text: str | Exception) -> None:
        self._text = text

    def text(self) -> str:
        if isinstance(self._text, Exception):
            raise self._text
        return self._text


error_documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["error", "code", "message", "innererror"]) | st.text(max_size=4),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
error_texts = st.one_of(
    st.text(max_size=200),
    error_documents.map(lambda doc: json.dumps(doc, allow_nan=True)),
    st.integers(1, 200_000).map(lambda depth: '{"error":' * depth),
    st.integers(1, 5000).map(lambda depth: '{"error":{"code":' + "[" * depth + "]" * depth + "}}"),
)
responses = st.none() | error_texts.map(FakeResponse) | st.just(FakeResponse(UnicodeError("x")))


@fuzz_settings()
@given(
    response=responses,
    status=st.none() | st.integers(-1, 1000),
    operation=st.sampled_from(["sign", "certificate get", ""]),
    name=st.text(max_size=20),
    principal=st.text(max_size=20),
)
def test_key_vault_errors_are_always_a_key_vault_error(
    response: FakeResponse | None, status: int | None, operation: str, name: str, principal: str
) -> None:
    exc = SimpleNamespace(status_code=status, response=response)
    code, inner, message = _error_parts(exc)
    assert all(isinstance(part, str) for part in (code, inner, message))
    assert len(message) <= 300
    error = explain_http_error(
        exc, operation=operation, vault_url="https://v.vault.azure.net", name=name,
        principal=principal,
    )  # fmt: skip
    assert isinstance(error, KeyVaultError)
    assert str(error) and error.status == (status or 0)


@pytest.mark.parametrize(
    "message",
    [
        # Found at 20000 examples after Key Vault messages were folded onto one line: the cut
        # came before the folding, so a long message could come out at 301 characters.
        "AADSTS" + "9" * 400 + ": x",
        "a\r\nCaller: " + "b " * 400,
    ],
)
def test_key_vault_error_message_regressions(message: str) -> None:
    exc = SimpleNamespace(
        status_code=403, response=FakeResponse(json.dumps({"error": {"message": message}}))
    )
    assert len(_error_parts(exc)[2]) <= 300


# --- (4) certificate bundles -------------------------------------------------------------------

DER = make_cert(cn="fuzz", days=30).der
KEY_ID = "https://v.vault.azure.net/keys/app-cert/0123456789abcdef0123456789abcdef"

ders = st.one_of(
    st.just(DER),
    st.binary(max_size=64),
    st.integers(0, len(DER)).map(lambda cut: DER[:cut]),
    st.tuples(st.integers(0, len(DER) - 1), st.integers(0, 255)).map(
        lambda flip: DER[: flip[0]] + bytes([flip[1]]) + DER[flip[0] + 1 :]
    ),
)
cers = st.one_of(
    ders, ders.map(bytearray), st.none(), st.text(max_size=20), st.integers(-3, 64), st.just([])
)
key_ids = st.one_of(
    st.just(KEY_ID),
    st.none(),
    st.text(max_size=40),
    st.sampled_from(["http://[", "https://[::1", "https://v/keys/a/", "//", "kid"]),
    st.integers(0, 3),
)
properties = st.none() | st.builds(
    SimpleNamespace,
    version=st.none() | st.text(max_size=10),
    enabled=st.none() | st.booleans(),
    not_before=st.none() | st.datetimes(timezones=st.just(dt.timezone.utc)),
    expires_on=st.none() | st.datetimes(timezones=st.just(dt.timezone.utc)),
)
policies = st.none() | st.builds(
    SimpleNamespace,
    exportable=st.none() | st.booleans(),
    key_type=st.none() | st.text(max_size=5),
    key_size=st.none() | st.integers(0, 8192),
)


@fuzz_settings()
@given(cer=cers, key_id=key_ids, props=properties, policy=policies)
def test_certificate_bundles_parse_or_raise_key_vault_error(
    cer: Any, key_id: Any, props: Any, policy: Any
) -> None:
    certificate: Any = SimpleNamespace(cer=cer, key_id=key_id, properties=props)
    try:
        described = describe_certificate(
            "https://v.vault.azure.net", "app-cert", certificate, policy
        )
    except KeyVaultError as error:
        assert "app-cert" in str(error)
        return
    assert isinstance(described, VaultCertificate)
    assert described.chain.leaf is not None  # the DER was parsed, not just carried along
    assert described.key_id == key_id


# The version INTEGER of the TBSCertificate (RFC 5280 §4.1): context tag 0, then 02 01 nn.
VERSION_AT = DER.index(b"\xa0\x03\x02\x01\x02") + 4


@pytest.mark.parametrize(
    ("cer", "key_id"),
    [
        # A garbage cer was carried along unparsed and broke later, as a cryptography ValueError
        # at the first sign; a kid that is not a URL made urlsplit raise ValueError.
        pytest.param(b"\x30\x03\x02\x01\x00", KEY_ID, id="tiny-der"),
        pytest.param(DER[:100], KEY_ID, id="truncated-der"),
        pytest.param(DER, "http://[", id="kid-not-a-url"),
        pytest.param("not bytes", KEY_ID, id="cer-str"),
        pytest.param(5, KEY_ID, id="cer-int"),
        pytest.param(DER, 7, id="kid-int"),
        # Found at 20000 examples: version 1 (v2) or 5 raised x509.InvalidVersion, which is not
        # a ValueError.
        pytest.param(DER[:VERSION_AT] + b"\x01" + DER[VERSION_AT + 1 :], KEY_ID, id="version-1"),
        pytest.param(DER[:VERSION_AT] + b"\x05" + DER[VERSION_AT + 1 :], KEY_ID, id="version-5"),
    ],
)
def test_certificate_bundle_regressions(cer: Any, key_id: Any) -> None:
    certificate: Any = SimpleNamespace(cer=cer, key_id=key_id, properties=None)
    with pytest.raises(KeyVaultError, match="app-cert"):
        describe_certificate("https://v.vault.azure.net", "app-cert", certificate, None)
