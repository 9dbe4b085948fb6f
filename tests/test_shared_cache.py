"""The Redis token store against a real redis-server: encryption, one acquisition, takeover."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kvassert.errors import ConfigError
from kvassert.shared_cache import RedisTokenStore, encryption_key_from
from kvassert.token_client import AccessToken
from tests.redis_server import free_port, redis_server

KEY = base64.b64encode(b"k" * 32).decode()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def flush(redis_url: str) -> str:
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


def fresh_token(name: str = "tok-canary") -> AccessToken:
    now = int(time.time())
    return AccessToken(token=name, expires_on=now + 3600, refresh_on=now + 3000, issued_at=now)


def test_round_trip_is_encrypted_and_bound_to_its_key(flush: str) -> None:
    store = RedisTokenStore(flush, encryption_key=KEY)
    store.put(("a",), fresh_token())
    assert store.get(("a",)) == fresh_token()
    raw = redis.Redis.from_url(flush)
    blob = raw.get(store.redis_key(("a",)))
    assert blob is not None and b"tok-canary" not in blob
    # An entry copied under another key does not decrypt (the key name is authenticated).
    raw.set(store.redis_key(("b",)), blob)
    assert store.get(("b",)) is None
    # Another encryption key reads nothing.
    other = RedisTokenStore(flush, encryption_key=base64.b64encode(b"x" * 32).decode())
    assert other.get(("a",)) is None
    # Tampering is detected.
    raw.set(store.redis_key(("a",)), blob[:-1] + bytes([blob[-1] ^ 1]))
    assert store.get(("a",)) is None
    assert "canary" not in repr(store)


def test_encryption_key_forms() -> None:
    assert encryption_key_from(KEY) == b"k" * 32
    assert len(encryption_key_from("a passphrase of some length")) == 32
    with pytest.raises(ConfigError, match="at least 16 characters") as info:
        encryption_key_from("short-secret")
    assert "short-secret" not in str(info.value)


def test_concurrent_misses_acquire_once(flush: str) -> None:
    calls: list[int] = []

    def acquire() -> AccessToken:
        calls.append(1)
        time.sleep(0.3)
        return fresh_token("shared")

    results: list[str] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        store = RedisTokenStore(flush, encryption_key=KEY)  # one connection each, like processes
        barrier.wait()
        results.append(store.fetch_or_acquire(("k",), acquire).token)
        store.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["shared"] * 8
    assert len(calls) == 1


def test_a_dead_holder_is_taken_over_after_its_lock_ttl(flush: str) -> None:
    store = RedisTokenStore(flush, encryption_key=KEY, lock_ttl=1.0, wait=10.0)
    dead = redis.Redis.from_url(flush).lock(store.redis_key(("k",)) + ":lock", timeout=1.0)
    assert dead.acquire(blocking=False)  # a process that took the lock and died
    calls: list[int] = []

    def acquire() -> AccessToken:
        calls.append(1)
        return fresh_token("taken-over")

    assert store.fetch_or_acquire(("k",), acquire).token == "taken-over"
    assert calls == [1]


def test_a_due_shared_entry_is_refreshed_not_served(flush: str) -> None:
    store = RedisTokenStore(flush, encryption_key=KEY)
    now = int(time.time())
    store.put(
        ("k",),
        AccessToken(token="old", expires_on=now + 600, refresh_on=now - 1, issued_at=now - 3000),
    )
    assert store.fetch_or_acquire(("k",), lambda: fresh_token("new")).token == "new"
    assert store.get(("k",)).token == "new"  # type: ignore[union-attr]


def test_redis_down_means_acquiring_alone_once(caplog: pytest.LogCaptureFixture) -> None:
    store = RedisTokenStore(f"redis://127.0.0.1:{free_port()}/0", encryption_key=KEY)
    calls: list[int] = []

    def acquire() -> AccessToken:
        calls.append(1)
        return fresh_token()

    assert store.fetch_or_acquire(("k",), acquire).token == "tok-canary"
    assert calls == [1]
    assert "shared cache" in caplog.text


def test_redis_server_helper_requires_the_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="make test"), redis_server(tmp_path):
        pass
