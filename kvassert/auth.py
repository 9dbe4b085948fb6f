"""``BearerAuth``: bearer tokens from any azure-core ``TokenCredential`` for ``requests``.

Each request gets ``Authorization: Bearer <token>`` from ``credential.get_token(*scopes)``; the
credential's cache makes that a dict read, so a long-lived session always sends a valid token
without refresh logic of its own. A 401 that carries a claims challenge (Continuous Access
Evaluation: ``WWW-Authenticate: Bearer error="insufficient_claims", claims="<base64 JSON>"``)
gets one fresh token with those claims and the request is sent once more, through requests'
response hook as ``requests.auth.HTTPDigestAuth`` does.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from requests.auth import AuthBase
from requests.cookies import extract_cookies_to_jar
from requests.utils import parse_dict_header

from kvassert.errors import KvassertError
from kvassert.transport import is_loopback_host

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from requests import PreparedRequest, Response

_BEARER = re.compile(r"(?:^|,)\s*Bearer\s+", re.IGNORECASE)


def claims_from_challenge(header: str) -> str | None:
    """The claims a CAE challenge asks for, decoded to their JSON text; None for any other
    challenge, or one whose claims are not base64 JSON. Entra's resource providers send
    standard base64 and azure-core decodes base64url: both are accepted, padded or not."""
    match = _BEARER.search(header)
    if match is None:
        return None
    parameters: dict[str, str | None] = parse_dict_header(  # type: ignore[no-untyped-call]
        header[match.end() :]
    )
    if parameters.get("error") != "insufficient_claims":
        return None
    encoded = (parameters.get("claims") or "").strip().rstrip("=")
    if not encoded:
        return None
    try:
        raw = base64.urlsafe_b64decode(
            encoded.replace("+", "-").replace("/", "_") + "=" * (-len(encoded) % 4)
        )
        text = raw.decode("utf-8")
        json.loads(text)
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError all are
        return None
    return text


class BearerAuth(AuthBase):
    """``requests`` auth sending tokens for ``scope`` (one scope or several) from ``credential``:
    kvassert's ``AzureAdCredential`` or any azure-identity credential.

    ``requests.get(url, auth=BearerAuth(credential, "api://my-api/.default"))``. Raises
    ``KvassertError`` for a URL it will not send a token to (see ``sends_token_to``), and
    whatever the credential raises.
    """

    def __init__(self, credential: TokenCredential, scope: str | Iterable[str]) -> None:
        self.credential = credential
        self.scopes = (scope,) if isinstance(scope, str) else tuple(scope)
        if not self.scopes:
            raise ValueError("BearerAuth needs a scope, e.g. api://my-api/.default")

    def __repr__(self) -> str:
        return f"BearerAuth({type(self.credential).__name__}, scopes={self.scopes!r})"

    @staticmethod
    def sends_token_to(url: str) -> bool:
        """A bearer token is as good as a password to the API: it goes over https only, or over
        plain http to a loopback host (a local test server)."""
        parts = urlsplit(url)
        return parts.scheme == "https" or (
            parts.scheme == "http" and is_loopback_host(parts.hostname)
        )

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        self._authorize(request, claims=None)
        # A file body is read by the first send: remember where to rewind it for a retry.
        # str/bytes bodies are resent as they are.
        tell = getattr(request.body, "tell", None)
        position: int | None = tell() if tell is not None else None
        hook = functools.partial(self.handle_401, position=position)
        request.register_hook("response", hook)  # type: ignore[no-untyped-call]
        return request

    def handle_401(
        self, response: Response, *, position: int | None = None, **kwargs: Any
    ) -> Response:
        """Answer one claims challenge; any other response is returned as it is."""
        request = response.request
        # No token was sent (requests strips Authorization on a redirect to another host), so
        # none is owed: only a request that carried ours is retried.
        if response.status_code != 401 or "Authorization" not in request.headers:
            return response
        claims = claims_from_challenge(response.headers.get("WWW-Authenticate", ""))
        if claims is None:
            return response
        seek = getattr(request.body, "seek", None)
        if position is not None and seek is not None:
            seek(position)
        # Consume the content and release the connection so the retry can reuse it.
        _ = response.content
        response.close()
        retry = request.copy()
        jar = retry._cookies  # type: ignore[attr-defined]
        extract_cookies_to_jar(jar, request, response.raw)  # type: ignore[no-untyped-call]
        retry.prepare_cookies(jar)
        self._authorize(retry, claims=claims)
        # Sent by the adapter, not the session: response hooks do not run again, so the
        # request is retried once at most.
        second: Response = response.connection.send(retry, **kwargs)
        second.history.append(response)
        second.request = retry
        return second

    def _authorize(self, request: PreparedRequest, *, claims: str | None) -> None:
        url = request.url or ""
        if not self.sends_token_to(url):
            parts = urlsplit(url)
            raise KvassertError(
                f"BearerAuth does not send tokens over {parts.scheme or 'an unknown scheme'} to "
                f"{parts.hostname or url!r}: use https"
            )
        token = (
            self.credential.get_token(*self.scopes, claims=claims)
            if claims
            else self.credential.get_token(*self.scopes)
        )
        request.headers["Authorization"] = f"Bearer {token.token}"
