"""Serving the emulator: TLS material, the HTTPS server, the in-process ``Emulator`` and the
out-of-process ``EmulatorProcess``.

The server is cheroot (CherryPy's WSGI server): HTTP/1.1 keep-alive, a worker pool, TLS. The
werkzeug development server is not used because werkzeug 3 sends ``Connection: close`` on every
response and, after each response, drains the socket for 10 ms, which would swallow a keep-alive
client's next request. Routing and request/response objects are still werkzeug's (``app.py``).

TLS: a CA (kept in ``--state-dir`` as ``ca.pem``/``ca-key.pem`` so clients stay trusted across
restarts) issues a fresh server certificate for ``localhost``, ``127.0.0.1`` and ``::1`` at each
start; the CA certificate is written to ``ca_file``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cheroot import wsgi
from cheroot.ssl.builtin import BuiltinSSLAdapter
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kvassert.emulator import x509util
from kvassert.emulator.admin_client import AdminClient
from kvassert.emulator.app import EmulatorApp
from kvassert.emulator.state import EmulatorState

WORKER_THREADS = 40
# Idle keep-alive connections cheroot parks (its default, 10, makes the 11th client's responses
# say "Connection: close"); they expire after the server's 10 s socket timeout.
KEEP_ALIVE_LIMIT = 256
CA_FILE, CA_KEY_FILE = "ca.pem", "ca-key.pem"


@dataclass(frozen=True)
class EmulatorInfo:
    """The startup line: where each service is and what a client needs to trust and call it."""

    vault_url: str
    authority: str
    tenant_id: str
    identity_endpoint: str
    identity_header: str
    principal_id: str
    ca_file: str
    admin_url: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> EmulatorInfo:
        return cls(**{f.name: str(data[f.name]) for f in fields(cls)})

    def identity_environ(self) -> dict[str, str]:
        """``IDENTITY_ENDPOINT`` and ``IDENTITY_HEADER``, as App Service sets them."""
        return {
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
        }


def check_loopback(host: str) -> str:
    """``host`` if it is a loopback name or address; the emulator binds nothing else."""
    if host == "localhost":
        return host
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise ValueError(f"--host {host!r}: the emulator binds loopback addresses only (127.0.0.1)")


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def load_or_create_ca(directory: Path) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    """The CA kept in ``directory``, created on first use."""
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_path}: not an RSA key")
        return key, x509.load_pem_x509_certificate(cert_path.read_bytes())
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = x509util.make_ca(dt.datetime.now(dt.timezone.utc))
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


class HttpsServer:
    """cheroot serving ``app`` on ``host:port`` (0: a free port) over TLS, in a thread."""

    def __init__(self, app: EmulatorApp, host: str, port: int, tls_dir: Path) -> None:
        check_loopback(host)  # here too, not only in Emulator: this is what binds
        ca_key, ca_cert = load_or_create_ca(tls_dir)
        key, cert = x509util.make_server_certificate(
            ca_key, ca_cert, dt.datetime.now(dt.timezone.utc)
        )
        # The SSL adapter loads its files at construction; they live only in a private dir.
        scratch = Path(tempfile.mkdtemp(prefix="kvassert-tls-"))
        try:
            cert_file, key_file = scratch / "server.pem", scratch / "server-key.pem"
            cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            _write_private(key_file, _pem_key(key))
            adapter = BuiltinSSLAdapter(str(cert_file), str(key_file))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        self.ca_file = tls_dir / CA_FILE
        self.httpd = wsgi.Server(
            (host, port), app, numthreads=WORKER_THREADS, server_name="kvassert-emulator"
        )
        self.httpd.ssl_adapter = adapter
        self.httpd.keep_alive_conn_limit = KEEP_ALIVE_LIMIT
        self.httpd.prepare()  # binds now, so the port is known
        bound = self.httpd.bind_addr
        self.port = int(bound[1]) if isinstance(bound, tuple) else port
        self._thread = threading.Thread(
            target=self.httpd.serve, name="kvassert-emulator", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.stop()
        self._thread.join(timeout=10)


class Emulator:
    """The emulator in this process: ``with Emulator() as emu:`` then ``emu.info`` (the
    startup line), ``emu.state`` (direct access) and ``emu.admin`` (the admin API client)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state_dir: str | os.PathLike[str] | None = None,
        tenant_id: str | None = None,
    ) -> None:
        self.host = check_loopback(host)
        self.port = port
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.tenant_id = tenant_id
        self._scratch: Path | None = None
        self._server: HttpsServer | None = None
        self._info: EmulatorInfo | None = None
        self._admin: AdminClient | None = None
        self.state: EmulatorState | None = None  # set by start()

    @property
    def info(self) -> EmulatorInfo:
        if self._info is None:
            raise RuntimeError("the emulator is not running: use 'with Emulator() as emu'")
        return self._info

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            raise RuntimeError("the emulator is not running")
        return self._admin

    @property
    def base_url(self) -> str:
        return self.info.vault_url

    def start(self) -> EmulatorInfo:
        """Load or create the state, bind, serve; returns the startup information."""
        if self._info is not None:
            return self._info
        state = EmulatorState.open(self.state_dir, tenant_id=self.tenant_id)
        tls_dir = self.state_dir
        if tls_dir is None:
            self._scratch = tls_dir = Path(tempfile.mkdtemp(prefix="kvassert-emulator-"))
        app = EmulatorApp(state)
        try:
            server = HttpsServer(app, self.host, self.port, tls_dir)
        except BaseException:
            self._cleanup()
            raise
        host = f"[{self.host}]" if ":" in self.host else self.host
        base_url = f"https://{host}:{server.port}"
        app.base_url = base_url
        server.start()
        directory = state.directory
        self.state, self._server = state, server
        self._info = EmulatorInfo(
            vault_url=base_url,
            authority=base_url,
            tenant_id=directory.tenant_id,
            identity_endpoint=f"{base_url}/msi/token",
            identity_header=directory.identity_header,
            principal_id=directory.system_identity.principal_id,
            ca_file=str(server.ca_file),
            admin_url=f"{base_url}/admin",
        )
        self._admin = AdminClient(self._info.admin_url, verify=self._info.ca_file)
        return self._info

    def stop(self) -> None:
        """Stop serving, save the state (with a state dir), remove temporary files."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.state is not None:
            self.state.flush()
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._info = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> Emulator:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorProcess:
    """``python -m kvassert.emulator`` as a child process: ``start()`` waits for the startup
    line; ``stop()`` sends SIGTERM and returns the exit code."""

    def __init__(
        self,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.args = [sys.executable, "-m", "kvassert.emulator", "--port", str(port)]
        if state_dir is not None:
            self.args += ["--state-dir", os.fspath(state_dir)]
        self.args += list(extra_args)
        self.env = dict(env) if env is not None else None
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[str] | None = None
        self.stderr: IO[str] | None = None
        self.info: EmulatorInfo | None = None
        self.admin: AdminClient | None = None

    def start(self) -> EmulatorInfo:
        # Kept open for the child's lifetime (closed in __exit__), so tests can show its stderr.
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=self.env
        )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=self.startup_timeout)
        except queue.Empty:
            line = ""
        if not line:
            self.stop()
            raise RuntimeError(f"the emulator did not start: {self.stderr_text()[-2000:]}")
        self.info = EmulatorInfo.from_mapping(json.loads(line))
        self.admin = AdminClient(self.info.admin_url, verify=self.info.ca_file)
        return self.info

    def stderr_text(self) -> str:
        if self.stderr is None:
            return ""
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait (SIGKILL after ``timeout``); the exit code."""
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> EmulatorProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self.stderr is not None:
            self.stderr.close()
