"""The CLI against the emulator: token, check --online (good and broken), demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvassert.cli import main
from tests.e2e.conftest import API, World


def test_token_json_prints_token_and_metadata(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    assert main(["token", "--config", str(config), "--scope", f"{API}/.default", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["client_id"] == client_id and out["token_type"] == "Bearer"
    assert out["access_token"].count(".") == 2
    assert out["refresh_on"] < out["expires_on"]
    assert main(["token", "--config", str(config), "--scope", f"{API}/.default"]) == 0
    assert capsys.readouterr().out.strip().count(".") == 2


def test_check_online_reports_version_exportability_and_test_sign(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    created = world.create_certificate("app-cert", key_type="RSA-HSM")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege()
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    code = main(["check", "--config", str(config), "--online", "--scope", f"{API}/.default"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert created.properties.version in out
    assert "non-exportable" in out and "RSA-HSM 2048" in out
    assert "verified locally" in out
    assert f"[ok] token for {API}/.default" in out
    assert "secret_get" not in world.operations(ok_only=False)


def test_check_online_turns_a_403_into_an_actionable_line(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    world.least_privilege(["Microsoft.KeyVault/vaults/certificates/read"])
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    assert main(["check", "--config", str(config), "--online"]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "test sign failed" in line)
    assert line.startswith("[fail]"), line
    assert (
        f"grant Key Vault Crypto User (or a role with Microsoft.KeyVault/vaults/keys/sign/action)"
        f" on {world.info.vault_url} to principal {world.info.principal_id}" in line
    )


def test_check_online_flags_an_exportable_certificate(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.create_certificate("app-cert", exportable=True)
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    assert main(["check", "--config", str(config), "--online"]) == 0
    out = capsys.readouterr().out
    assert any(
        line.startswith("[warn]") and "prefer exportable=false" in line for line in out.splitlines()
    )


def test_demo_runs_end_to_end_in_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvassert", "demo"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "== Result: OK" in out
    assert "secret reads: 0" in out
    assert "100 get_token calls -> 1 token request(s)" in out
    assert '"exportable": false' in out.lower() or "exportable: False" in out
    assert "Traceback" not in result.stderr
