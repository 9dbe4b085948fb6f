"""BearerAuth against a scripted loopback API: the header on every request from the credential's
cache, one retry on a CAE claims challenge, and no token where requests would not send one."""

from __future__ import annotations

import base64
import io
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken as AzureAccessToken

from kvassert import AzureAdCredential, BearerAuth, settings_from_mapping
from kvassert.auth import claims_from_challenge
from kvassert.errors import KvassertError
from kvassert.transport import RetryPolicy
from tests.certs import make_cert
from tests.fakes import scripted_server

CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'
CHALLENGE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/'
    'authorize", error="insufficient_claims", claims="'
    + base64.b64encode(CLAIMS.encode()).decode()
    + '"'
)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class Api:
    """Answers in order (the last repeats); records what each request carried."""

    url: str
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


@contextmanager
def api_server(host: str = "127.0.0.1") -> Iterator[Api]:
    lock = threading.Lock()
    api: Api

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                index = min(len(api.seen), len(api.answers) - 1)
                api.seen.append(
                    Seen(self.command, self.path, self.headers.get("Authorization"), body)
                )
            status, headers = api.answers[index]
            payload = json.dumps({"status": status}).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    api = Api(f"http://{host}:{httpd.server_address[1]}")
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        httpd.shutdown()
        httpd.server_close()


