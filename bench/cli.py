"""``python -m bench [--latency-ms N] [--quick] [--only SCENARIO[,...]] [--output PATH]``."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shlex
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from bench import processes, report, scenarios
from bench.scenarios import Context

RESULTS = processes.REPO / "bench" / "results"

Scenario = Callable[[Context], dict[str, Any]]
# name -> (function, needs the emulator); run in this order.
SCENARIOS: dict[str, tuple[Scenario, bool]] = {
    "hit": (scenarios.cache_hit, True),
    "cold32": (scenarios.cold_threads, True),
    "refresh": (scenarios.refresh_boundary, True),
    "hourly": (scenarios.hourly, True),
    "redis": (processes.redis_processes, True),
    "import": (processes.import_time, False),
    "rss": (processes.peak_rss, True),
    "emulator": (processes.emulator_throughput, True),
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="kvassert side by side with msal and azure-identity, on the emulator.",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=20,
        help="latency injected into every Key Vault sign/certificate read and token request "
        "(default 20)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help=f"run only these (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="write the JSON here (default: bench/results/<timestamp>.json, and latest.json "
        "for a full run)",
    )
    args = parser.parse_args(argv)
    only = [name for item in args.only for name in item.split(",") if name]
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    if args.latency_ms < 0:
        parser.error("--latency-ms must be >= 0")
    args.only = only
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    selected = args.only or list(SCENARIOS)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("urllib3", "azure", "msal"):
        # "Connection pool is full" under 32 threads, SDK retry chatter: not findings.
        logging.getLogger(noisy).setLevel(logging.ERROR)
    previous = signal.signal(signal.SIGTERM, _terminate)
    started = dt.datetime.now(dt.timezone.utc)
    load_before = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    began = time.monotonic()
    results: dict[str, Any] = {}
    try:
        with ExitStack() as stack:
            folder = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="kvassert-bench-"))
            )
            ctx = Context(None, None, folder, args.quick, args.latency_ms)
            if any(SCENARIOS[name][1] for name in selected):
                _start_world(ctx, stack)
            for name in SCENARIOS:
                if name not in selected:
                    continue
                ctx.progress(f"scenario {name}")
                try:
                    results[name] = SCENARIOS[name][0](ctx)
                except Exception as exc:
                    logging.getLogger("bench").exception("scenario %s failed", name)
                    results[name] = {"_error": f"{type(exc).__name__}: {exc}"[:500]}
    except KeyboardInterrupt:
        print("[bench] interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    document = {
        "schema": report.SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(time.monotonic() - began, 1),
        "command": shlex.join(
            ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]
        ),
        "options": {
            "latency_ms": args.latency_ms,
            "quick": args.quick,
            "only": args.only,
        },
        "machine": {**report.machine(processes.REPO), "load_average_before": load_before},
        "scenarios": results,
        "targets": report.targets(results),
    }
    print(report.render(document))
    for path in _outputs(args, started):
        report.write_json(document, path)
        print(f"[bench] wrote {path}", file=sys.stderr)
    return 0


def _outputs(args: argparse.Namespace, started: dt.datetime) -> list[Path]:
    if args.output is not None:
        return [args.output]
    paths = [RESULTS / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"]
    if not args.quick and not args.only:
        paths.append(RESULTS / "latest.json")
    return paths


def _start_world(ctx: Context, stack: ExitStack) -> None:
    from bench.world import add_latency, build_world, environment, identity_env
    from kvassert.emulator import Emulator

    ctx.progress("starting the emulator")
    emulator = stack.enter_context(Emulator())
    stack.enter_context(environment(identity_env(emulator), remove=("AZURE_CLIENT_ID",)))
    ctx.emulator = emulator
    ctx.setup = build_world(emulator, ctx.folder)
    add_latency(emulator, ctx.latency_ms)
    ctx.progress("warming up every contender")
    scenarios.warm_up(ctx)
