"""Issue 8 (4): load and soak. Counts, never timings.

Time: kvassert keeps tokens on its credential's clock (``TokenCache(clock=...)``: the cache's
decisions, the background refresher's due times and waits, the token times the token client
reads). The tests give it a faster clock, so hour-long tokens refresh many times in a short run:

- ``SteppedClock`` (soak): simulated time that moves only when the test moves it, in lockstep
  with the refresher thread, so a simulated day gives exact refresh counts;
- ``ScaledClock`` (load): time that runs ``speed`` times faster than the wall clock, under real
  concurrency and real network faults.

The emulator keeps the wall clock: it is "the cloud", and a cloud clock that differs from this
machine's is clock skew to kvassert (AADSTS700024, offset learned from ``Date``), not time
passing. Assertion times stay on the wall clock (they are claims Entra checks), so every request
the emulator sees is valid in its own time.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import kvassert
from kvassert import AzureAdCredential, settings_from_mapping
from kvassert.cache import EXPIRY_MARGIN_SECONDS, TokenCache
from kvassert.errors import KvassertError
from kvassert.refresher import BackgroundRefresher, refresh_due
from kvassert.token_client import AccessToken, TokenClient, default_refresh_on
from tests.e2e.conftest import API, OTHER_API, World
from tests.fakes import scripted_server

FULL = os.environ.get("KVASSERT_LOAD_SCALE", "").lower() == "full"

HOUR = 3600.0


class SteppedClock:
    """Simulated time that moves only in ``advance``, in lockstep with a refresher thread.

    Pass it as the cache's clock and as the refresher's ``wait``. The refresher parks in
    ``wait`` until it is notified (no timeout: simulated seconds do not pass by themselves);
    ``advance`` moves time, wakes it, and returns once it has parked again, that is once every
    refresh due by the new time has run (it refreshes due keys before it parks).
    """

    def __init__(self, start: float) -> None:
        self._now = start
        self._state = threading.Condition()
        self._parked: threading.Condition | None = None
        self.parks = 0

    def __call__(self) -> float:
        return self._now

    def wait(self, condition: threading.Condition, seconds: float | None) -> None:
        """The refresher's ``Wait``: called holding ``condition``."""
        with self._state:
            self._parked = condition
            self.parks += 1
            self._state.notify_all()
        condition.wait()

    def wait_parked(self, timeout: float = 30.0) -> None:
        """Block until the refresher thread has parked at least once."""
        with self._state:
            assert self._state.wait_for(lambda: self.parks > 0, timeout), "no refresher thread"

    def advance(self, seconds: float, timeout: float = 60.0) -> None:
        self._now += seconds
        with self._state:
            condition = self._parked
        if condition is None:
            return  # no refresher thread yet: it reads the new time when it first looks
        with condition:
            # Holding the condition, the refresher is parked in condition.wait() or busy
            # outside it (refreshing, or queued for the lock): either way its next park comes
            # after it has looked at the new time.
            before = self.parks
            condition.notify_all()
        with self._state:
            settled = self._state.wait_for(lambda: self.parks > before, timeout)
        assert settled, "the refresher did not park again"


