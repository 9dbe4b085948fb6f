"""The in-process scenarios: cache hits, 32 cold threads, the refresh boundary, a simulated day.

Every count comes from the emulator's request log, never from client-side counters. Each
contender gets a fresh credential object per scenario and is closed after it.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.peers import CONTENDERS, KVASSERT, Contender, Setup, build
from bench.stats import summary_us
from bench.vclock import VirtualClock
from bench.world import operation_counts

if TYPE_CHECKING:
    from kvassert.emulator import Emulator


@dataclass
class Context:
    emulator: Emulator | None
    setup: Setup | None
    folder: Path
    quick: bool
    latency_ms: int

    @property
    def world(self) -> tuple[Emulator, Setup]:
        if self.emulator is None or self.setup is None:
            raise RuntimeError("this scenario needs the emulator")
        return self.emulator, self.setup

    def progress(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    def log(self, since: float | None = None) -> dict[str, int]:
        emulator, _ = self.world
        return operation_counts(emulator.admin.log(), since)


def each_contender(
    ctx: Context, scenario: str, run: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in CONTENDERS:
        ctx.progress(f"{scenario}: {name}")
        try:
            results[name] = run(name)
        except Exception as exc:  # a peer failing must not hide the others' figures
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            ctx.progress(f"{scenario}: {name} failed: {results[name]['error']}")
    return results


def warm_up(ctx: Context) -> None:
    """Build every contender once and get a token, so lazy imports and one-time setup inside
    the libraries do not land in the first timed figure."""
    emulator, setup = ctx.world
    for name in CONTENDERS:
        contender = build(name, setup)
        try:
            contender.token(setup.scopes[0])
        finally:
            contender.close()
    emulator.admin.clear_log()


# ---- cache hit --------------------------------------------------------------------------------


def cache_hit(ctx: Context) -> dict[str, Any]:
    """``get_token`` (msal: ``acquire_token_for_client``) on a warm cache, one thread, each call
    timed with ``perf_counter_ns``; the library's own method with its argument bound."""
    emulator, setup = ctx.world
    iterations = 2_000 if ctx.quick else 20_000
    scope = setup.scopes[0]

    def noop() -> None:
        return None

    floor = _timed(noop, iterations)

    def run(name: str) -> dict[str, Any]:
        contender = build(name, setup)
        try:
            contender.token(scope)
            call = contender.caller(scope)
            contender.check(call())
            emulator.admin.clear_log()
            for _ in range(min(1_000, iterations)):
                call()
            samples = _timed(call, iterations)
            requests = ctx.log()
        finally:
            contender.close()
        return {**summary_us(samples), "requests_during": sum(requests.values())}

    results = each_contender(ctx, "cache hit", run)
    results["_timer_floor"] = summary_us(floor)
    return results


