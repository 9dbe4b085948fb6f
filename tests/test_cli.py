"""The CLI offline: assertion printing, check lines and exit codes, errors without tracebacks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from kvassert.cli import main
from tests.certs import make_cert, rsa_key

TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "00000000-0000-0000-0000-0000000000c1"


def write_config(tmp_path: Path, credentials: list[dict[str, object]], **extra: object) -> Path:
    doc = {
        "AzureAd": {
            "TenantId": TENANT,
            "ClientId": CLIENT,
            "ClientCredentials": credentials,
            **extra,
        }
    }
    path = tmp_path / "appsettings.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def pem_file(tmp_path: Path) -> Path:
    path = tmp_path / "client.pem"
    path.write_bytes(make_cert(days=365).pem("pem-pass"))
    return path


def test_assertion_prints_a_verifiable_ps256_assertion(
    tmp_path: Path, pem_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        [
            {
                "SourceType": "Path",
                "CertificateDiskPath": str(pem_file),
                "CertificatePassword": "pem-pass",
            }
        ],
    )
    assert main(["assertion", "--config", str(config)]) == 0
    out = capsys.readouterr().out.strip()
    claims = jwt.decode(
        out,
        rsa_key().public_key(),
        algorithms=["PS256"],
        audience=f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token",
    )
    assert claims["iss"] == CLIENT
    assert "pem-pass" not in out


def test_assertion_rs256_and_v1_and_explicit_audience(
    tmp_path: Path, pem_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        [
            {
                "SourceType": "Path",
                "CertificateDiskPath": str(pem_file),
                "CertificatePassword": "pem-pass",
            }
        ],
    )
    assert main(["assertion", "--config", str(config), "--rs256", "--v1"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert jwt.decode(token, options={"verify_signature": False})["aud"].endswith(
        f"{TENANT}/oauth2/token"
    )
    assert main(["assertion", "--config", str(config), "--audience", "https://x/token"]) == 0
    aud = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})["aud"]
    assert aud == "https://x/token"


def test_assertion_skips_unusable_credentials_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    pfx = base64.b64encode(make_cert().pfx()).decode()
    config = write_config(
        tmp_path,
        [
            {"SourceType": "Path", "CertificateDiskPath": str(tmp_path / "missing.pfx")},
            {"SourceType": "ClientSecret", "ClientSecret": "secret-canary"},
            {"SourceType": "Base64Encoded", "Base64EncodedValue": pfx},
        ],
    )
    assert main(["assertion", "--config", str(config)]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(".") == 2
    assert "missing.pfx" in caplog.text  # the skip was logged with its reason
    assert "secret-canary" not in captured.out + captured.err + caplog.text


def test_check_offline_lines_and_exit_status(
    tmp_path: Path, pem_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        [
            {
                "SourceType": "Path",
                "CertificateDiskPath": str(pem_file),
                "CertificatePassword": "pem-pass",
            },
            {
                "SourceType": "KeyVault",
                "KeyVaultUrl": "https://contoso.vault.azure.net",
                "KeyVaultCertificateName": "app-cert",
            },
            {
                "SourceType": "StoreWithThumbprint",
                "CertificateStorePath": "CurrentUser/My",
                "CertificateThumbprint": "ABCD",
            },
            {"SourceType": "Path", "CertificateDiskPath": "/nope.pfx", "Skip": True},
        ],
    )
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("AzureAd: client " + CLIENT)
    assert any(
        line.startswith("[ok] AzureAd:ClientCredentials:0") and "x5t#S256=" in line
        for line in lines
    )
    assert any(
        line.startswith("[ok] AzureAd:ClientCredentials:1") and "--online" in line for line in lines
    )
    assert any(
        line.startswith("[fail] AzureAd:ClientCredentials:2")
        and "Windows certificate store is not available" in line
        for line in lines
    )
    assert any(line.startswith("[skip] AzureAd:ClientCredentials:3") for line in lines)
    assert "pem-pass" not in out


def test_check_all_ok_exits_zero(
    tmp_path: Path, pem_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path,
        [
            {
                "SourceType": "Path",
                "CertificateDiskPath": str(pem_file),
                "CertificatePassword": "pem-pass",
            }
        ],
    )
    assert main(["check", "--config", str(config)]) == 0


def test_config_error_exit_code_and_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(
        tmp_path, [{"SourceType": "KeyVault", "KeyVaultUrl": "https://contoso.vault.azure.net"}]
    )
    assert main(["check", "--config", str(config)]) == 3
    err = capsys.readouterr().err
    assert "AzureAd:ClientCredentials:0:KeyVaultCertificateName" in err
    assert "Traceback" not in err


def test_no_usable_credential_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, [{"SourceType": "Path", "CertificateDiskPath": "/no/such"}])
    assert main(["assertion", "--config", str(config)]) == 4
    err = capsys.readouterr().err
    assert "/no/such" in err and "Traceback" not in err


def test_version_and_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kvassert", "--version"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("kvassert ")


def test_broken_json_is_a_clear_error_from_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "appsettings.json"
    bad.write_text('{"AzureAd": {"ClientId": "x",, }')
    result = subprocess.run(
        [sys.executable, "-m", "kvassert", "check", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert "appsettings.json" in result.stderr and "line 1" in result.stderr
    assert "Traceback" not in result.stderr