class ScaledClock:
    """Wall time since construction, ``speed`` times faster; ``wait`` scales back to wall time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self._start = time.time()
        self._base = time.perf_counter()

    def __call__(self) -> float:
        return self._start + (time.perf_counter() - self._base) * self.speed

    def wait(self, condition: threading.Condition, seconds: float | None) -> None:
        condition.wait(None if seconds is None else seconds / self.speed)


# The refresher with an injected wait -----------------------------------------------------------


def test_a_stepped_clock_runs_a_day_of_background_refreshes_in_lockstep() -> None:
    """A token refreshed 2940 s after each issue (a one-hour token: refresh point at 50 min,
    one minute of lead) is refreshed 29 times in 24 simulated hours: floor(86400 / 2940)."""
    clock = SteppedClock(start=1_000_000.0)
    done: list[float] = []

    def refresh(key: Hashable) -> None:
        done.append(clock())
        refresher.schedule(key, clock() + 2940)

    refresher = BackgroundRefresher(refresh, clock=clock, wait=clock.wait)
    refresher.schedule("scope", clock() + 2940)
    clock.wait_parked()
    for _ in range(24 * 60):
        clock.advance(60)
    refresher.close()
    assert len(done) == 29 == refresher.refreshes
    assert done == [1_000_000.0 + 2940 * n for n in range(1, 30)]  # each exactly when due


def test_a_scaled_clock_makes_the_refresher_wait_in_its_seconds() -> None:
    """Ten simulated minutes at 6000x are a tenth of a wall second: the refresh happens while
    the test waits (bounded), which it could not if the refresher waited in wall seconds."""
    clock = ScaledClock(speed=6000)
    ran = threading.Event()
    refresher = BackgroundRefresher(lambda key: ran.set(), clock=clock, wait=clock.wait)
    refresher.schedule("scope", clock() + 600)
    assert ran.wait(30)
    refresher.close()
    assert refresher.refreshes == 1


def test_token_times_are_read_on_the_credential_clock() -> None:
    """The token client dates answers on the cache's clock: ``expires_in`` 3599 at simulated
    time T is ``expires_on`` T + 3599, whatever the wall clock says."""
    with scripted_server() as (base, script):
        body = {"token_type": "Bearer", "expires_in": 3599, "access_token": "tok"}
        script.answers.append((200, {}, json.dumps(body).encode()))
        settings = settings_from_mapping(
            {
                "AzureAd": {
                    "Instance": base + "/",
                    "TenantId": "11111111-2222-3333-4444-555555555555",
                    "ClientId": "00000000-0000-0000-0000-0000000000c1",
                    "ClientSecret": "not-a-real-secret",
                }
            },
            env={},
        )
        clock = SteppedClock(start=2_000_000.0)
        with AzureAdCredential(
            settings, cache=TokenCache(clock), background_refresh=False
        ) as credential:
            token = credential.token("api://x/.default")
    assert (token.issued_at, token.expires_on) == (2_000_000, 2_003_599)
    assert token.refresh_on == default_refresh_on(2_000_000, 2_003_599)


# End to end against the emulator -----------------------------------------------------------------

URIS = (API, OTHER_API, "api://kvassert-load-3", "api://kvassert-load-4", "api://kvassert-load-5")
SCOPES = tuple(f"{uri}/.default" for uri in URIS)
# The emulator's default token answers expires_in 3599; kvassert's refresh point for it
# (default_refresh_on) less the background lead (refresh_due) is the refresh period.
REFRESH_PERIOD = refresh_due(0, default_refresh_on(0, 3599))


class RecordingClient(TokenClient):
    """Counts token requests and answers by (scope, thread name)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.sent: collections.Counter[tuple[str, str]] = collections.Counter()
        self.answered: collections.Counter[tuple[str, str]] = collections.Counter()
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def request(self, endpoint: str, form: Any, **options: Any) -> AccessToken:
        key = (str(form.get("scope")), threading.current_thread().name)
        with self._lock:
            self.sent[key] += 1
        try:
            token = super().request(endpoint, form, **options)
        except Exception as exc:
            self.failures.append(f"{key}: {exc}")
            raise
        with self._lock:
            self.answered[key] += 1
        return token

    def by_thread(self, name: str, *, answered: bool = True) -> int:
        counts = self.answered if answered else self.sent
        return sum(n for (_, thread), n in counts.items() if thread == name)


@pytest.fixture
def five_apis(world: World) -> Iterator[tuple[World, str]]:
    """A vault certificate, an app granted a role on five APIs, and its appsettings.json."""
    for uri in URIS[2:]:
        world.admin.register_application(
            str(uuid.uuid4()), identifier_uris=[uri], app_roles=["Data.Read"]
        )
    world.create_certificate("app-cert")
    client_id = str(uuid.uuid4())
    world.admin.register_application(
        client_id,
        vault_certificates=["app-cert"],
        app_roles_granted={uri: ["Data.Read"] for uri in URIS},
    )
    yield world, str(world.appsettings(client_id, [world.vault_entry("app-cert")]))


