"""Token request building and response parsing, without a server."""

from __future__ import annotations

import json

import pytest

from kvassert.errors import TokenRequestError
from kvassert.token_client import (
    ASSERTION_TYPE,
    AccessToken,
    assertion_fields,
    build_form,
    default_refresh_on,
    parse_token_response,
    server_time,
    target_for,
)

EP = "https://login.microsoftonline.com/t/oauth2/v2.0/token"
CTX = {"endpoint": EP, "client_id": "cid", "tenant": "t", "x5t_s256": "THUMB", "x5t": "SHA1"}


def parse(status: int, body: object, headers: dict[str, str] | None = None) -> AccessToken:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_token_response(status, headers or {}, raw, now=1000.0, context=CTX)


def test_v2_form_has_scope_and_assertion_fields() -> None:
    target = target_for(EP, "v2", ("api://x/.default",))
    form = build_form("cid", target, assertion_fields("A.B.C"))
    assert form == {
        "client_id": "cid",
        "grant_type": "client_credentials",
        "scope": "api://x/.default",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": "A.B.C",
    }


def test_v1_form_has_resource_without_default_suffix() -> None:
    target = target_for(EP, "v1", ("https://vault.azure.net/.default",))
    form = build_form("cid", target, {"client_secret": "s"})
    assert form["resource"] == "https://vault.azure.net"
    assert "scope" not in form


def test_targets_refuse_empty_and_multi_resource() -> None:
    with pytest.raises(ValueError, match="scope"):
        target_for(EP, "v2", ())
    with pytest.raises(ValueError, match="scope"):
        target_for(EP, "v2", ("",))
    with pytest.raises(ValueError, match="exactly one"):
        target_for(EP, "v1", ("a", "b"))


def test_success_v2_with_refresh_in() -> None:
    token = parse(
        200,
        {
            "token_type": "Bearer",
            "expires_in": 3599,
            "refresh_in": 1799,
            "ext_expires_in": 3599,
            "access_token": "tok",
        },
    )
    assert (token.token, token.expires_on, token.refresh_on, token.issued_at) == (
        "tok",
        4599,
        2799,
        1000,
    )


def test_success_v1_with_string_times() -> None:
    token = parse(
        200,
        {
            "token_type": "Bearer",
            "expires_in": "3599",
            "expires_on": "4599",
            "not_before": "1000",
            "resource": "r",
            "access_token": "tok",
        },
    )
    assert token.expires_on == 4599
    assert token.refresh_on == default_refresh_on(1000, 4599)


def test_default_refresh_point_is_well_before_expiry() -> None:
    assert default_refresh_on(0, 3600) == 3300
    assert default_refresh_on(0, 600) == 300
    assert default_refresh_on(0, 86400) == 79200


@pytest.mark.parametrize(
    "body",
    [
        b"<html>bad gateway</html>",
        b'{"access_token": "x", "expires_in"',
        {"expires_in": 10},
        {"access_token": "x"},
        {"access_token": "x", "expires_in": -1},
        {"access_token": "", "expires_in": 10},
        {"access_token": "x", "expires_in": True},
        [1, 2],
        b"",
    ],
)
def test_garbage_success_is_an_error(body: object) -> None:
    with pytest.raises(TokenRequestError) as info:
        parse(200, body)
    assert info.value.status == 200


def test_entra_error_carries_code_ids_hint_and_problem_flag() -> None:
    body = {
        "error": "invalid_client",
        "error_description": "AADSTS700027: Client assertion contains an invalid signature. "
        "Trace ID: tr Correlation ID: co Timestamp: 2026-01-01 00:00:00Z",
        "error_codes": [700027],
        "trace_id": "tr-1",
        "correlation_id": "co-1",
    }
    with pytest.raises(TokenRequestError) as info:
        parse(401, body, {"Date": "Sun, 22 Nov 2026 04:00:00 GMT"})
    err = info.value
    assert (err.aadsts, err.error, err.status) == (700027, "invalid_client", 401)
    assert (err.correlation_id, err.trace_id) == ("co-1", "tr-1")
    assert err.credential_problem
    assert "x5t#S256=THUMB" in err.hint and "cid" in err.hint
    assert "Trace ID" not in str(err).split("(correlation_id")[0]
    assert "correlation_id=co-1" in str(err)
    assert err.server_time == 1795320000.0  # 2026-11-22T04:00:00Z


def test_code_from_description_when_error_codes_missing() -> None:
    with pytest.raises(TokenRequestError) as info:
        parse(400, {"error": "unauthorized_client", "error_description": "AADSTS700016: nope"})
    assert info.value.aadsts == 700016
    assert not info.value.credential_problem
    assert "does not exist in tenant t" in info.value.hint


def test_html_error_and_retry_after() -> None:
    with pytest.raises(TokenRequestError) as info:
        parse(503, b"<html>down</html>", {"Retry-After": "7"})
    assert info.value.status == 503
    assert info.value.retry_after == 7.0
    assert "not an Entra error" in str(info.value)


def test_server_time_parses_or_returns_none() -> None:
    assert server_time({"Date": "garbage"}) is None
    assert server_time({}) is None


def test_access_token_repr_is_redacted() -> None:
    token = AccessToken(token="canary-token-123", expires_on=10, refresh_on=5)
    assert "canary-token-123" not in repr(token)
    assert "canary-token-123" not in str(token)
