"""``kvassert emulator``: serve until SIGINT/SIGTERM, print one JSON startup line when ready.

The lead's CLI wires ``add_arguments`` and ``run``; ``python -m kvassert.emulator`` uses them too.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free port)")
    parser.add_argument(
        "--state-dir",
        default=None,
        help="keep keys, certificates, registrations and the CA here across restarts",
    )
    parser.add_argument("--tenant-id", default=None, help="the default tenant (default: random)")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; 0 after a clean shutdown, 2 if it cannot start."""
    try:  # heavy (TLS, server): imported only when the command runs
        from kvassert.emulator.server import Emulator
    except ImportError as exc:  # werkzeug or cheroot missing
        print(
            f"kvassert emulator: {exc}; install the extra: pip install 'kvassert[emulator]'",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            emulator = Emulator(
                host=args.host, port=args.port, state_dir=args.state_dir, tenant_id=args.tenant_id
            )
            info = emulator.start()
        except (OSError, ValueError) as exc:
            print(f"kvassert emulator: cannot start: {exc}", file=sys.stderr)
            return 2
        try:
            print(info.to_json(), flush=True)
            while not stop.wait(0.2):
                pass
        finally:
            emulator.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