def open_sockets() -> int:
    """Socket descriptors of this process (the emulator's server side included)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile (the listing's own descriptor)
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


# Not growth: the in-process emulator's own state (its request log keeps 10,000 entries), and
# attribute-name strings that azure-core builds per request (``_pad_attr_name``, the models'
# ``_deserialized_*``) and CPython 3.11's per-type attribute cache (4096 entries) keeps alive:
# bounded, measured at +25, +32 and +39 KiB after 24, 48 and 96 simulated hours.
NOT_GROWTH = (
    tracemalloc.Filter(False, "*/kvassert/emulator/*", all_frames=True),
    tracemalloc.Filter(False, "*/cheroot/*", all_frames=True),
    tracemalloc.Filter(False, "*/werkzeug/*", all_frames=True),
    tracemalloc.Filter(False, "*/azure/core/utils/_pipeline_transport_rest_shared.py"),
    tracemalloc.Filter(False, "*/azure/keyvault/*/_utils/model_base.py"),
)
# Keeping one access token (about 1.3 KiB) per refresh would grow memory by about 40 KiB in the
# reduced soak and 160 KiB in the full one.
MEMORY_GROWTH_LIMIT = 16 * 1024


@dataclass
class Sample:
    """What the soak compares between the end of warm-up and the end of the run."""

    memory: tracemalloc.Snapshot
    threads: int
    sockets: int

    @classmethod
    def take(cls) -> Sample:
        gc.collect()
        return cls(tracemalloc.take_snapshot(), threading.active_count(), open_sockets())

    def growth(self, later: Sample) -> int:
        """Bytes allocated since this sample and still alive at ``later``, but NOT_GROWTH
        (filtered only now: a filtered snapshot is itself traced memory)."""
        before, after = (s.memory.filter_traces(NOT_GROWTH) for s in (self, later))
        return sum(stat.size_diff for stat in after.compare_to(before, "filename"))


SOAK_HOURS = 24 if FULL else 6
WARM_UP_HOURS = 2 if FULL else 1


def test_soak_a_simulated_day(five_apis: tuple[World, str]) -> None:
    """24 simulated hours (6 in the reduced run), five scopes used every simulated minute,
    background refresh on, the credential on a ``SteppedClock``.

    Expected, exactly: each scope's first token is acquired by its caller, then the background
    thread renews it every REFRESH_PERIOD (3239 s: refresh point at 55 min of the 3599 s token,
    less the 60 s lead), that is floor(24 h / 3239 s) = 26 times per scope, one sign each; no
    caller sends a request after the first; every token is unexpired at the simulated time it is
    returned. From the end of warm-up to the end: memory (tracemalloc, see NOT_GROWTH) grows by
    less than MEMORY_GROWTH_LIMIT, and threads and open sockets do not grow.
    """
    world, config = five_apis
    clock = SteppedClock(start=float(int(time.time())))
    client = RecordingClient(clock=clock)
    world.admin.clear_log()
    tracemalloc.start(25)
    try:
        with kvassert.from_appsettings(
            config,
            cache=TokenCache(clock),
            token_client=client,
            refresh_wait=clock.wait,
            background_refresh=True,
        ) as credential:
            # Tokens served per scope, counted as they change (keeping them would be a leak).
            served = dict.fromkeys(SCOPES, 0)
            last = dict.fromkeys(SCOPES, "")

            def use_every_scope() -> None:
                for scope in SCOPES:
                    token = credential.get_token(scope)
                    assert token.expires_on > clock(), "an expired token was handed out"
                    if token.token != last[scope]:
                        served[scope] += 1
                        last[scope] = token.token

            use_every_scope()
            clock.wait_parked()
            warm: Sample | None = None
            for minute in range(1, SOAK_HOURS * 60 + 1):
                clock.advance(60)
                use_every_scope()
                if minute == WARM_UP_HOURS * 60:
                    warm = Sample.take()
            end = Sample.take()
    finally:
        tracemalloc.stop()
    assert warm is not None
    refreshes = int(SOAK_HOURS * HOUR // REFRESH_PERIOD)
    for scope in SCOPES:
        assert client.answered[(scope, "MainThread")] == 1
        assert client.answered[(scope, "kvassert-refresh")] == refreshes
        assert served[scope] == refreshes + 1  # every renewed token was served
    assert client.failures == []
    signs = collections.Counter(entry["status"] for entry in world.admin.log(operation="sign"))
    # One sign per token; the SDK's first request to the vault is its unauthenticated challenge.
    assert signs[200] == len(SCOPES) * (refreshes + 1)
    assert set(signs) <= {200, 401} and signs[401] <= 1
    growth = warm.growth(end)
    print(
        f"\nsoak: {SOAK_HOURS} simulated h, {len(SCOPES)} scopes, {refreshes} background "
        f"refreshes each, {signs[200]} signs; memory {growth:+d} B after warm-up, threads "
        f"{warm.threads}->{end.threads}, sockets {warm.sockets}->{end.sockets}"
    )
    assert growth < MEMORY_GROWTH_LIMIT
    assert end.threads == warm.threads
    assert end.sockets <= warm.sockets


LOAD_THREADS, LOAD_CALLS = (64, 5000) if FULL else (16, 500)
# kvassert's clock runs 300 times faster: a one-hour token lives 12 wall seconds, so a run of
# LOAD_HOURS simulated hours (2.4 wall minutes full, 24 s reduced) sees many refreshes while the
# faults below (wall time: Retry-After 1 s is five simulated minutes) hit them.
LOAD_SPEED = 300.0
LOAD_HOURS = 12 if FULL else 2
LOAD_POLICY = kvassert.RetryPolicy(
    attempts=4, backoff=0.05, backoff_max=0.5, jitter=0.0, deadline=10.0, timeout=(2.0, 2.0)
)
# Injected in turn on each route, one pending at a time (each is consumed by the next requests).
FAULT_CYCLE: tuple[dict[str, Any], ...] = (
    {"status": 429, "retry_after": 1, "count": 1},  # throttled, Retry-After honoured
    {"status": 503, "count": 2},  # a 5xx burst
    {"drop": True, "count": 1},  # connection dropped without an answer
    {"latency_ms": 300, "count": 2},  # slow answers
    {"status": 500, "count": 4},  # a burst longer than the retries: the refresh fails
)


def inject_faults(world: World, stop: threading.Event) -> None:
    """Keep one fault pending on ``sign`` and one on ``token``, cycling through FAULT_CYCLE."""
    turns = dict.fromkeys(("sign", "token"), 0)
    while not stop.wait(0.25):
        pending = {fault["route"] for fault in world.admin.faults()}
        for route, turn in turns.items():
            if route not in pending:
                world.admin.add_fault(route, **FAULT_CYCLE[turn % len(FAULT_CYCLE)])
                turns[route] = turn + 1


@dataclass
class Caller:
    """One calling thread's record: every returned token is checked against the time of
    return, every error is kept with the time it surfaced."""

    credential: AzureAdCredential
    clock: ScaledClock
    index: int
    latest: dict[str, int]  # scope -> latest expires_on any caller was served (shared)
    served: int = 0
    expired: list[str] = field(default_factory=list)
    errors: list[tuple[str, float, int, str]] = field(default_factory=list)
    crashed: str = ""

    def run(self) -> None:
        pause = LOAD_HOURS * HOUR / LOAD_CALLS / LOAD_SPEED  # wall seconds between calls
        try:
            for call in range(LOAD_CALLS):
                scope = SCOPES[(self.index + call) % len(SCOPES)]
                try:
                    token = self.credential.get_token(scope)
                except KvassertError as exc:
                    when = self.clock()
                    self.errors.append((scope, when, self.latest[scope], f"{exc!r}"[:300]))
                else:
                    when = self.clock()
                    self.served += 1
                    if token.expires_on <= when:
                        self.expired.append(f"{scope}: expired {token.expires_on}, now {when}")
                    if token.expires_on > self.latest[scope]:
                        self.latest[scope] = token.expires_on
                time.sleep(pause)
        except BaseException as exc:  # a crash must fail the test, not vanish with the thread
            self.crashed = repr(exc)


def test_load_with_background_refresh_under_faults(five_apis: tuple[World, str]) -> None:
    """LOAD_THREADS threads x LOAD_CALLS calls over five scopes, background refresh on, while
    the emulator keeps throttling, failing, dropping and slowing ``sign`` and ``token``.

    Asserted: no caller saw an error while a valid token existed (valid as the cache judges
    it: more than EXPIRY_MARGIN_SECONDS before expiry; the latest token any caller was served
    stands for "existed"); no expired token was handed out (each token's ``expires_on`` against
    the clock read right after the call returned); and the sign count stays within its bound:

    - a successful acquisition for a scope happens at most once per REFRESH_PERIOD after the
      previous one (the background refresh is due then, callers' refresh point is later, and the
      single flight merges concurrent ones): at most 1 + floor(T / (REFRESH_PERIOD - 1)) per
      scope over the T simulated seconds from the first token (int() of the issue time may take
      a second off the period);
    - any other acquisition failed, and failed because of at least one injected fault it hit;
    - each sign fault costs at most one extra sign request (a retry), and the SDK sends one
      unauthenticated challenge request before its first sign;

    so sign requests <= scopes x (1 + floor(T / (REFRESH_PERIOD - 1))) + 2 x faults hit + 1.

    The run spans LOAD_HOURS simulated hours, several REFRESH_PERIODs: that refreshes happened
    is checked (at least two tokens per scope on average, at least one renewal by the background
    thread), not how many, since faults may delay a refresh arbitrarily. Errors are allowed once
    no valid token is left: a refresh that faults keep failing past the cached token's expiry
    (each wall second of Retry-After or latency is five simulated minutes here).
    """
    world, config = five_apis
    clock = ScaledClock(LOAD_SPEED)
    client = RecordingClient(clock=clock, policy=LOAD_POLICY)
    world.admin.clear_log()
    with kvassert.from_appsettings(
        config,
        cache=TokenCache(clock),
        token_client=client,
        retry_policy=LOAD_POLICY,
        refresh_wait=clock.wait,
        background_refresh=True,
    ) as credential:
        started = clock()
        latest = {scope: credential.get_token(scope).expires_on for scope in SCOPES}
        callers = [Caller(credential, clock, n, latest) for n in range(LOAD_THREADS)]
        threads = [threading.Thread(target=c.run, name=f"caller-{c.index}") for c in callers]
        stop = threading.Event()
        injector = threading.Thread(target=inject_faults, args=(world, stop), name="faults")
        injector.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        injector.join()
        elapsed = clock() - started
        world.admin.clear_faults()
    log = world.admin.log()
    assert [c.crashed for c in callers if c.crashed] == []
    errors = [error for c in callers for error in c.errors]
    served = sum(c.served for c in callers)
    assert served + len(errors) == LOAD_THREADS * LOAD_CALLS
    assert [e for c in callers for e in c.expired] == []
    while_valid = [e for e in errors if e[1] < e[2] - EXPIRY_MARGIN_SECONDS]
    assert while_valid == []

    faults_hit = sum(1 for entry in log if entry["fault"])
    signs = [entry for entry in log if entry["operation"] == "sign"]
    periods = 1 + int(elapsed // (REFRESH_PERIOD - 1))
    bound = len(SCOPES) * periods + 2 * faults_hit + 1
    tokens = sum(client.answered.values())
    print(
        f"\nload: {LOAD_THREADS} threads x {LOAD_CALLS} calls, {len(SCOPES)} scopes, "
        f"{elapsed / HOUR:.1f} simulated h; {served} served, {len(errors)} errors (none while "
        f"a valid token existed), 0 expired; {len(signs)} sign requests (bound {bound}), "
        f"{tokens} tokens ({client.by_thread('kvassert-refresh')} by the refresher), "
        f"{faults_hit} faults hit"
    )
    assert len(signs) <= bound
    assert tokens >= 2 * len(SCOPES)
    assert client.by_thread("kvassert-refresh") >= 1
