"""Run infra/modules/scripts/create-certificate.sh against a fake ``az`` that models one vault.

The deployment script only runs in Azure, so this is the one place its shell logic executes:
create-or-keep, the exportable guard, the HSM/SKU guard, waiting for issuance, collecting the
valid versions, and the JSON it hands to the template. The fake records every ``az`` call, so the
test can also prove the script never asks for a secret.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = (
    Path(__file__).resolve().parents[2] / "infra" / "modules" / "scripts" / "create-certificate.sh"
)

# A stand-in for the Azure CLI: state lives in a JSON file; each call is appended to a log.
FAKE_AZ = r"""
import json, os, sys
state_path = os.environ["FAKE_AZ_STATE"]
state = json.load(open(state_path))
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")

def opt(name):
    return args[args.index(name) + 1] if name in args else None

def save():
    json.dump(state, open(state_path, "w"))

def tsv(values):
    print("\t".join("" if v is None else str(v) for v in values))

cmd = args[:3]
if cmd[:2] != ["keyvault", "certificate"]:
    sys.exit(f"unexpected az call: {args}")
versions = state["versions"]
current = versions[-1] if versions else None
query = opt("--query")
if cmd[2] == "list":
    if state.get("list_failures", 0) > 0:
        state["list_failures"] -= 1
        save()
        sys.exit("ERROR: (Forbidden) Caller is not authorized. ForbiddenByRbac")
elif cmd[2] == "show":
    version = current
    if opt("--id"):
        version = next(v for v in versions if v["id"] == opt("--id"))
    if version is None:
        sys.exit("ERROR: (CertificateNotFound)")
    if state.get("pending_polls", 0) > 0 and query == "cer":
        state["pending_polls"] -= 1
        save()
        print("")
        sys.exit(0)
    if query == "policy.keyProperties.exportable":
        print("true" if state["exportable"] else "false")
    elif query == "cer":
        print(version["cer"])
    elif query == "[id, kid, cer, x509ThumbprintHex]":
        tsv([version["id"], version["kid"], version["cer"], version["x5t"]])
    elif query.startswith("[cer, x509ThumbprintHex"):
        tsv([version["cer"], version["x5t"], version["nbf"], version["exp"]])
    else:
        sys.exit(f"unexpected query {query}")
elif cmd[2] == "create":
    policy = json.load(open(opt("--policy")[1:]))
    state["created_with"] = policy
    state["exportable"] = policy["keyProperties"]["exportable"]
    n = len(versions) + 1
    versions.append({"id": f"https://v/certificates/c/{n}", "kid": f"https://v/keys/c/{n}",
                     "cer": f"Q0VS{n}", "x5t": f"AB{n}", "enabled": True,
                     "nbf": "2026-01-01T00:00:00+00:00", "exp": "2099-01-01T00:00:00+00:00"})
    save()
elif cmd[2] == "set-attributes":
    state["policy_updated"] = True
    save()
elif cmd[2] == "pending":
    print("inProgress")
elif cmd[2] == "list-versions":
    for v in versions:
        tsv([v["id"], "True" if v["enabled"] else "False", v["exp"]])
else:
    sys.exit(f"unexpected az call: {args}")
