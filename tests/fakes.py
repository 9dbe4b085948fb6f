"""A scripted loopback HTTP server standing in for the token endpoint in unit tests."""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Script:
    """Answers given in order (the last one repeats), or computed by ``responder`` from the
    posted form; ``forms`` records every request's form."""

    answers: list[Answer] = field(default_factory=list)
    responder: Callable[[dict[str, str]], Answer] | None = None
    forms: list[dict[str, str]] = field(default_factory=list)

    @property
    def hits(self) -> int:
        return len(self.forms)


@contextmanager
def scripted_server() -> Iterator[tuple[str, Script]]:
    """Serve on 127.0.0.1 (random port); yields the base URL and the script."""
    script = Script()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
            with lock:
                index = min(len(script.forms), len(script.answers) - 1)
                script.forms.append(form)
            status, headers, body = (
                script.responder(form) if script.responder else script.answers[index]
            )
            # send_response would add its own Date; a scripted Date (skew tests) must be the
            # only one.
            self.send_response_only(status)
            if "Date" not in headers:
                self.send_header("Date", self.date_time_string())
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()