def _timed(call: Callable[[], Any], iterations: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * iterations
    gc.collect()
    for index in range(iterations):
        started = clock()
        call()
        samples[index] = clock() - started
    return samples


# ---- 32 cold threads --------------------------------------------------------------------------

COLD_THREADS = 32


def cold_threads(ctx: Context) -> dict[str, Any]:
    """A fresh credential object, then 32 threads released by a barrier each call
    ``get_token`` once. Wall time = building the credential + release to the last token."""
    emulator, setup = ctx.world
    scope = setup.scopes[0]

    def run(name: str) -> dict[str, Any]:
        emulator.admin.clear_log()
        barrier = threading.Barrier(COLD_THREADS + 1)
        ends = [0.0] * COLD_THREADS
        errors: list[str] = []
        began = time.perf_counter()
        contender = build(name, setup)
        built = time.perf_counter()
        try:

            def work(index: int) -> None:
                barrier.wait(timeout=60)
                try:
                    contender.token(scope)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                ends[index] = time.perf_counter()

            threads = [
                threading.Thread(target=work, args=(i,), daemon=True) for i in range(COLD_THREADS)
            ]
            for thread in threads:
                thread.start()
            barrier.wait(timeout=60)
            released = time.perf_counter()
            for thread in threads:
                thread.join(timeout=120)
            counts = ctx.log()
        finally:
            contender.close()
        return {
            **counts,
            "threads": COLD_THREADS,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "build_ms": round((built - began) * 1000, 2),
            "calls_ms": round((max(ends) - released) * 1000, 2),
            "wall_ms": round((built - began + max(ends) - released) * 1000, 2),
        }

    return each_contender(ctx, "32 cold threads", run)


# ---- refresh boundary -------------------------------------------------------------------------

REFRESH_THREADS = 4
REFRESH_INTERVAL_NS = 2_000_000  # each thread: one call every 2 ms
WINDOW_S = 0.25  # calls scheduled within this of the refresh's first request
AFTER_REFRESH_S = 1.0  # calls go on this long after the refresh's first request
MAX_WAIT_S = 45.0  # no refresh by then: the scenario fails for that library
# Token lifetimes that bring each library's own refresh point close: msal treats a token with
# less than 5 minutes left as expired and azure-identity refreshes 5 minutes before expiry
# (CertificateCredential through msal; ClientAssertionCredential also waits 30 s after its
# last request), so 304 s tokens; kvassert refreshes half-way through short tokens (8 s).
PEER_LIFETIME_S = 304
KVASSERT_LIFETIME_S = 8
RELEVANT = ("token", "sign", "identity", "certificate_get")


def refresh_boundary(ctx: Context) -> dict[str, Any]:
    """Caller-visible latency of calls around the moment a cached token must be refreshed.

    Real time, short-lived tokens (``token_lifetime_seconds`` of the in-process emulator, set
    per library, see ``PEER_LIFETIME_S``), so background threads and timers behave as in
    production. After the first token, ``REFRESH_THREADS`` threads call on a fixed schedule
    (every 2 ms each) until ``AFTER_REFRESH_S`` after the first request of the refresh shows
    up in the emulator's log. A call's latency is its own duration, or, when the thread was
    still busy with an earlier call at the scheduled time, the time from the schedule to its
    return (a request arriving then had to wait: coordinated omission corrected, as wrk2
    does). The boundary window is every call scheduled within ``WINDOW_S`` of that first
    request; ``paced_hit`` is the same harness on the calls well before it.
    """
    emulator, setup = ctx.world
    assert emulator.state is not None
    state = emulator.state
    scope = setup.scopes[0]

    def run(name: str) -> dict[str, Any]:
        lifetime = KVASSERT_LIFETIME_S if name == KVASSERT else PEER_LIFETIME_S
        state.directory.token_lifetime_seconds = lifetime
        contender = None
        try:
            contender = build(name, setup)
            contender.token(scope)
            issued = time.perf_counter_ns()
            emulator.admin.clear_log()
            wall0, pc0 = time.time(), time.perf_counter_ns()
            stop = [pc0 + int(MAX_WAIT_S * 1e9)]
            threads, per_thread, errors = _paced(contender, scope, pc0 + 50_000_000, stop)
            while any(thread.is_alive() for thread in threads):
                if stop[0] > time.perf_counter_ns() + int(AFTER_REFRESH_S * 1e9) and any(
                    entry.operation in RELEVANT for entry in state.log.entries()
                ):
                    stop[0] = time.perf_counter_ns() + int(AFTER_REFRESH_S * 1e9)
                time.sleep(0.1)
            if errors:
                raise errors[0]
            counts = ctx.log()
            entries = emulator.admin.log()
        finally:
            if contender is not None:
                contender.close()
            state.directory.token_lifetime_seconds = 3600
        samples = [sample for samples in per_thread for sample in samples]
        figures = _boundary_figures(samples, entries, wall0, pc0)
        figures["refresh_at_s"] = round((figures.pop("refresh_ns") - issued) / 1e9, 3)
        return {"token_lifetime_s": lifetime, **figures, **counts}

    results = each_contender(ctx, "refresh boundary", run)
    results["_method"] = {
        "threads": REFRESH_THREADS,
        "interval_ms": REFRESH_INTERVAL_NS / 1e6,
        "window_s": WINDOW_S,
        "token_lifetime_s": {"kvassert": KVASSERT_LIFETIME_S, "peers": PEER_LIFETIME_S},
    }
    return results


Sample = tuple[int, int, int, bool]  # scheduled, started, ended (perf_counter_ns), was late


def _paced(
    contender: Contender, scope: str, start: int, stop: list[int]
) -> tuple[list[threading.Thread], list[list[Sample]], list[BaseException]]:
    """Start the paced callers; they run until ``stop[0]`` (which the caller may move)."""
    call = contender.caller(scope)
    per_thread: list[list[Sample]] = [[] for _ in range(REFRESH_THREADS)]
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        clock = time.perf_counter_ns
        out = per_thread[index]
        scheduled = start + index * REFRESH_INTERVAL_NS // REFRESH_THREADS
        free_at = 0
        while scheduled < stop[0]:
            now = clock()
            if now < scheduled:
                time.sleep((scheduled - now) / 1e9)
            started = clock()
            result = call()
            ended = clock()
            try:
                contender.check(result)
            except Exception as exc:
                errors.append(exc)
                return
            out.append((scheduled, started, ended, free_at > scheduled))
            free_at = ended
            scheduled += REFRESH_INTERVAL_NS

    threads = [
        threading.Thread(target=loop, args=(i,), daemon=True) for i in range(REFRESH_THREADS)
    ]
    for thread in threads:
        thread.start()
    return threads, per_thread, errors


def _latency(sample: Sample) -> int:
    scheduled, started, ended, late = sample
    return ended - (scheduled if late else started)


def _boundary_figures(
    samples: list[Sample], entries: list[dict[str, Any]], wall0: float, pc0: int
) -> dict[str, Any]:
    arrivals = [e["time"] for e in entries if e["operation"] in RELEVANT]
    if not arrivals:
        raise RuntimeError(f"no refresh within {MAX_WAIT_S:.0f} s")
    refresh_ns = pc0 + int((min(arrivals) - wall0) * 1e9)
    half = int(WINDOW_S * 1e9)
    window = [_latency(s) for s in samples if abs(s[0] - refresh_ns) <= half]
    first = min(s[0] for s in samples)
    before = [_latency(s) for s in samples if first + 300_000_000 <= s[0] < refresh_ns - 2 * half]
    if not window or not before:
        raise RuntimeError("the refresh fell outside the measured calls")
    boundary, paced = summary_us(window), summary_us(before)
    return {
        "refresh_ns": refresh_ns,
        "boundary": boundary,
        "paced_hit": paced,
        "calls_over_1ms": sum(1 for v in window if v > 1_000_000),
        "p99_over_paced_hit_p99": round(boundary["p99_us"] / paced["p99_us"], 2),
    }


# ---- simulated hours --------------------------------------------------------------------------


def hourly(ctx: Context) -> dict[str, Any]:
    """Key Vault signs and token requests per hour for 5 scopes, on a virtual clock
    (``bench.vclock``): each virtual minute every scope is asked for once, then the clock moves
    60 s. ``first_hour`` includes the cold start. The steady state comes from the refresh
    rounds the log shows (see ``ROUND_GAP_S``): ``cycle_min`` is the
    mean time between rounds, ``per_hour`` the requests of a round times rounds per hour."""
    emulator, setup = ctx.world
    hours = 3 if ctx.quick else 8

    def run(name: str) -> dict[str, Any]:
        clock = VirtualClock()
        with clock.installed():
            emulator.admin.clear_log()
            started = time.time()
            contender = build(name, setup)
            try:
                for _ in range(hours * 60):
                    for scope in setup.scopes:
                        contender.token(scope)
                    clock.advance(60)
                    time.sleep(0.001)  # background threads may act on the new time
            finally:
                contender.close()
            entries = emulator.admin.log()
        return {
            "first_hour": operation_counts([e for e in entries if e["time"] < started + 3600]),
            "whole_run": operation_counts(entries),
            **steady_state(entries),
        }

    results = each_contender(ctx, "simulated hours", run)
    results["_method"] = {"hours": hours, "step_s": 60, "scopes": len(setup.scopes)}
    return results


# Token requests less than this apart belong to one refresh round: azure-identity refreshes at
# most one token per 30 s, so its scopes' refreshes spread over consecutive 1-minute steps.
ROUND_GAP_S = 600


def steady_state(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Refresh rounds in a simulated run: their mean spacing and the requests per hour."""
    times = sorted(e["time"] for e in entries if e["operation"] == "token")
    rounds: list[float] = []
    last = 0.0
    for moment in times:
        if not rounds or moment - last > ROUND_GAP_S:
            rounds.append(moment)
        last = moment
    if len(rounds) < 2:
        return {"rounds": len(rounds), "cycle_min": None, "per_hour": None}
    cycle = (rounds[-1] - rounds[0]) / (len(rounds) - 1)
    # From half a step before the first refresh round: a round's signs precede its requests.
    refreshes = operation_counts([e for e in entries if e["time"] >= rounds[1] - 30])
    per_round = {key: value / (len(rounds) - 1) for key, value in refreshes.items()}
    return {
        "rounds": len(rounds),
        "cycle_min": round(cycle / 60, 2),
        "per_hour": {key: round(value * 3600 / cycle, 2) for key, value in per_round.items()},
    }
