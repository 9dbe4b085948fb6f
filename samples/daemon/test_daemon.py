"""``python daemon.py`` as a real process against the emulator and the protected API: the API's
answer on stdout and exit 0, or exit 1 with exactly one line on stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _testing import SAMPLES, Cloud, ServerProcess, closed_port, run

HERE = SAMPLES / "daemon"


def run_daemon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, str(HERE / "daemon.py"), *args], cwd=HERE, env=env)


def settings(cloud: Cloud, client_id: str, api_url: str) -> dict[str, str]:
    return cloud.environment(client_id, api_url)


def the_one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("daemon: error: ")
    return lines[0]


def test_prints_the_api_answer(cloud: Cloud, protected_api: ServerProcess) -> None:
    cloud.admin.clear_log()
    result = run_daemon(settings(cloud, cloud.app_client_id, protected_api.url))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    body = json.loads(result.stdout)
    assert [item["id"] for item in body["items"]] == [1, 2, 3]
    assert body["caller"]["appid"] == cloud.app_client_id
    assert body["caller"]["roles"] == [cloud.role]
    # one certificate read and one signature by the vault, one token, and no secret read
    vault = cloud.operations(principal=cloud.info.principal_id)
    assert (vault.get("certificate_get"), vault.get("sign"), vault.get("secret_get")) == (
        1,
        1,
        None,
    )
    assert cloud.operations(principal=cloud.app_principal_id) == {"token": 1}


def test_options_override_the_environment(
    cloud: Cloud, protected_api: ServerProcess, tmp_path: Path
) -> None:
    # A config file elsewhere that holds the real values, and --url/--scope instead of the
    # DOWNSTREAM_API_* variables.
    config = tmp_path / "appsettings.json"
    config.write_text(
        json.dumps(
            {
                "AzureAd": {
                    "Instance": cloud.instance,
                    "TenantId": cloud.info.tenant_id,
                    "ClientId": cloud.app_client_id,
                    "ClientCredentials": [
                        {
                            "SourceType": "KeyVault",
                            "KeyVaultUrl": cloud.info.vault_url,
                            "KeyVaultCertificateName": cloud.certificate,
                        }
                    ],
                }
            }
        )
    )
    env = {
        name: value
        for name, value in cloud.environment(cloud.app_client_id).items()
        if not name.startswith(("AzureAd__", "DOWNSTREAM_API_"))
    }
    result = run_daemon(
        env,
        "--config",
        str(config),
        "--url",
        protected_api.url,
        "--scope",
        f"{cloud.api_uri}/.default",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["caller"]["appid"] == cloud.app_client_id


def test_api_refusal_is_one_line(cloud: Cloud, protected_api: ServerProcess) -> None:
    client_id, _ = cloud.register_vault_client()  # the certificate, but no Data.Read
    line = the_one_line(run_daemon(settings(cloud, client_id, protected_api.url)))
    assert f"GET {protected_api.url}/data answered 403" in line
    assert 'error="insufficient_scope"' in line


def test_unregistered_certificate_is_one_line_with_the_aadsts_code(
    cloud: Cloud, protected_api: ServerProcess
) -> None:
    client_id, _ = cloud.register_client(roles=[cloud.role])  # a secret, not the certificate
    line = the_one_line(run_daemon(settings(cloud, client_id, protected_api.url)))
    assert "no token for api://kvassert-samples-api/.default" in line
    assert "AADSTS700027" in line


def test_unreachable_api_is_one_line(cloud: Cloud) -> None:
    with closed_port() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        line = the_one_line(run_daemon(settings(cloud, cloud.app_client_id, url)))
    assert f"GET {url}/data failed" in line


def test_placeholder_left_in_appsettings_is_one_line(
    cloud: Cloud, protected_api: ServerProcess
) -> None:
    env = settings(cloud, cloud.app_client_id, protected_api.url)
    del env["AzureAd__TenantId"]  # appsettings.json's placeholder shows through
    line = the_one_line(run_daemon(env))
    assert line.startswith("daemon: error: configuration: AzureAd:TenantId: found ")
    assert "'Enter_the_Tenant_Id_Here'" in line


@pytest.mark.parametrize("missing", ["DOWNSTREAM_API_URL", "DOWNSTREAM_API_SCOPE"])
def test_missing_api_settings_are_a_usage_error(
    cloud: Cloud, protected_api: ServerProcess, missing: str
) -> None:
    env = settings(cloud, cloud.app_client_id, protected_api.url)
    del env[missing]
    result = run_daemon(env)
    assert result.returncode == 2
    assert "DOWNSTREAM_API_URL and DOWNSTREAM_API_SCOPE" in result.stderr
