"""Tokens shared by every process of an app through Redis: one acquisition for the whole fleet.

gunicorn workers and App Service instances each hold a credential; without sharing, each one
signs in Key Vault and asks Entra for the same token. With a ``RedisTokenStore`` a process that
misses its in-memory cache first reads the shared entry; if that is missing or due for refresh,
it takes a Redis lock (``SET NX`` with a TTL, redis-py's ``Lock``) and acquires, while the others
poll the shared entry briefly. A holder that dies loses the lock when its TTL runs out, and the
next process takes over. Entries are encrypted with AES-256-GCM under a key from configuration,
bound to their Redis key, so a reader of Redis learns nothing and cannot swap entries.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Hashable
from typing import Any

from kvassert.cache import Refresh, refresh_rule
from kvassert.errors import ConfigError
from kvassert.token_client import AccessToken

_LOG = logging.getLogger("kvassert.shared_cache")
_NONCE_BYTES = 12


def encryption_key_from(text: str | bytes, *, path: str = "encryption_key") -> bytes:
    """A 32-byte AES key from configuration: base64 of 32 random bytes (``openssl rand -base64
    32``), or any passphrase of 16+ characters (stretched with SHA-256). Raises ``ConfigError``."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) == 32:
        return decoded
    if len(raw) < 16:
        raise ConfigError(
            path,
            f"a value of {len(raw)} characters",
            "base64 of 32 random bytes (openssl rand -base64 32) or a passphrase of at least "
            "16 characters",
        )
    return hashlib.sha256(b"kvassert-shared-cache\0" + raw).digest()


class RedisTokenStore:
    """Encrypted shared token entries and a per-entry acquisition lock in Redis.

    ``lock_ttl`` bounds how long a dead holder blocks the others; ``wait`` is how long a process
    waits for another's acquisition before it acquires itself. Redis failures never fail a
    token request: the store logs and the caller acquires on its own.
    """

    def __init__(
        self,
        url: str,
        *,
        encryption_key: str | bytes,
        prefix: str = "kvassert:",
        lock_ttl: float = 30.0,
        wait: float = 10.0,
        poll: float = 0.05,
        client: Any = None,
    ) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(encryption_key_from(encryption_key))
        self._prefix = prefix
        self.lock_ttl = lock_ttl
        self.wait = wait
        self.poll = poll
        self._url = url
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._redis = client
        self.acquisitions = 0

    def __repr__(self) -> str:
        return f"RedisTokenStore(prefix={self._prefix!r})"

    def redis_key(self, key: Hashable) -> str:
        # Hashed so scopes and tenant ids do not show in Redis key names.
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
        return f"{self._prefix}token:{digest}"

    def get(self, key: Hashable) -> AccessToken | None:
        name = self.redis_key(key)
        blob = self._redis.get(name)
        if blob is None:
            return None
        try:
            nonce, sealed = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
            fields = json.loads(self._aead.decrypt(nonce, sealed, name.encode()))
            return AccessToken(**fields)
        except Exception:  # a foreign key, a tampered or truncated entry: treat as absent
            _LOG.warning("shared token entry %s could not be decrypted; ignoring it", name)
            return None

    def put(self, key: Hashable, token: AccessToken) -> None:
        name = self.redis_key(key)
        fields = {
            "token": token.token,
            "expires_on": token.expires_on,
            "refresh_on": token.refresh_on,
            "token_type": token.token_type,
            "issued_at": token.issued_at,
        }
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, json.dumps(fields).encode(), name.encode())
        ttl = max(1, int(token.expires_on - time.time()))
        self._redis.set(name, nonce + sealed, ex=ttl)

    def fetch_or_acquire(
        self,
        key: Hashable,
        acquire: Callable[[], AccessToken],
        *,
        clock: Callable[[], float] = time.time,
        newer_than: AccessToken | None = None,
    ) -> AccessToken:
        """The shared token when it is fresh (and, for a background refresh, newer than
        ``newer_than``, the token being replaced), else one acquisition across all processes.

        Redis trouble never fails the caller and never causes a second acquisition: at worst
        this process acquires on its own.
        """
        import redis

        def fresh(token: AccessToken | None) -> bool:
            return (
                token is not None
                and refresh_rule(token, clock()) is Refresh.NOT_NEEDED
                and (newer_than is None or token.expires_on > newer_than.expires_on)
            )

        shared = self._get_quietly(key)
        if fresh(shared):
            assert shared is not None
            return shared
        lock = self._redis.lock(self.redis_key(key) + ":lock", timeout=self.lock_ttl)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                holder = bool(lock.acquire(blocking=False))
            except redis.exceptions.RedisError as exc:
                _LOG.warning("shared cache unavailable (%s); acquiring alone", type(exc).__name__)
                return acquire()
            if holder:
                try:
                    # Another process may have finished between our read and our lock.
                    shared = self._get_quietly(key)
                    if fresh(shared):
                        assert shared is not None
                        return shared
                    token = acquire()
                    self.acquisitions += 1
                    self._put_quietly(key, token)
                    return token
                finally:
                    # Our TTL may have run out (another process holds it now), or Redis is gone.
                    with contextlib.suppress(redis.exceptions.RedisError):
                        lock.release()
            if time.monotonic() >= deadline:
                _LOG.warning("waited %.1fs for another process's token; acquiring", self.wait)
                return acquire()
            time.sleep(self.poll)
            shared = self._get_quietly(key)
            if fresh(shared):
                assert shared is not None
                return shared

    def _get_quietly(self, key: Hashable) -> AccessToken | None:
        import redis

        try:
            return self.get(key)
        except redis.exceptions.RedisError as exc:
            _LOG.warning("shared cache read failed: %s", type(exc).__name__)
            return None

    def _put_quietly(self, key: Hashable, token: AccessToken) -> None:
        import redis

        try:
            self.put(key, token)
        except redis.exceptions.RedisError as exc:
            _LOG.warning("shared cache write failed: %s", type(exc).__name__)

    def close(self) -> None:
        self._redis.close()
