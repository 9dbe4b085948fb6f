"""A FastAPI app on App Service that calls a protected API asynchronously, with an Entra ID
token from ``kvassert.aio``.

The app authenticates as its app registration with a certificate whose private key stays in
Key Vault: kvassert reads ``appsettings.json`` (the ``AzureAd`` section, overridden by App
Service app settings such as ``AzureAd__ClientId``) and signs each client assertion with the
vault, reached through the web app's managed identity.

Each worker builds one async credential and one ``httpx.AsyncClient`` in the app's lifespan
handler, inside the worker's event loop, and closes both when the worker shuts down (the
credential's aiohttp session and Key Vault clients belong to that loop). The credential caches
the token, and requests that miss the cache together share one acquisition: a cold worker that
gets 20 requests at once costs one Key Vault signature and one token request.

Settings (environment / App Service app settings):
- ``AzureAd__*``: see README.md (they override ``appsettings.json``);
- ``DOWNSTREAM_API_URL``: the protected API's base URL, e.g. ``https://contoso-api.azurewebsites.net``;
- ``DOWNSTREAM_API_SCOPE``: ``{the API's App ID URI}/.default``.

Run (``startup.sh``)::

    gunicorn --bind=0.0.0.0:8000 --workers 2 --worker-class uvicorn_worker.UvicornWorker app:app
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import kvassert
import kvassert.aio

HERE = Path(__file__).resolve().parent
API_URL = os.environ.get("DOWNSTREAM_API_URL", "").rstrip("/")
API_SCOPE = os.environ.get("DOWNSTREAM_API_SCOPE", "")
if not API_URL or not API_SCOPE:
    raise RuntimeError(
        "set DOWNSTREAM_API_URL (the protected API's base URL) and DOWNSTREAM_API_SCOPE "
        "(its App ID URI followed by /.default) in the App Service app settings"
    )

# Under gunicorn's uvicorn worker this logger writes to gunicorn's error log (App Service's
# log stream).
log = logging.getLogger("uvicorn.error")


class State(TypedDict):
    credential: kvassert.aio.AzureAdCredential
    http: httpx.AsyncClient


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[State]:
    # appsettings.json (and appsettings.{Environment}.json) next to this file, then the
    # environment. A placeholder left in place raises ConfigError here: the worker does not
    # boot, and the log says which setting.
    credential = kvassert.aio.from_appsettings(HERE)
    async with (
        credential,  # closed at shutdown: its aiohttp session, Key Vault clients, identity
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as http,
    ):
        yield {"credential": credential, "http": http}


app = FastAPI(lifespan=lifespan)


def _bad_gateway(message: str, **details: Any) -> JSONResponse:
    log.error("%s", message)
    return JSONResponse({"error": message, **details}, status_code=502)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@app.get("/")
async def index(request: Request) -> JSONResponse:
    credential: kvassert.aio.AzureAdCredential = request.state.credential
    http: httpx.AsyncClient = request.state.http
    try:
        # From the cache; concurrent misses await one acquisition.
        token = (await credential.get_token(API_SCOPE)).token
    except kvassert.KvassertError as exc:
        return _bad_gateway(f"no token for {API_SCOPE}: {_one_line(exc)}")
    try:
        answer = await http.get(f"{API_URL}/data", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        reason = _one_line(exc) or type(exc).__name__
        return _bad_gateway(f"the API at {API_URL} cannot be reached: {reason}")
    if answer.status_code != 200:
        try:
            detail: Any = answer.json()
        except ValueError:
            detail = answer.text[:500]
        return _bad_gateway(
            f"the API answered {answer.status_code}", status=answer.status_code, detail=detail
        )
    return JSONResponse(answer.json())


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """For App Service's health check: the worker is up (no token is fetched here)."""
    return {"status": "ok"}
