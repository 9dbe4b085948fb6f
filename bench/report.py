"""The machine description, the markdown table, the issue's targets and the JSON file."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers import CONTENDERS, KVASSERT, LABELS, PEERS, SIGNS_IN_VAULT

SCHEMA = 1
PACKAGES = (
    "kvassert",
    "msal",
    "azure-identity",
    "azure-core",
    "azure-keyvault-keys",
    "azure-keyvault-certificates",
    "cryptography",
    "requests",
    "urllib3",
    "redis",
    "cheroot",
)
SHORT = {
    "kvassert": "kvassert",
    "msal-cert": "msal cert",
    "msal-kv": "msal + KV",
    "azid-cert": "az-id cert",
    "azid-kv": "az-id + KV",
}


def machine(repo: Path) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": versions,
        "redis_server": _output(["redis-server", "--version"]),
        "kvassert_commit": _output(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"]),
        "kvassert_tree_dirty": bool(
            _output(["git", "-C", str(repo), "status", "--porcelain", "--", "kvassert"])
        ),
    }


def _output(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


# ---- table ------------------------------------------------------------------------------------

Cell = float | int | str | None  # a number, a note ("n/a ..."), or None: does not apply


def _pick(results: dict[str, Any], scenario: str, name: str, *path: str) -> Cell:
    entry = results.get(scenario, {}).get(name)
    if entry is None:
        return "not run"
    if "error" in entry:
        return "error"
    if "na" in entry:
        return f"n/a ({entry['na']})"
    value: Any = entry
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, (int, float)) else "—"


def _fmt(value: Cell, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, int) or (float(value).is_integer() and digits == 0):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(cells: dict[str, Cell]) -> str:
    mine = cells[KVASSERT]
    peers = [v for k, v in cells.items() if k in PEERS and isinstance(v, (int, float))]
    if not isinstance(mine, (int, float)) or not peers:
        return "—"
    best = min(peers)
    if best == 0:
        return "—"
    return f"{mine / best:.3g}x"


Row = tuple[str, Callable[[str], Cell], int]
NO_RATIO = ("refresh cycle",)  # rows where "fastest" means nothing


def figure_rows(results: dict[str, Any]) -> list[Row]:
    def get(scenario: str, *path: str) -> Callable[[str], Cell]:
        return lambda name: _pick(results, scenario, name, *path)

    def vault_only(scenario: str, *path: str) -> Callable[[str], Cell]:
        def cell(name: str) -> Cell:
            return _pick(results, scenario, name, *path) if SIGNS_IN_VAULT[name] else None

        return cell

    return [
        ("cache hit, median (µs)", get("hit", "median_us"), 2),
        ("cache hit, p99 (µs)", get("hit", "p99_us"), 2),
        ("32 cold threads: token requests", get("cold32", "token_requests"), 0),
        ("32 cold threads: Key Vault signs", vault_only("cold32", "signs"), 0),
        ("32 cold threads: wall (ms)", get("cold32", "wall_ms"), 1),
        ("refresh boundary: p50 (µs)", get("refresh", "boundary", "median_us"), 2),
        ("refresh boundary: p99 (µs)", get("refresh", "boundary", "p99_us"), 2),
        ("refresh boundary: max (µs)", get("refresh", "boundary", "max_us"), 0),
        ("same harness, no boundary: p99 (µs)", get("refresh", "paced_hit", "p99_us"), 2),
        ("hour 1, 5 scopes: token requests", get("hourly", "first_hour", "token_requests"), 0),
        ("hour 1, 5 scopes: Key Vault signs", vault_only("hourly", "first_hour", "signs"), 0),
        ("refresh cycle, 1 h tokens (min)", get("hourly", "cycle_min"), 1),
        ("steady state, per hour: token requests", get("hourly", "per_hour", "token_requests"), 2),
        ("steady state, per hour: Key Vault signs", vault_only("hourly", "per_hour", "signs"), 2),
        ("8 cold processes: token requests", get("redis", "token_requests"), 0),
        ("8 cold processes: Key Vault signs", vault_only("redis", "signs"), 0),
        ("peak RSS, import + 1 token (MiB)", get("rss", "peak_rss_mib"), 1),
    ]


def table(results: dict[str, Any]) -> str:
    header = ["figure", *(SHORT[name] for name in CONTENDERS), "kvassert ÷ fastest peer"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, cell, digits in figure_rows(results):
        cells = {name: cell(name) for name in CONTENDERS}
        if all(v in ("not run", None) for v in cells.values()):
            continue
        ratio = "—" if label.startswith(NO_RATIO) else _ratio(cells)
        row = [label, *(_fmt(cells[name], digits) for name in CONTENDERS), ratio]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def imports_table(results: dict[str, Any]) -> str:
    imports = results.get("import")
    if not imports:
        return ""
    lines = ["| import | median (ms) | runs |", "|---|---|---|"]
    for name, entry in imports.items():
        lines.append(f"| `{name}` | {entry['median_ms']:.1f} | {entry['runs']} |")
    return "\n".join(lines)


def throughput_line(results: dict[str, Any]) -> str:
    levels = results.get("emulator")
    if not levels:
        return ""
    parts = [
        f"{entry['clients']} client{'s' if entry['clients'] != 1 else ''}: "
        f"{entry['signs_per_s']:,.0f} signs/s"
        for entry in levels.values()
    ]
    return "Emulator sign throughput (no injected latency): " + "; ".join(parts) + "."


# ---- targets ----------------------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, met: bool | None) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    hit = results.get("hit")
    if hit and "median_us" in hit.get(KVASSERT, {}):
        peers = {n: hit[n]["median_us"] for n in PEERS if "median_us" in hit.get(n, {})}
        fastest = min(peers, key=lambda n: peers[n])
        ratio = hit[KVASSERT]["median_us"] / peers[fastest]
        add(
            "cache-hit median ≤ 1/5 of the fastest peer",
            f"{hit[KVASSERT]['median_us']:.2f} µs vs {peers[fastest]:.2f} µs ({fastest}): "
            f"{ratio:.3f}x",
            ratio <= 0.2,
        )
    cold = results.get("cold32", {}).get(KVASSERT)
    if cold and "signs" in cold:
        add(
            "32 cold threads: exactly 1 sign and 1 token request",
            f"{cold['signs']} sign(s), {cold['token_requests']} token request(s)",
            cold["signs"] == 1 and cold["token_requests"] == 1,
        )
    refresh = results.get("refresh", {}).get(KVASSERT)
    if refresh and "boundary" in refresh:
        p99 = refresh["boundary"]["p99_us"]
        paced = refresh["paced_hit"]["p99_us"]
        tight = hit.get(KVASSERT, {}).get("p99_us") if hit else None
        extra = f"; tight-loop cache-hit p99 {tight:.2f} µs" if tight else ""
        add(
            "refresh boundary: caller-visible p99 within 2x of a cache hit",
            f"p99 {p99:.2f} µs vs {paced:.2f} µs for hits in the same harness "
            f"({p99 / paced:.2f}x){extra}",
            p99 <= 2 * paced,
        )
    redis = results.get("redis", {}).get(KVASSERT)
    if redis:
        if "signs" in redis:
            add(
                "8 cold processes with Redis: exactly 1 sign and 1 token request in total",
                f"{redis['signs']} sign(s), {redis['token_requests']} token request(s)",
                redis["signs"] == 1 and redis["token_requests"] == 1,
            )
        else:
            add(
                "8 cold processes with Redis: exactly 1 sign and 1 token request in total",
                f"n/a ({redis['na']})" if "na" in redis else redis.get("error", "error"),
                None,
            )
    imports = results.get("import")
    if imports:
        mine, theirs = imports["kvassert"]["median_ms"], imports["azure.identity"]["median_ms"]
        add(
            "import kvassert ≤ 1/3 of import azure.identity",
            f"{mine:.1f} ms vs {theirs:.1f} ms ({mine / theirs:.3f}x)",
            mine <= theirs / 3,
        )
    return out


def targets_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    lines = ["| target | measured | met |", "|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: "n/a"}[row["met"]]
        lines.append(f"| {row['target']} | {row['measured']} | {met} |")
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    packages = info["packages"]
    names = ("kvassert", "msal", "azure-identity", "azure-core", "azure-keyvault-keys", "redis")
    versions = ", ".join(f"{n} {packages[n]}" for n in names if packages.get(n))
    commit = info.get("kvassert_commit") or "?"
    dirty = " (uncommitted changes in kvassert/)" if info.get("kvassert_tree_dirty") else ""
    load = info.get("load_average_before")
    busy = f" (1-min load average before the run: {load[0]:.2f})" if load else ""
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores{busy}, {info['platform']}; "
        f"Python {info['python']}; {versions}; kvassert at {commit}{dirty}."
    )


def notes(results: dict[str, Any]) -> list[str]:
    """One line per scenario on how its figures were taken."""
    lines = []
    hit = results.get("hit", {})
    if "_timer_floor" in hit:
        n = hit.get(KVASSERT, {}).get("n", hit["_timer_floor"]["n"])
        lines.append(
            f"- cache hit: warm cache, one thread, {n:,} calls each timed with "
            f"`perf_counter_ns` (timing a no-op: median {hit['_timer_floor']['median_us']} µs)."
        )
    if "cold32" in results:
        lines.append(
            "- 32 cold threads: a fresh credential, 32 threads released by a barrier, one "
            "`get_token` each; wall = building the credential + release to the last token."
        )
    method = results.get("refresh", {}).get("_method")
    if method:
        lifetimes = method["token_lifetime_s"]
        lines.append(
            f"- refresh boundary: real time, short tokens (kvassert {lifetimes['kvassert']} s, "
            f"peers {lifetimes['peers']} s, so each library's own refresh point comes within "
            f"seconds); {method['threads']} threads call every {method['interval_ms']:g} ms; "
            "latency corrected for coordinated omission; window = calls scheduled within "
            f"±{method['window_s']:g} s of the refresh's first request (emulator log)."
        )
    method = results.get("hourly", {}).get("_method")
    if method:
        lines.append(
            f"- per hour: virtual clock, {method['hours']} h in 1-minute steps, every scope "
            "asked each minute; steady state = requests per refresh round x rounds per hour "
            "(rounds and their spacing from the emulator log)."
        )
    redis = results.get("redis", {})
    if redis:
        lines.append(
            "- 8 cold processes: kvassert with `RedisTokenStore` on a local redis-server, 8 "
            "processes released together; peers have no shared cache: 8 x one cold `get_token`."
        )
    baseline = results.get("rss", {}).get("_baseline")
    if baseline:
        lines.append(
            "- peak RSS: VmHWM of a fresh process that imports the library, builds the "
            f"credential and gets one token (the same process without a library: "
            f"{baseline['peak_rss_mib']} MiB)."
        )
    return lines


def render(document: dict[str, Any]) -> str:
    results = document["scenarios"]
    options = document["options"]
    parts = [
        f"## kvassert benchmark ({'quick' if options['quick'] else 'full'} run, "
        f"{options['latency_ms']} ms injected per Key Vault operation and token request)",
        "",
        "Contenders: " + "; ".join(f"{SHORT[n]} = {LABELS[n]}" for n in CONTENDERS) + ".",
        "",
    ]
    for block in (
        table(results),
        "\n".join(notes(results)),
        imports_table(results),
        throughput_line(results),
        targets_table(document["targets"]),
    ):
        if block:
            parts += [block, ""]
    errors = {
        f"{scenario}/{name}": entry["error"]
        for scenario, entries in results.items()
        if isinstance(entries, dict)
        for name, entry in entries.items()
        if isinstance(entry, dict) and "error" in entry
    }
    if errors:
        parts += ["Errors:", *(f"- {k}: {v}" for k, v in errors.items()), ""]
    parts.append(machine_line(document["machine"]))
    parts.append(f"Command: `{document['command']}`")
    return "\n".join(parts)


def write_json(document: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