class RecordingCredential:
    """A TokenCredential that hands out numbered tokens and records how it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], str | None]] = []

    def get_token(self, *scopes: str, claims: str | None = None, **kwargs: Any) -> AzureAccessToken:
        self.calls.append((scopes, claims))
        return AzureAccessToken(f"token-{len(self.calls)}", 4_000_000_000)


@pytest.fixture
def api() -> Iterator[Api]:
    with api_server() as served:
        yield served


def test_every_request_carries_a_bearer_token_for_the_scopes(api: Api) -> None:
    api.answers = [(200, {})]
    credential = RecordingCredential()
    auth = BearerAuth(credential, ["api://x/.default", "api://x/other"])
    with requests.Session() as session:
        for _ in range(3):
            assert session.get(f"{api.url}/items", auth=auth, timeout=5).status_code == 200
    assert [s.authorization for s in api.seen] == [
        "Bearer token-1",
        "Bearer token-2",
        "Bearer token-3",
    ]
    assert credential.calls == [(("api://x/.default", "api://x/other"), None)] * 3


def test_the_kvassert_credential_cache_makes_the_per_request_token_cheap(
    api: Api, tmp_path: Path
) -> None:
    api.answers = [(200, {})]
    pem = tmp_path / "c.pem"
    pem.write_bytes(make_cert(days=30).pem())
    with scripted_server() as (entra, script):
        script.answers = [
            (200, {}, json.dumps({"access_token": "kv-token", "expires_in": 3600}).encode())
        ]
        settings = settings_from_mapping(
            {
                "AzureAd": {
                    "Instance": entra + "/",
                    "TenantId": "11111111-2222-3333-4444-555555555555",
                    "ClientId": "00000000-0000-0000-0000-0000000000c1",
                    "ClientCredentials": [{"SourceType": "Path", "CertificateDiskPath": str(pem)}],
                }
            },
            env={},
        )
        with AzureAdCredential(settings, retry_policy=RetryPolicy(attempts=1)) as credential:
            auth = BearerAuth(credential, "api://x/.default")
            for _ in range(5):
                requests.get(f"{api.url}/items", auth=auth, timeout=5)
    assert {s.authorization for s in api.seen} == {"Bearer kv-token"}
    assert len(api.seen) == 5 and script.hits == 1


@pytest.mark.parametrize("as_file", [False, True])
def test_a_claims_challenge_gets_a_fresh_token_and_one_retry(api: Api, as_file: bool) -> None:
    api.answers = [(401, {"WWW-Authenticate": CHALLENGE}), (200, {})]
    credential = RecordingCredential()
    body: Any = io.BytesIO(b'{"order": 1}') if as_file else b'{"order": 1}'
    response = requests.post(
        f"{api.url}/orders", data=body, auth=BearerAuth(credential, "api://x/.default"), timeout=5
    )
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [401]
    assert credential.calls == [(("api://x/.default",), None), (("api://x/.default",), CLAIMS)]
    assert [(s.method, s.authorization, s.body) for s in api.seen] == [
        ("POST", "Bearer token-1", b'{"order": 1}'),
        ("POST", "Bearer token-2", b'{"order": 1}'),  # the body was resent, rewound if a file
    ]


def test_a_second_challenge_is_returned_not_retried(api: Api) -> None:
    api.answers = [(401, {"WWW-Authenticate": CHALLENGE})]
    credential = RecordingCredential()
    response = requests.get(f"{api.url}/x", auth=BearerAuth(credential, "s/.default"), timeout=5)
    assert response.status_code == 401
    assert len(api.seen) == 2
    assert [claims for _, claims in credential.calls] == [None, CLAIMS]


@pytest.mark.parametrize(
    "challenge",
    [
        'Bearer error="invalid_token", error_description="expired"',
        'Bearer error="insufficient_claims"',  # no claims to satisfy
        'Bearer error="insufficient_claims", claims="%%%not-base64%%%"',
        'Basic realm="api"',
        "",
    ],
)
def test_other_401s_are_returned_as_they_are(api: Api, challenge: str) -> None:
    api.answers = [(401, {"WWW-Authenticate": challenge} if challenge else {})]
    credential = RecordingCredential()
    response = requests.get(f"{api.url}/x", auth=BearerAuth(credential, "s/.default"), timeout=5)
    assert response.status_code == 401
    assert len(api.seen) == 1 and len(credential.calls) == 1


def test_no_token_follows_a_redirect_to_another_host(api: Api) -> None:
    with api_server(host="localhost") as other:
        other.answers = [(401, {"WWW-Authenticate": CHALLENGE})]
        api.answers = [(302, {"Location": f"{other.url}/elsewhere"})]
        credential = RecordingCredential()
        response = requests.get(
            f"{api.url}/x", auth=BearerAuth(credential, "s/.default"), timeout=5
        )
    assert response.status_code == 401
    assert api.seen[0].authorization == "Bearer token-1"
    # requests stripped the header for the other host; the challenge there earns no token
    assert [s.authorization for s in other.seen] == [None]
    assert credential.calls == [(("s/.default",), None)]


def test_tokens_go_only_over_https_or_to_loopback_http() -> None:
    credential = RecordingCredential()
    auth = BearerAuth(credential, "s/.default")
    with pytest.raises(KvassertError, match="does not send tokens over http"):
        requests.Request("GET", "http://api.example.com/x", auth=auth).prepare()
    assert credential.calls == []
    prepared = requests.Request("GET", "https://api.example.com/x", auth=auth).prepare()
    assert prepared.headers["Authorization"] == "Bearer token-1"
    assert BearerAuth.sends_token_to("http://[::1]:8080/x")
    assert not BearerAuth.sends_token_to("http://127.0.0.1.example.com/x")
    with pytest.raises(ValueError, match="scope"):
        BearerAuth(credential, [])


def test_claims_from_challenge() -> None:
    url_safe = base64.urlsafe_b64encode(CLAIMS.encode()).decode().rstrip("=")
    assert claims_from_challenge(CHALLENGE) == CLAIMS
    assert (
        claims_from_challenge(f'Bearer error="insufficient_claims", claims="{url_safe}"') == CLAIMS
    )
    assert (
        claims_from_challenge(
            f'PoP realm="", Bearer claims="{url_safe}", error="insufficient_claims"'
        )
        == CLAIMS
    )
    not_json = base64.b64encode(b"not json").decode()
    assert claims_from_challenge(f'Bearer error="insufficient_claims", claims="{not_json}"') is None
    assert claims_from_challenge(CHALLENGE.replace("Bearer", "Digest")) is None
