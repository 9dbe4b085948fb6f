"""A Flask app on App Service that calls a protected API with an Entra ID token from kvassert.

The app authenticates as its app registration with a certificate whose private key stays in
Key Vault: kvassert reads ``appsettings.json`` (the ``AzureAd`` section, overridden by App
Service app settings such as ``AzureAd__ClientId``) and signs each client assertion with the
vault, reached through the web app's managed identity.

The credential is built once per gunicorn worker, when the worker imports this module, and
caches the token: a request costs no Key Vault or Entra call until the token is due for
refresh. Do not start gunicorn with ``--preload``: the credential's HTTP sessions must not be
shared across the fork.

Settings (environment / App Service app settings):
- ``AzureAd__*``: see README.md (they override ``appsettings.json``);
- ``DOWNSTREAM_API_URL``: the protected API's base URL, e.g. ``https://contoso-api.azurewebsites.net``;
- ``DOWNSTREAM_API_SCOPE``: ``{the API's App ID URI}/.default``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response, jsonify

import kvassert

HERE = Path(__file__).resolve().parent
API_URL = os.environ.get("DOWNSTREAM_API_URL", "").rstrip("/")
API_SCOPE = os.environ.get("DOWNSTREAM_API_SCOPE", "")
if not API_URL or not API_SCOPE:
    raise RuntimeError(
        "set DOWNSTREAM_API_URL (the protected API's base URL) and DOWNSTREAM_API_SCOPE "
        "(its App ID URI followed by /.default) in the App Service app settings"
    )

# appsettings.json (and appsettings.{Environment}.json) next to this file, then the
# environment: App Service app settings such as AzureAd__ClientId override the file.
credential = kvassert.from_appsettings(HERE)
api_auth = kvassert.BearerAuth(credential, API_SCOPE)
session = requests.Session()
app = Flask(__name__)


def _bad_gateway(message: str, **details: Any) -> Response:
    app.logger.error("%s", message)
    answer = jsonify(error=message, **details)
    answer.status_code = 502
    return answer


@app.get("/")
def index() -> Response:
    try:
        # BearerAuth asks the credential for a token on every request: after the first, a cache
        # hit (renewed in the background before it is due), so this costs no network call.
        answer = session.get(f"{API_URL}/data", auth=api_auth, timeout=(5, 30))
    except kvassert.KvassertError as exc:
        return _bad_gateway(f"no token for {API_SCOPE}: {' '.join(str(exc).split())}")
    except requests.RequestException as exc:
        return _bad_gateway(f"the API at {API_URL} cannot be reached: {exc}")
    if answer.status_code != 200:
        try:
            detail: Any = answer.json()
        except ValueError:
            detail = answer.text[:500]
        return _bad_gateway(
            f"the API answered {answer.status_code}", status=answer.status_code, detail=detail
        )
    return jsonify(answer.json())


@app.get("/healthz")
def healthz() -> Response:
    """For App Service's health check: the worker is up (no token is fetched here)."""
    return jsonify(status="ok")
