"""The ``kvassert`` command: assertion, token, check, emulator, demo.

Every failure ends in one line on stderr and an exit code per error class, never a traceback:
0 ok, 1 a check found problems, 2 usage, 3 configuration, 4 no usable credential,
5 signing / Key Vault, 6 token request, 7 other errors.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from kvassert import __version__
from kvassert.errors import (
    AllCredentialsFailedError,
    ConfigError,
    CredentialUnavailableError,
    KvassertError,
    SigningError,
    TokenRequestError,
)

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 3),
    (CredentialUnavailableError, 4),
    (AllCredentialsFailedError, 4),
    (SigningError, 5),
    (TokenRequestError, 6),
    (KvassertError, 7),
)


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="appsettings.json (default: ./appsettings.json)",
    )
    parser.add_argument("--section", default="AzureAd", help="configuration section")
    parser.add_argument(
        "--environment",
        default=None,
        help="environment name for appsettings.{Environment}.json "
        "(default: DOTNET_ENVIRONMENT / ASPNETCORE_ENVIRONMENT)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvassert",
        description="Entra ID client assertions signed by Azure Key Vault.",
    )
    parser.add_argument("--version", action="version", version=f"kvassert {__version__}")
    parser.add_argument("--debug", action="store_true", help="log at DEBUG to stderr")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    assertion = commands.add_parser(
        "assertion", help="print one signed client assertion for the first usable credential"
    )
    _config_arguments(assertion)
    assertion.add_argument(
        "--audience", metavar="URL", help="assertion audience (default: the app's token endpoint)"
    )
    assertion.add_argument(
        "--rs256", action="store_true", help="RS256 with x5t instead of PS256 with x5t#S256"
    )
    assertion.add_argument(
        "--v1", action="store_true", help="audience is the v1 token endpoint (/oauth2/token)"
    )

    token = commands.add_parser("token", help="print an access token")
    _config_arguments(token)
    token.add_argument("--scope", required=True, help="e.g. api://my-api/.default")
    token.add_argument(
        "--json", action="store_true", help="print token, expiry and non-secret metadata as JSON"
    )

    check = commands.add_parser("check", help="validate the configuration, one line per credential")
    _config_arguments(check)
    check.add_argument(
        "--online", action="store_true", help="read the vault certificate, test-sign and verify"
    )
    check.add_argument("--scope", help="with --online: also request a token for this scope")

    demo = commands.add_parser("demo", help="run the end-to-end demo on the embedded emulator")
    demo.add_argument("--keep", metavar="DIR", help="write the demo's appsettings.json here")

    emulator = commands.add_parser(
        "emulator", help="run the local Key Vault / Entra ID / managed identity emulator"
    )
    try:
        from kvassert.emulator.cli import add_arguments
    except ImportError:  # the emulator extra is not installed
        emulator.set_defaults(emulator_missing=True)
    else:
        add_arguments(emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="kvassert: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(_run(args))
    except KeyboardInterrupt:
        return 130
    except KvassertError as exc:
        print(f"kvassert: error: {exc}", file=sys.stderr)
        return next(code for kind, code in EXIT_CODES if isinstance(exc, kind))
    except ValueError as exc:  # bad argument values (scope, audience) from the library
        print(f"kvassert: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "emulator":
        if getattr(args, "emulator_missing", False):
            print(
                "kvassert: error: the emulator needs the extra: pip install 'kvassert[emulator]'",
                file=sys.stderr,
            )
            return 2
        from kvassert.emulator.cli import run

        return int(run(args))
    if args.command == "demo":
        from kvassert.demo import run_demo

        return int(run_demo(keep=args.keep))
    from kvassert.settings import load_settings

    settings = load_settings(args.config, section=args.section, environment=args.environment)
    if args.command == "assertion":
        return _assertion(settings, args)
    if args.command == "token":
        return _token(settings, args)
    return _check(settings, args)


def _assertion(settings: Any, args: argparse.Namespace) -> int:
    import dataclasses

    from kvassert.credential import AzureAdCredential

    if args.rs256:
        settings = dataclasses.replace(settings, signing_algorithm="RS256")
    audience = args.audience or settings.token_endpoint("v1" if args.v1 else None)
    with AzureAdCredential(settings) as credential:
        print(credential.assertion(audience))
    return 0


def _token(settings: Any, args: argparse.Namespace) -> int:
    from kvassert.credential import AzureAdCredential

    with AzureAdCredential(settings) as credential:
        token = credential.token(args.scope)
    if not args.json:
        print(token.token)
        return 0

    def iso(epoch: int) -> str:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()

    print(
        json.dumps(
            {
                "access_token": token.token,
                "token_type": token.token_type,
                "expires_on": token.expires_on,
                "expires_on_utc": iso(token.expires_on),
                "refresh_on": token.refresh_on,
                "scope": args.scope,
                "client_id": settings.client_id,
                "tenant_id": settings.tenant_id,
                "token_endpoint": settings.token_endpoint(),
            },
            indent=2,
        )
    )
    return 0


def _check(settings: Any, args: argparse.Namespace) -> int:
    from kvassert.check import check_settings

    if args.scope and not args.online:
        print("kvassert: error: --scope needs --online", file=sys.stderr)
        return 2
    lines = check_settings(settings, online=args.online, scope=args.scope)
    print(
        f"{settings.section}: client {settings.client_id} in tenant {settings.tenant_id} "
        f"({settings.token_endpoint()}); files: {', '.join(settings.source_files) or 'none'}"
    )
    for line in lines:
        print(line.render())
    return 1 if any(line.status == "fail" for line in lines) else 0
