"""Worker processes started by ``bench.processes`` (``python -m bench.worker KIND ...``).

- ``baseline``: peak RSS of a Python process that imports nothing of interest.
- ``rss NAME SETUP``: peak RSS after importing one library, building its credential and getting
  one token.
- ``redis SETUP URL KEY SCOPE``: build kvassert with a ``RedisTokenStore``, print ``ready``,
  wait for a line on stdin, get one token, print the result as JSON.
- ``signload SETUP THREADS SECONDS``: sign requests against the emulator's vault as fast as
  ``THREADS`` keep-alive clients can for ``SECONDS``; print the count as JSON.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from typing import Any

from bench.peers import Setup, build


def maxrss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux


def peak_rss() -> dict[str, Any]:
    """``VmHWM`` (this process image's peak RSS) and ``ru_maxrss``, in KiB. On Linux
    ``ru_maxrss`` keeps the parent's high-water mark across fork + exec, so a worker started by
    a bigger process reports the parent's figure; ``VmHWM`` belongs to the new image only."""
    hwm = None
    try:
        for line in open("/proc/self/status").read().splitlines():  # noqa: SIM115
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return {"vmhwm_kib": hwm, "ru_maxrss_kib": maxrss_kib()}


def rss(name: str, setup_path: str) -> dict[str, Any]:
    setup = Setup.load(setup_path)
    contender = build(name, setup)
    try:
        contender.token(setup.scopes[0])
    finally:
        contender.close()
    return peak_rss()


def redis(setup_path: str, url: str, key: str, scope: str) -> dict[str, Any]:
    import kvassert

    setup = Setup.load(setup_path)
    store = kvassert.RedisTokenStore(url, encryption_key=key)
    credential = kvassert.from_appsettings(setup.settings_path, shared_cache=store)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    try:
        token = credential.get_token(scope)
        elapsed = time.perf_counter() - started
    finally:
        credential.close()
        store.close()
    return {"ok": bool(token.token), "elapsed_ms": round(elapsed * 1000, 2)}


def signload(setup_path: str, threads: int, seconds: float) -> dict[str, Any]:
    import base64
    import hashlib
    import threading

    import requests

    setup = Setup.load(setup_path)
    answer = requests.get(
        setup.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": setup.identity_header},
        verify=setup.ca_file,
        timeout=30,
    )
    answer.raise_for_status()
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    digest = hashlib.sha256(b"kvassert bench").digest()
    body = {"alg": "PS256", "value": base64.urlsafe_b64encode(digest).rstrip(b"=").decode()}
    url = f"{setup.key_id}/sign"
    barrier = threading.Barrier(threads + 1)
    counts = [0] * threads
    failures = [0] * threads
    deadline = [0.0]

    def client(index: int) -> None:
        with requests.Session() as session:
            barrier.wait(timeout=60)
            while time.perf_counter() < deadline[0]:
                response = session.post(
                    url,
                    params={"api-version": "7.5"},
                    json=body,
                    headers=headers,
                    verify=setup.ca_file,
                    timeout=30,
                )
                if response.status_code == 200:
                    counts[index] += 1
                else:
                    failures[index] += 1

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    started = time.perf_counter()
    deadline[0] = started + seconds  # read by the clients once the barrier lets them go
    barrier.wait(timeout=60)
    for worker in workers:
        worker.join(timeout=seconds + 60)
    elapsed = time.perf_counter() - started
    return {"signs": sum(counts), "failures": sum(failures), "seconds": round(elapsed, 3)}


def main(argv: list[str]) -> int:
    kind, args = argv[0], argv[1:]
    if kind == "baseline":
        result: dict[str, Any] = peak_rss()
    elif kind == "rss":
        result = rss(args[0], args[1])
    elif kind == "redis":
        result = redis(args[0], args[1], args[2], args[3])
    elif kind == "signload":
        result = signload(args[0], int(args[1]), float(args[2]))
    else:
        print(f"unknown worker kind {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
