"""Helpers for the samples' tests: real server processes on free local ports, waiting for them,
and ``Cloud``, the emulator prepared by ``emulator_setup.py``.

Servers get a socket that this process has already bound to ``127.0.0.1:0`` (so the port is free
and chosen by the OS, with no race between choosing and binding) and inherit it as
``--bind=fd://N``. Every process is started in its own session so that ``stop()`` can end it and
its workers, and its output goes to a temporary file that a failing test can show.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import requests
from emulator_setup import API_URI, CERTIFICATE, ROLE, Prepared, environment

from kvassert.emulator import AdminClient, EmulatorInfo

HOST = "127.0.0.1"
SAMPLES = Path(__file__).resolve().parent

# Variables of the machine running the tests that would change what a sample does: Azure SDK
# credentials, App Service's identity, .NET environments, CA bundles, proxies.
_DROPPED_PREFIXES = (
    "AZURE_",
    "AZUREAD__",
    "AZUREAD:",
    "IDENTITY_",
    "MSI_",
    "DOWNSTREAM_API_",
    "API_",
)
_DROPPED = {
    "DOTNET_ENVIRONMENT",
    "ASPNETCORE_ENVIRONMENT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "GUNICORN_CMD_ARGS",
    "WEB_CONCURRENCY",
}


def clean_environ(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the variables a sample reads, plus ``extra``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in _DROPPED and not name.upper().startswith(_DROPPED_PREFIXES)
    }
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def listening_socket() -> socket.socket:
    """A TCP socket listening on ``127.0.0.1`` at a port the OS chose, inheritable by a child."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def closed_port() -> socket.socket:
    """A bound socket that does not listen: connecting to its port is refused for as long as
    the caller keeps it open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))
    return sock


class ServerProcess:
    """A server command run with a socket of its own; ``{fd}`` in ``args`` is replaced by the
    socket's file descriptor (``--bind=fd://{fd}`` for gunicorn).

    ``start()`` returns once ``GET {url}{ready_path}`` answers 200, or raises with the server's
    output if it exits or does not answer within ``startup_timeout``.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        ready_path: str = "/healthz",
        startup_timeout: float = 30.0,
    ) -> None:
        self.args = list(args)
        self.cwd = cwd
        self.env = dict(env)
        self.ready_path = ready_path
        self.startup_timeout = startup_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._final_output = ""
        self._runtime_dir: str | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ServerProcess:
        sock = listening_socket()
        self.port = int(sock.getsockname()[1])
        # gunicorn 25.1+ opens a control socket under $XDG_RUNTIME_DIR (else ~/.gunicorn): give
        # each server its own directory so that servers running side by side do not collide.
        self._runtime_dir = tempfile.mkdtemp(prefix="kvassert-sample-run-")
        env = {**self.env, "XDG_RUNTIME_DIR": self._runtime_dir}
        args = [arg.replace("{fd}", str(sock.fileno())) for arg in self.args]
        self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        try:
            self.process = subprocess.Popen(
                args,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                pass_fds=(sock.fileno(),),
                start_new_session=True,
            )
        finally:
            sock.close()  # the child has its own copy
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        with requests.Session() as session:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"{self.args[:4]} exited with {self.process.returncode}:\n{self.output()}"
                    )
                try:
                    answer = session.get(f"{self.url}{self.ready_path}", timeout=2.0)
                    if answer.status_code == 200:
                        return
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.args[:4]} did not answer {self.ready_path} within "
                        f"{self.startup_timeout} s:\n{self.output()}"
                    )
                time.sleep(0.1)

    def output(self) -> str:
        """What the server printed so far (stdout and stderr); after ``stop()``, all of it."""
        if self._output is None or self._output.closed:
            return self._final_output
        self._output.seek(0)
        return self._output.read().decode(errors="replace")

    def stop(self, timeout: float = 20.0, *, sig: signal.Signals = signal.SIGTERM) -> int | None:
        """``sig`` (SIGTERM: gunicorn's graceful shutdown), then SIGKILL to the whole session
        after ``timeout``; returns the exit code."""
        code: int | None = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()
            code = self.process.returncode
        if self._output is not None and not self._output.closed:
            self._final_output = self.output()
            self._output.close()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None
        return code

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def gunicorn(startup_command: str, *, needs: Sequence[str] = ("Flask", "gunicorn")) -> list[str]:
    """The arguments of an App Service startup command (``gunicorn --bind=0.0.0.0:8000 ...``)
    for this interpreter's gunicorn, bound to the inherited socket instead; ``needs`` are the
    distributions the server runs on, checked first for a clear message."""
    missing = [name for name in needs if not _installed(name)]
    if missing:
        raise RuntimeError(
            f"the samples' servers need {', '.join(missing)}: pip install {' '.join(missing)} "
            "(they belong in kvassert's test extra)"
        )
    words = startup_command.split()
    if not words or words[0] != "gunicorn":
        raise ValueError(f"not a gunicorn command: {startup_command!r}")
    args = [sys.executable, "-m", "gunicorn"]
    for word in words[1:]:
        args.append("--bind=fd://{fd}" if word.startswith("--bind=") else word)
    return args


