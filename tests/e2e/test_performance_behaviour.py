"""Issue 7 behaviour (counts, not timings): the hot path, background refresh, the Redis cache."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvassert
from kvassert.token_client import TokenClient
from tests.e2e.conftest import API, World
from tests.redis_server import redis_server

SCOPE = f"{API}/.default"


class ThreadRecordingClient(TokenClient):
    """Records which thread sent each token request."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[str] = []

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.current_thread().name)
        return super().request(*args, **kwargs)


@pytest.fixture
def short_tokens(world: World) -> Iterator[World]:
    """Tokens that live 8 s: refresh point at 4 s, background refresh at 3.6 s."""
    assert world.emulator.state is not None
    world.emulator.state.directory.token_lifetime_seconds = 8
    yield world
    world.emulator.state.directory.token_lifetime_seconds = 3600


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_cache_hit_returns_the_same_object_and_allocates_nothing(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with kvassert.from_appsettings(config, background_refresh=False) as credential:
        first = credential.get_token(SCOPE)
        assert credential.get_token(SCOPE) is first
        assert credential.get_token_info(SCOPE) is credential.get_token_info(SCOPE)
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        for _ in range(1000):
            credential.get_token(SCOPE)
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    grown = [s for s in after.compare_to(before, "lineno") if "kvassert" in str(s.traceback)]
    assert sum(s.count_diff for s in grown) <= 0


def test_background_refresh_renews_used_tokens_off_the_callers_thread(
    short_tokens: World,
) -> None:
    world = short_tokens
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    client = ThreadRecordingClient()
    with kvassert.from_appsettings(config, token_client=client) as credential:
        first = credential.get_token(SCOPE)
        wait_for(lambda: len(client.threads) == 2)  # renewed before its refresh point (4 s)
        renewed = credential.get_token(SCOPE)
        assert renewed.token != first.token
        assert client.threads[0] == "MainThread"
        assert client.threads[1] == "kvassert-refresh"
        # The renewed token was served from the cache: no caller sent a request.
        assert client.threads.count("MainThread") == 1


def test_unused_tokens_lapse_and_close_stops_the_thread(short_tokens: World) -> None:
    world = short_tokens
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    client = ThreadRecordingClient()
    credential = kvassert.from_appsettings(config, token_client=client)
    credential.get_token(SCOPE)
    wait_for(lambda: len(client.threads) == 2)  # the handed-out token is renewed once...
    time.sleep(4.5)  # ...and, unused since, not again
    assert len(client.threads) == 2
    assert any(t.name == "kvassert-refresh" for t in threading.enumerate())
    credential.close()
    assert not any(t.name == "kvassert-refresh" for t in threading.enumerate())


def test_switched_off_means_no_thread(world: World) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    before = {t.ident for t in threading.enumerate()}
    with kvassert.from_appsettings(config, background_refresh=False) as credential:
        credential.get_token(SCOPE)
        new = [t for t in threading.enumerate() if t.ident not in before]
        assert not [t for t in new if t.name == "kvassert-refresh"]


WORKER = """
import json, os, sys, time
import kvassert
store = kvassert.RedisTokenStore(os.environ["REDIS_URL"], encryption_key=os.environ["KEY"])
start = float(os.environ["START_AT"])
time.sleep(max(0.0, start - time.time()))
with kvassert.from_appsettings(sys.argv[1], shared_cache=store) as credential:
    token = credential.get_token(sys.argv[2]).token
print(json.dumps({"token": token, "requests": credential.token_requests}))
"""


def test_eight_cold_processes_share_one_sign_and_one_token_request(
    world: World, tmp_path: Path
) -> None:
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    world.admin.clear_log()
    with redis_server(tmp_path) as url:
        env = {
            **os.environ,
            "REDIS_URL": url,
            "KEY": base64.b64encode(os.urandom(32)).decode(),
            "START_AT": str(time.time() + 4),  # all 8 import first, then call at once
        }
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(config), SCOPE],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(8)
        ]
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err[-2000:]
            results.append(json.loads(out))
    assert len({r["token"] for r in results}) == 1
    assert sum(r["requests"] for r in results) == 1
    counts = world.operations()
    assert counts["sign"] == 1
    assert counts["token"] == 1


def test_shared_cache_from_configuration_alone(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """App Service style: the shared cache is switched on by app settings, no code."""
    world.create_certificate("app-cert")
    client_id = world.register_app(vault_certificates=("app-cert",))
    config = world.appsettings(client_id, [world.vault_entry("app-cert")])
    with redis_server(tmp_path) as url:
        monkeypatch.setenv("AzureAd__Kvassert__SharedCache__RedisUrl", url)
        monkeypatch.setenv(
            "AzureAd__Kvassert__SharedCache__EncryptionKey",
            base64.b64encode(os.urandom(32)).decode(),
        )
        monkeypatch.setenv("AzureAd__Kvassert__BackgroundRefresh", "false")
        world.admin.clear_log()
        with (
            kvassert.from_appsettings(config) as first,
            kvassert.from_appsettings(config) as second,
        ):
            assert first.get_token(SCOPE).token == second.get_token(SCOPE).token
            assert first.token_requests + second.token_requests == 1
            assert first._refresher is None  # BackgroundRefresh false came from the env
    assert world.operations()["sign"] == 1
