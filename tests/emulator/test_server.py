"""The emulator as a server: the process and its startup line, signals, persistence across a
restart, TLS, HTTP/1.1 keep-alive and many concurrent clients."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import ssl
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from cryptography import x509

from kvassert.emulator import cli
from kvassert.emulator.server import Emulator, EmulatorInfo, EmulatorProcess

FIELDS = {
    "vault_url",
    "authority",
    "tenant_id",
    "identity_endpoint",
    "identity_header",
    "principal_id",
    "ca_file",
    "admin_url",
}


def msi_token(info: EmulatorInfo) -> str:
    response = requests.get(
        info.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": info.identity_header},
        verify=info.ca_file,
        timeout=10,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def vault(
    info: EmulatorInfo, method: str, path: str, token: str, **kwargs: object
) -> requests.Response:
    return requests.request(
        method,
        f"{info.vault_url}{path}",
        params={"api-version": "7.5"},
        headers={"Authorization": f"Bearer {token}"},
        verify=info.ca_file,
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def test_process_prints_one_startup_line_and_exits_cleanly_on_sigint(tmp_path: Path) -> None:
    process = EmulatorProcess()
    with process:
        assert process.process is not None and process.info is not None
        info = process.info
        assert process.process.stdout is not None
        # exactly the documented fields; URLs on the loopback address
        assert set(json.loads(info.to_json())) == FIELDS
        assert info.vault_url.startswith("https://127.0.0.1:")
        assert info.admin_url == f"{info.vault_url}/admin"
        ca = x509.load_pem_x509_certificate(Path(info.ca_file).read_bytes())
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        port = info.vault_url.rsplit(":", 1)[1]
        # the server certificate is valid for localhost too
        response = requests.get(
            f"https://localhost:{port}/admin/info", verify=info.ca_file, timeout=10
        )
        assert response.json()["tenant_id"] == info.tenant_id
        process.process.send_signal(signal.SIGINT)
        assert process.process.wait(timeout=15) == 0
        assert "Traceback" not in process.stderr_text()


def test_state_dir_survives_a_restart(tmp_path: Path) -> None:
    with EmulatorProcess(state_dir=tmp_path) as first:
        assert first.info is not None
        info = first.info
        token = msi_token(info)
        created = vault(info, "POST", "/keys/kept/create", token, json={"kty": "RSA"})
        assert created.status_code == 200
        kid = created.json()["key"]["kid"]
        ca_pem = Path(info.ca_file).read_bytes()
        assert first.stop() == 0  # SIGTERM
    with EmulatorProcess(state_dir=tmp_path) as second:
        assert second.info is not None
        again = second.info
        assert (again.tenant_id, again.principal_id, again.identity_header) == (
            info.tenant_id,
            info.principal_id,
            info.identity_header,
        )
        assert Path(again.ca_file).read_bytes() == ca_pem  # clients stay trusted
        # a token issued before the restart is still accepted (same signing key)
        got = vault(again, "GET", "/keys/kept/", token)
        assert got.status_code == 200
        assert got.json()["key"]["kid"].rsplit("/", 1)[1] == kid.rsplit("/", 1)[1]


def test_keep_alive_serves_many_requests_on_one_connection(emu: Emulator) -> None:
    info = emu.info
    token = msi_token(info)
    host, port = info.vault_url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=info.ca_file)
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        local_ports = set()
        for _ in range(5):
            connection.request(
                "GET", "/keys?api-version=7.5", headers={"Authorization": f"Bearer {token}"}
            )
            response = connection.getresponse()
            assert response.status == 200
            assert response.getheader("Connection", "").lower() != "close"
            json.loads(response.read())
            assert connection.sock is not None  # the server did not close it
            local_ports.add(connection.sock.getsockname()[1])
        assert len(local_ports) == 1
    finally:
        connection.close()
    assert len(emu.admin.log(operation="key_list")) == 5


def test_thirty_two_concurrent_clients(emu: Emulator) -> None:
    info = emu.info
    token = msi_token(info)
    assert vault(info, "POST", "/keys/shared/create", token, json={"kty": "RSA"}).ok
    digest = "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"  # SHA-256 of b""

    def client(_: int) -> list[tuple[int, str]]:
        with requests.Session() as session:
            statuses = []
            for _ in range(4):
                response = session.post(
                    f"{info.vault_url}/keys/shared//sign",
                    params={"api-version": "7.5"},
                    json={"alg": "PS256", "value": digest},
                    headers={"Authorization": f"Bearer {token}"},
                    verify=info.ca_file,
                    timeout=60,
                )
                statuses.append((response.status_code, response.headers.get("Connection", "")))
            return statuses

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = [status for statuses in pool.map(client, range(32)) for status in statuses]
    # every answer is a success and keeps its connection open for the next request
    assert results == [(200, "")] * 128
    assert len(emu.admin.log(operation="sign")) == 128


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args([])
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def test_cli_refuses_a_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(_args(host="0.0.0.0")) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "loopback" in captured.err


def test_cli_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.run(_args(port=taken.getsockname()[1])) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "cannot start" in captured.err


def test_the_pytest_plugin_gives_users_a_running_emulator(tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(
        "import requests\n"
        "def test_vault(kvassert_emulator_clean):\n"
        "    info = kvassert_emulator_clean.info\n"
        "    answer = requests.get(info.vault_url + '/keys', verify=info.ca_file, timeout=10)\n"
        "    assert answer.status_code == 401\n"
        "def test_identity(kvassert_identity_env):\n"
        "    import os\n"
        "    assert os.environ['IDENTITY_HEADER'] == kvassert_identity_env.info.identity_header\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "kvassert.emulator.pytest_plugin",
         "-p", "no:cacheprovider", str(tmp_path / "test_user.py")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_cli_without_the_server_dependencies_says_which_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "kvassert.emulator.server", None)  # import fails
    assert cli.run(_args()) == 2
    assert "pip install 'kvassert[emulator]'" in capsys.readouterr().err
