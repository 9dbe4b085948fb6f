"""``python samples/emulator_setup.py emulator.json``, as samples/README.md runs it: the settings
it prints, a second run, and its one-line failure."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from _testing import SAMPLES, Cloud, clean_environ, run
from emulator_setup import APP_CLIENT_ID, DEFAULT_API_URL


def setup_script(*args: str) -> tuple[int, dict[str, str], str]:
    result = run(
        [sys.executable, str(SAMPLES / "emulator_setup.py"), *args],
        cwd=SAMPLES.parent,
        env=clean_environ({}),
    )
    printed = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return result.returncode, {k: shlex.split(v)[0] for k, v in printed.items()}, result.stderr


def test_prints_every_samples_settings_and_can_run_again(cloud: Cloud, tmp_path: Path) -> None:
    startup = tmp_path / "emulator.json"
    startup.write_text(cloud.info.to_json() + "\n")
    code, first, stderr = setup_script(str(startup), "--api-url", "http://127.0.0.1:5999")
    assert code == 0, stderr
    assert first == {
        "AzureAd__Instance": cloud.instance,
        "AzureAd__TenantId": cloud.info.tenant_id,
        "AzureAd__ClientId": APP_CLIENT_ID,
        "AzureAd__ClientCredentials__0__KeyVaultUrl": cloud.info.vault_url,
        "AzureAd__ClientCredentials__0__KeyVaultCertificateName": cloud.certificate,
        "DOWNSTREAM_API_URL": "http://127.0.0.1:5999",
        "DOWNSTREAM_API_SCOPE": f"{cloud.api_uri}/.default",
        "API_AUDIENCE": f"{cloud.api_uri},{cloud.api_client_id}",
        "API_TENANT_ID": cloud.info.tenant_id,
        "API_INSTANCE": cloud.instance,
        "API_REQUIRED_ROLE": cloud.role,
        "IDENTITY_ENDPOINT": cloud.info.identity_endpoint,
        "IDENTITY_HEADER": cloud.info.identity_header,
        "REQUESTS_CA_BUNDLE": cloud.info.ca_file,
    }
    # Run again (the session's emulator was prepared the same way): same ids, and the managed
    # identity is left with least privilege again.
    code, second, stderr = setup_script(str(startup), "--api-url", "http://127.0.0.1:5999")
    assert code == 0, stderr
    assert second == first
    assignments = cloud.admin.role_assignments(cloud.info.principal_id)
    assert [sorted(a["data_actions"]) for a in assignments] == [
        [
            "Microsoft.KeyVault/vaults/certificates/read",
            "Microsoft.KeyVault/vaults/keys/sign/action",
        ]
    ]


def test_readme_commands_match_the_default_api_url() -> None:
    readme = (SAMPLES / "README.md").read_text()
    port = DEFAULT_API_URL.rsplit(":", 1)[1]
    assert f"gunicorn --bind=127.0.0.1:{port} --workers 2 api:app" in readme
    assert "python samples/emulator_setup.py emulator.json > samples.env" in readme


def test_no_startup_line_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code, printed, stderr = setup_script(str(tmp_path / "missing.json"), "--timeout", "0.3")
    assert (code, printed) == (1, {})
    assert stderr.splitlines() == [
        f"emulator_setup: error: {tmp_path / 'missing.json'} holds no emulator startup line "
        "after 0.3 s"
    ]
