"""The public surface: every name in __all__ resolves, and importing kvassert stays light."""

from __future__ import annotations

import subprocess
import sys

import kvassert


def test_every_public_name_resolves() -> None:
    for name in kvassert.__all__:
        assert getattr(kvassert, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        kvassert.no_such_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_kvassert_does_not_import_the_azure_sdk_or_requests() -> None:
    code = (
        "import sys, kvassert; "
        "heavy = [m for m in ('azure', 'azure.identity', 'azure.core', 'requests', 'jwt', "
        "'cryptography') if m in sys.modules]; print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
