"""A console job: get a token with kvassert, call the protected API once, print its answer.

Exit status 0 with the API's JSON on stdout, or 1 with one line on stderr saying what failed
(configuration, Key Vault, Entra ID, the API). ``--verbose`` adds kvassert's and the Azure SDK's
log on stderr.

Settings: ``appsettings.json`` next to this file (or ``--config``), overridden by environment
variables such as ``AzureAd__ClientId``; ``DOWNSTREAM_API_URL`` and ``DOWNSTREAM_API_SCOPE``
(or ``--url`` / ``--scope``).

    python daemon.py
    python daemon.py --url https://contoso-api.azurewebsites.net --scope api://contoso-data-api/.default
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests

import kvassert

HERE = Path(__file__).resolve().parent


class JobError(Exception):
    """A failure worth one line on stderr."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        default=str(HERE),
        help="appsettings.json, or the folder that holds it (default: this script's folder)",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DOWNSTREAM_API_URL", ""),
        help="the API's base URL (default: $DOWNSTREAM_API_URL)",
    )
    parser.add_argument(
        "--scope",
        default=os.environ.get("DOWNSTREAM_API_SCOPE", ""),
        help="the API's scope, {App ID URI}/.default (default: $DOWNSTREAM_API_SCOPE)",
    )
    parser.add_argument("--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args(argv)
    if not args.url or not args.scope:
        parser.error("set --url and --scope (or DOWNSTREAM_API_URL and DOWNSTREAM_API_SCOPE)")
    return args


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def fetch(config: str, url: str, scope: str) -> Any:
    """The API's ``/data`` answer, called with a token for ``scope``."""
    try:
        credential = kvassert.from_appsettings(config)
    except kvassert.KvassertError as exc:  # ConfigError, or no usable credential configured
        raise JobError(f"configuration: {one_line(exc)}") from exc
    with credential:
        try:
            token = credential.get_token(scope).token
        except kvassert.KvassertError as exc:
            raise JobError(f"no token for {scope}: {one_line(exc)}") from exc
    endpoint = f"{url.rstrip('/')}/data"
    try:
        answer = requests.get(
            endpoint, headers={"Authorization": f"Bearer {token}"}, timeout=(5, 30)
        )
    except requests.RequestException as exc:
        raise JobError(f"GET {endpoint} failed: {one_line(exc)}") from exc
    if answer.status_code != 200:
        reason = answer.headers.get("WWW-Authenticate") or answer.text[:200]
        raise JobError(f"GET {endpoint} answered {answer.status_code}: {one_line(reason)}")
    try:
        return answer.json()
    except ValueError as exc:
        raise JobError(f"GET {endpoint} answered something other than JSON") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Quiet unless asked: kvassert and the Azure SDK log warnings on their way to an error,
    # and this job's contract is one line on failure.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.CRITICAL,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = fetch(args.config, args.url, args.scope)
    except JobError as exc:
        print(f"daemon: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
