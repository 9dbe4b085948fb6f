"""Scenarios with other processes: 8 cold processes sharing Redis, import time, peak RSS, and
the emulator's sign throughput. Every process started here is stopped on the way out, also on
errors and Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.peers import PEERS, build
from bench.scenarios import Context, each_contender
from bench.world import add_latency
from tests.redis_server import redis_server

REPO = Path(__file__).resolve().parent.parent


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_python(args: Sequence[str], timeout: float = 120.0) -> str:
    """Run ``python ARGS`` to completion; its stdout (raises with its stderr on failure)."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=python_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        stop(process)
    if process.returncode != 0:
        raise RuntimeError(f"python {' '.join(args[:3])} failed: {err[-1500:]}")
    return out


def worker(*args: str, timeout: float = 120.0) -> dict[str, Any]:
    out = run_python(["-m", "bench.worker", *args], timeout=timeout)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ---- redis ------------------------------------------------------------------------------------


REDIS_PROCESSES = 8


def redis_processes(ctx: Context) -> dict[str, Any]:
    """8 worker processes started at once; each builds kvassert with a ``RedisTokenStore`` and
    reports ready; when all are ready each is told to go and calls ``get_token`` once. The
    peers have no shared cache: their total is 8 x one cold ``get_token`` (measured)."""
    emulator, setup = ctx.world
    scope = setup.scopes[0]
    results: dict[str, Any] = {"_method": {"processes": REDIS_PROCESSES}}

    def peer(name: str) -> dict[str, Any]:
        emulator.admin.clear_log()
        contender = build(name, setup)
        try:
            contender.token(scope)
        finally:
            contender.close()
        one = ctx.log()
        return {key: value * REDIS_PROCESSES for key, value in one.items()} | {"derived": "8x"}

    for name in PEERS:
        ctx.progress(f"8 cold processes: {name} (one cold get_token, x8)")
        try:
            results[name] = peer(name)
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    ctx.progress("8 cold processes: kvassert with Redis")
    import kvassert

    if getattr(kvassert, "RedisTokenStore", None) is None:
        results["kvassert"] = {"na": "kvassert.RedisTokenStore missing"}
        return results
    if shutil.which("redis-server") is None:
        results["kvassert"] = {"na": "redis-server not installed"}
        return results
    key = base64.b64encode(os.urandom(32)).decode()
    try:
        with redis_server(ctx.folder) as url:
            results["kvassert"] = _redis_run(ctx, url, key, scope)
    except Exception as exc:
        results["kvassert"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return results


def _redis_run(ctx: Context, url: str, key: str, scope: str) -> dict[str, Any]:
    setup_file = ctx.folder / "setup.json"
    assert ctx.setup is not None
    ctx.setup.save(setup_file)
    emulator, _ = ctx.world
    emulator.admin.clear_log()
    processes: list[subprocess.Popen[str]] = []
    try:
        for _ in range(REDIS_PROCESSES):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.worker",
                        "redis",
                        str(setup_file),
                        url,
                        key,
                        scope,
                    ],
                    cwd=REPO,
                    env=python_env(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        for process in processes:
            line = _readline(process.stdout, 90)
            if line.strip() != "ready":
                raise RuntimeError(f"a worker did not get ready: {line!r}")
        started = time.perf_counter()
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outcomes = []
        for process in processes:
            out, err = process.communicate(timeout=90)
            if process.returncode != 0:
                raise RuntimeError(f"a worker failed: {err[-1500:]}")
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        wall = time.perf_counter() - started
    finally:
        for process in processes:
            stop(process)
    counts = ctx.log()
    return {
        **counts,
        "processes": REDIS_PROCESSES,
        "all_got_tokens": all(o["ok"] for o in outcomes),
        "wall_ms": round(wall * 1000, 2),
        "slowest_get_token_ms": max(o["elapsed_ms"] for o in outcomes),
    }


def _readline(stream: IO[str] | None, timeout: float) -> str:
    import selectors

    assert stream is not None
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError("no answer from a worker process")
    return stream.readline()


# ---- import time ------------------------------------------------------------------------------

IMPORTS = {
    "kvassert": "import kvassert",
    "kvassert + from_appsettings": "import kvassert; kvassert.from_appsettings",
    "msal": "import msal",
    "azure.identity": "import azure.identity",
}


def import_time(ctx: Context) -> dict[str, Any]:
    """Each import in a fresh interpreter, timed inside it (interpreter start-up excluded);
    the runs are interleaved and the median reported. ``kvassert + from_appsettings`` also
    loads the credential module (what an app touches before its first token)."""
    runs = 3 if ctx.quick else 9
    samples: dict[str, list[float]] = {name: [] for name in IMPORTS}
    for _ in range(runs):
        for name, statement in IMPORTS.items():
            code = (
                "import time; t = time.perf_counter_ns(); "
                f"{statement}; print(time.perf_counter_ns() - t)"
            )
            samples[name].append(int(run_python(["-c", code]).strip()) / 1e6)
    ctx.progress("import time: done")
    return {
        name: {
            "median_ms": round(statistics.median(values), 2),
            "min_ms": round(min(values), 2),
            "runs": len(values),
        }
        for name, values in samples.items()
    }


# ---- peak RSS ---------------------------------------------------------------------------------


def peak_rss(ctx: Context) -> dict[str, Any]:
    """Peak RSS of a fresh process that imports one library, builds its credential and gets
    one token; ``_baseline`` is the same worker process importing none of them. Measured as
    the process's ``VmHWM``: ``resource.getrusage`` ``ru_maxrss`` would report this
    benchmark's own peak, inherited across fork + exec (both are in the JSON)."""
    _, setup = ctx.world
    setup_file = ctx.folder / "setup.json"
    setup.save(setup_file)

    def figures(answer: dict[str, Any]) -> dict[str, Any]:
        kib = answer["vmhwm_kib"] or answer["ru_maxrss_kib"]
        return {"peak_rss_mib": round(kib / 1024, 1), **answer}

    results = each_contender(
        ctx, "peak RSS", lambda name: figures(worker("rss", name, str(setup_file)))
    )
    results["_baseline"] = figures(worker("baseline"))
    return results


# ---- emulator throughput ----------------------------------------------------------------------


def emulator_throughput(ctx: Context) -> dict[str, Any]:
    """Signs per second the emulator serves with N keep-alive clients (threads of one client
    process) and no injected latency; counted from the emulator's log."""
    emulator, setup = ctx.world
    setup_file = ctx.folder / "setup.json"
    setup.save(setup_file)
    seconds = 0.5 if ctx.quick else 2.0
    levels = (8,) if ctx.quick else (1, 8, 32)
    results: dict[str, Any] = {}
    emulator.admin.clear_faults()
    try:
        for clients in levels:
            ctx.progress(f"emulator throughput: {clients} clients")
            emulator.admin.clear_log()
            outcome = worker("signload", str(setup_file), str(clients), str(seconds))
            signs = ctx.log()["signs"]
            results[str(clients)] = {
                "clients": clients,
                "signs": signs,
                "failures": outcome["failures"],
                "seconds": outcome["seconds"],
                "signs_per_s": round(signs / outcome["seconds"], 1),
            }
    finally:
        add_latency(emulator, ctx.latency_ms)
    return results