"""

POLICY = {
    "keyProperties": {"exportable": False, "keyType": "RSA", "keySize": 2048, "reuseKey": False},
    "x509CertificateProperties": {"subject": "CN=x", "keyUsage": ["digitalSignature"]},
    "issuerParameters": {"name": "Self"},
}


def version(
    n: int, *, enabled: bool = True, expires: str = "2099-01-01T00:00:00+00:00"
) -> dict[str, Any]:
    return {
        "id": f"https://v/certificates/c/{n}",
        "kid": f"https://v/keys/c/{n}",
        "cer": f"Q0VS{n}",
        "x5t": f"AB{n}",
        "enabled": enabled,
        "nbf": "2025-01-01T00:00:00+00:00",
        "exp": expires,
    }


def run_script(
    tmp_path: Path, state: dict[str, Any], **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "az"
    fake.write_text(f"#!{sys.executable}\n{FAKE_AZ}")
    fake.chmod(0o755)
    (bin_dir / "sleep").write_text("#!/bin/sh\nexit 0\n")  # no real waiting in tests
    (bin_dir / "sleep").chmod(0o755)
    state_path = tmp_path / "state.json"
    state_path.write_text(json.dumps(state))
    output = tmp_path / "outputs.json"
    log = tmp_path / "az.log"
    environment = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FAKE_AZ_STATE": str(state_path),
        "FAKE_AZ_LOG": str(log),
        "AZ_SCRIPTS_OUTPUT_PATH": str(output),
        "VAULT_NAME": "kv",
        "CERT_NAME": "c",
        "CERT_POLICY": json.dumps(POLICY),
        "KEY_TYPE": "RSA",
        "VAULT_SKU": "standard",
        **env,
    }
    completed = subprocess.run(
        [shutil.which("bash") or "bash", str(SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = json.loads(output.read_text()) if output.exists() else {}
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return completed, outputs, calls


pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_creates_a_non_exportable_certificate_and_outputs_its_public_part(tmp_path: Path) -> None:
    completed, outputs, calls = run_script(
        tmp_path, {"versions": [], "exportable": None, "pending_polls": 2}
    )
    assert completed.returncode == 0, completed.stderr
    assert outputs == {
        "certificateId": "https://v/certificates/c/1",
        "keyId": "https://v/keys/c/1",
        "cer": "Q0VS1",
        "thumbprint": "AB1",
        "validCertificates": [
            {
                "cer": "Q0VS1",
                "thumbprint": "AB1",
                "notBefore": "2026-01-01T00:00:00+00:00",
                "expires": "2099-01-01T00:00:00+00:00",
                "id": "https://v/certificates/c/1",
            }
        ],
    }
    assert ["keyvault", "certificate", "create"] in [c[:3] for c in calls]
    assert all("secret" not in c and "download" not in c for c in calls), calls


def test_keeps_an_existing_certificate_and_lists_every_valid_version(tmp_path: Path) -> None:
    state = {
        "versions": [
            version(1, expires="2020-01-01T00:00:00+00:00"),  # expired
            version(2, enabled=False),  # disabled after a rotation
            version(3),  # the previous key, still in its overlap window
            version(4),  # current
        ],
        "exportable": False,
    }
    completed, outputs, calls = run_script(tmp_path, state)
    assert completed.returncode == 0, completed.stderr
    assert outputs["certificateId"].endswith("/4")
    assert [c["thumbprint"] for c in outputs["validCertificates"]] == ["AB3", "AB4"]
    assert ["keyvault", "certificate", "create"] not in [c[:3] for c in calls]
    assert ["keyvault", "certificate", "set-attributes"] in [c[:3] for c in calls]


def test_refuses_an_existing_exportable_certificate(tmp_path: Path) -> None:
    completed, outputs, _ = run_script(tmp_path, {"versions": [version(1)], "exportable": True})
    assert completed.returncode != 0
    assert "exportable" in completed.stderr
    assert outputs == {}


def test_refuses_hsm_keys_in_a_standard_vault(tmp_path: Path) -> None:
    completed, _, calls = run_script(
        tmp_path, {"versions": [], "exportable": None}, KEY_TYPE="RSA-HSM", VAULT_SKU="standard"
    )
    assert completed.returncode != 0
    assert "Premium" in completed.stderr
    assert calls == []


def test_waits_for_data_plane_access(tmp_path: Path) -> None:
    completed, outputs, calls = run_script(
        tmp_path, {"versions": [version(1)], "exportable": False, "list_failures": 3}
    )
    assert completed.returncode == 0, completed.stderr
    assert [c[:3] for c in calls].count(["keyvault", "certificate", "list"]) == 4
    assert outputs["thumbprint"] == "AB1"
