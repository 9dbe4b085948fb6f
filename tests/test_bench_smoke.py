"""`python -m bench` smoke test: the cheapest scenario end to end, and the JSON's shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_quick_import_scenario_prints_the_table_and_writes_the_json(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = run_bench("--quick", "--only", "import", "--output", str(output))
    assert result.returncode == 0, result.stderr[-2000:]

    document = json.loads(output.read_text())
    assert document["schema"] == 1
    assert {"started", "duration_s", "command", "machine", "scenarios", "targets"} <= set(document)
    assert document["options"] == {"latency_ms": 20, "quick": True, "only": ["import"]}

    machine = document["machine"]
    assert isinstance(machine["cpu"], str) and machine["cpu"]
    assert isinstance(machine["cores"], int) and machine["cores"] >= 1
    assert machine["python"] == ".".join(map(str, sys.version_info[:3]))
    for package in ("kvassert", "msal", "azure-identity", "azure-core"):
        assert machine["packages"][package]

    imports = document["scenarios"]["import"]
    assert set(imports) == {"kvassert", "kvassert + from_appsettings", "msal", "azure.identity"}
    for figures in imports.values():
        assert figures["runs"] == 3
        assert 0 < figures["min_ms"] <= figures["median_ms"]
    assert set(document["scenarios"]) == {"import"}

    [target] = document["targets"]
    assert target["target"].startswith("import kvassert")
    assert isinstance(target["met"], bool)

    assert "| `azure.identity` |" in result.stdout
    assert "Machine: " in result.stdout


def test_unknown_scenario_is_a_usage_error() -> None:
    result = run_bench("--only", "nonsense")
    assert result.returncode == 2
    assert "unknown scenario" in result.stderr