def startup_command(sample: str) -> str:
    """The gunicorn line of ``samples/<sample>/startup.sh`` (after ``exec``)."""
    for line in (SAMPLES / sample / "startup.sh").read_text().splitlines():
        line = line.strip()
        if line.startswith("exec gunicorn "):
            return line.removeprefix("exec ")
    raise ValueError(f"samples/{sample}/startup.sh has no 'exec gunicorn ...' line")


def run(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and capture its output."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def json_of(answer: requests.Response) -> Any:
    """The JSON body of ``answer``, or an assertion error that shows what came instead."""
    try:
        return answer.json()
    except ValueError:
        raise AssertionError(f"{answer.status_code}: not JSON: {answer.text[:500]}") from None


OTHER_API_URI = "api://kvassert-samples-other"


@dataclass
class Cloud:
    """The emulator as the samples' Azure: ids of what the session set up, and helpers."""

    info: EmulatorInfo
    admin: AdminClient
    prepared: Prepared

    api_uri = API_URI
    other_api_uri = OTHER_API_URI
    role = ROLE
    certificate = CERTIFICATE

    @property
    def api_client_id(self) -> str:
        return self.prepared.api_client_id

    @property
    def app_client_id(self) -> str:
        """The sample client app: the vault certificate registered, Data.Read granted."""
        return self.prepared.app_client_id

    @property
    def app_principal_id(self) -> str:
        return self.prepared.app_principal_id

    @property
    def instance(self) -> str:
        return self.info.authority.rstrip("/") + "/"

    def register_client(
        self, *, roles: list[str] | None = None, tenant_id: str | None = None
    ) -> tuple[str, str]:
        """A client app with a secret, granted ``roles`` on the protected API; (id, secret)."""
        client_id, secret = str(uuid.uuid4()), f"secret-{uuid.uuid4()}"
        self.admin.register_application(
            client_id,
            tenant_id=tenant_id,
            secrets=[secret],
            app_roles_granted={API_URI: roles} if roles else {},
        )
        return client_id, secret

    def register_vault_client(self, *, roles: list[str] | None = None) -> tuple[str, str]:
        """A client app whose credential is the vault certificate (as the sample app's);
        (client id, service principal id)."""
        client_id = str(uuid.uuid4())
        registered = self.admin.register_application(
            client_id,
            vault_certificates=[CERTIFICATE],
            app_roles_granted={API_URI: roles} if roles else {},
        )
        return client_id, str(registered["principal_id"])

    def token(
        self,
        client_id: str,
        secret: str,
        *,
        resource: str = API_URI,
        version: int = 1,
        tenant_id: str | None = None,
    ) -> str:
        """An access token from the emulated Entra ID (client credentials with a secret)."""
        tenant = tenant_id or self.info.tenant_id
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret}
        if version == 1:
            url = f"{self.instance}{tenant}/oauth2/token"
            form["resource"] = resource
        else:
            url = f"{self.instance}{tenant}/oauth2/v2.0/token"
            form["scope"] = f"{resource}/.default"
        answer = requests.post(url, data=form, verify=self.info.ca_file, timeout=10)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def operations(self, *, principal: str | None = None) -> dict[str, int]:
        """Successful emulator operations (``token``, ``sign``...) since the log was cleared."""
        counts: dict[str, int] = {}
        for entry in self.admin.log(principal=principal):
            if entry["status"] < 400:
                counts[entry["operation"]] = counts.get(entry["operation"], 0) + 1
        return counts

    def environment(self, client_id: str, api_url: str = "") -> dict[str, str]:
        """The client samples' settings as ``emulator_setup.py`` prints them, for the client
        app ``client_id`` and the API at ``api_url``, over a clean copy of this process's
        environment (the API's own ``API_*`` settings left out)."""
        prepared = Prepared(self.api_client_id, client_id, self.app_principal_id)
        settings = environment(self.info, prepared, api_url)
        return clean_environ({k: v for k, v in settings.items() if not k.startswith("API_")})

    def api_environment(self) -> dict[str, str]:
        """The protected API's settings as ``emulator_setup.py`` prints them."""
        settings = environment(self.info, self.prepared, "")
        return clean_environ(
            {k: v for k, v in settings.items() if k.startswith("API_") or k == "REQUESTS_CA_BUNDLE"}
        )
