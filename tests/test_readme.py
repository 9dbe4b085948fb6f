"""The README stays true to the code: quickstart, every AADSTS code kvassert knows, every CLI
command and every configuration key."""

from __future__ import annotations

import re
from pathlib import Path

from kvassert.aadsts import troubleshooting_rows
from kvassert.cli import build_parser

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_quickstart_is_exactly_the_two_commands() -> None:
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = quickstart.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def test_every_aadsts_code_has_a_troubleshooting_row() -> None:
    for code, _, _ in troubleshooting_rows():
        assert f"| AADSTS{code} |" in README, code


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        assert f"`kvassert {name}" in README, name


def test_every_settings_field_is_documented() -> None:
    from dataclasses import fields

    from kvassert.settings import CredentialDescription

    pascal = {
        f.name: "".join(part.capitalize() for part in f.name.split("_"))
        for f in fields(CredentialDescription)
        if f.name not in ("path",)
    }
    # .NET spells these with an acronym or differently than a plain PascalCase conversion.
    pascal.update(source_type="SourceType", key_vault_url="KeyVaultUrl")
    for name, key in pascal.items():
        assert re.search(rf"`{key}`", README, re.IGNORECASE), (name, key)
