"""The admin API through ``AdminClient`` over HTTPS (in-process emulator), and its loopback rule."""

from __future__ import annotations

import base64

import pytest
import requests
from werkzeug.test import Client

from kvassert.emulator.admin_client import AdminRequestError
from kvassert.emulator.app import EmulatorApp
from kvassert.emulator.server import Emulator
from tests.certs import make_cert, rsa_key
from tests.emulator.conftest import BASE, new_state, self_signed_policy


def msi_token(emu: Emulator, **params: str) -> str:
    response = requests.get(
        emu.info.identity_endpoint,
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net", **params},
        headers={"X-IDENTITY-HEADER": emu.info.identity_header},
        verify=emu.info.ca_file,
        timeout=10,
    )
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def test_info_matches_the_startup_information(emu: Emulator) -> None:
    info = emu.admin.info()
    for field in ("vault_url", "tenant_id", "identity_endpoint", "identity_header", "admin_url"):
        assert info[field] == getattr(emu.info, field)
    assert info["principal_id"] == emu.info.principal_id


def test_register_application_with_certificates_and_vault_certificates(emu: Emulator) -> None:
    assert emu.state is not None
    emu.state.vault.certificates.create("vault-cert", self_signed_policy())
    emu.state.vault.certificates.create("vault-cert", None)  # two enabled versions
    uploaded = make_cert(cn="uploaded", key=rsa_key(2048, 3))
    app = emu.admin.register_application(
        "11111111-2222-3333-4444-555555555555",
        certificates=[uploaded.der, base64.b64encode(uploaded.der).decode()],
        vault_certificates=["vault-cert"],
        secrets=["s"],
        display_name="orders",
    )
    assert app["certificates"] == 4 and app["tenant_id"] == emu.info.tenant_id
    again = emu.admin.register_application("11111111-2222-3333-4444-555555555555")
    assert again["principal_id"] == app["principal_id"]  # replacing keeps the service principal
    with pytest.raises(AdminRequestError) as caught:
        emu.admin.register_application("x", vault_certificates=["missing"])
    assert caught.value.status == 404
    with pytest.raises(AdminRequestError, match="unknown application settings"):
        emu.admin.register_application("x", colour="blue")
    with pytest.raises(AdminRequestError, match="base64"):
        emu.admin.register_application("x", certificates=["***"])


def test_role_assignments_add_list_remove(emu: Emulator) -> None:
    admin = emu.admin
    principal = "aaaaaaaa-0000-0000-0000-000000000001"
    added = admin.assign_role(principal, "Key Vault Crypto User")
    assert added["role_id"] == "12338af0-0e69-4776-bea7-57ae8d297424"
    admin.assign_role(principal, data_actions=["Microsoft.KeyVault/vaults/certificates/read"])
    assert len(admin.role_assignments(principal)) == 2
    assert admin.remove_role(principal, "12338af0-0e69-4776-bea7-57ae8d297424") == 1
    assert admin.remove_role(principal) == 1
    assert admin.role_assignments(principal) == []
    for bad in ({"role": "Owner"}, {}, {"role": "Key Vault Reader", "data_actions": ["x"]}):
        with pytest.raises(AdminRequestError) as caught:
            admin.assign_role(principal, bad.get("role"), data_actions=bad.get("data_actions"))  # type: ignore[arg-type]
        assert caught.value.status == 400


def test_replacing_the_default_assignment_for_least_privilege(emu: Emulator) -> None:
    admin = emu.admin
    admin.remove_role(emu.info.principal_id)
    admin.assign_role(emu.info.principal_id, "Key Vault Secrets User")
    token = msi_token(emu)
    response = requests.post(
        f"{emu.info.vault_url}/keys/k/create",
        params={"api-version": "7.5"},
        json={"kty": "RSA"},
        headers={"Authorization": f"Bearer {token}"},
        verify=emu.info.ca_file,
        timeout=10,
    )
    assert response.status_code == 403
    assert response.json()["error"]["innererror"]["code"] == "ForbiddenByRbac"


def test_faults_add_list_clear_and_validation(emu: Emulator) -> None:
    admin = emu.admin
    fault = admin.add_fault("sign", status=429, retry_after=2, count=3)
    assert fault == {
        "route": "sign", "status": 429, "retry_after": 2, "count": 3, "latency_ms": 0,
        "drop": False, "body": None, "content_type": None,
    }  # fmt: skip
    admin.add_fault("token", status=503)
    assert [f["route"] for f in admin.faults()] == ["sign", "token"]
    assert admin.clear_faults("sign") == 1 and admin.clear_faults() == 1
    for kwargs in (
        {"route": "nope", "status": 500},
        {"route": "admin_reset", "status": 500},
        {"route": "sign", "status": 99},
        {"route": "sign", "status": 500, "count": 0},
        {"route": "sign"},
        {"route": "sign", "latency_ms": 10**6},
    ):
        with pytest.raises(AdminRequestError) as caught:
            admin.add_fault(**kwargs)  # type: ignore[arg-type]
        assert caught.value.status == 400


def test_drop_closes_the_connection_without_an_answer(emu: Emulator) -> None:
    emu.admin.add_fault("key_list", drop=True, count=1)
    url = f"{emu.info.vault_url}/keys"
    with pytest.raises(requests.ConnectionError):
        requests.get(url, params={"api-version": "7.5"}, verify=emu.info.ca_file, timeout=10)
    after = requests.get(url, params={"api-version": "7.5"}, verify=emu.info.ca_file, timeout=10)
    assert after.status_code == 401  # the next request is served again
    assert [(e["status"], e["fault"]) for e in emu.admin.log(operation="key_list")] == [
        (0, True),
        (401, False),
    ]


def test_clock_offset_moves_the_emulators_now(emu: Emulator) -> None:
    assert emu.state is not None
    result = emu.admin.set_clock(-120)
    assert result["offset_seconds"] == -120
    assert abs(emu.state.clock.now() - result["now"]) < 5
    with pytest.raises(AdminRequestError):
        emu.admin._call("POST", "/clock", {})


def test_log_filters_and_clears(emu: Emulator) -> None:
    token = msi_token(emu)
    for path in ("/keys", "/certificates"):
        requests.get(
            f"{emu.info.vault_url}{path}",
            params={"api-version": "7.5"},
            headers={"Authorization": f"Bearer {token}"},
            verify=emu.info.ca_file,
            timeout=10,
        )
    entries = emu.admin.log()
    assert [e["operation"] for e in entries] == ["identity", "key_list", "certificate_list"]
    assert {e["principal"] for e in entries} == {emu.info.principal_id}
    assert [e["path"] for e in emu.admin.log(operation="key_list")] == ["/keys"]
    assert emu.admin.log(principal="someone-else") == []
    emu.admin.clear_log()
    assert emu.admin.log() == []


def test_user_assigned_identity_gets_tokens(emu: Emulator) -> None:
    created = emu.admin.create_identity()
    token = msi_token(emu, client_id=created["client_id"])
    assert token.count(".") == 2
    assert emu.admin.log(operation="identity")[-1]["principal"] == created["principal_id"]


def test_reset_and_state_summary(emu: Emulator) -> None:
    assert emu.state is not None
    emu.state.vault.keys.import_key("k", rsa_key(2048, 1))
    emu.admin.register_application("app-1")
    summary = emu.admin.state()
    assert (summary["keys"], summary["applications"], summary["role_assignments"]) == (1, 1, 1)
    info = emu.admin.reset()
    assert info["tenant_id"] == emu.info.tenant_id
    assert info["identity_header"] == emu.info.identity_header
    summary = emu.admin.state()
    assert (summary["keys"], summary["applications"], summary["role_assignments"]) == (0, 0, 1)


@pytest.mark.parametrize("address", ["10.0.0.7", "192.168.1.2", "::ffff:10.0.0.1", "fe80::1"])
def test_admin_api_refuses_non_loopback_callers(address: str) -> None:
    client = Client(EmulatorApp(new_state(), base_url=BASE))
    response = client.post("/admin/reset", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "Forbidden"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_admin_api_answers_loopback_callers(address: str) -> None:
    client = Client(EmulatorApp(new_state(), base_url=BASE))
    assert client.get("/admin/state", environ_base={"REMOTE_ADDR": address}).status_code == 200


def test_admin_rejects_malformed_json() -> None:
    client = Client(EmulatorApp(new_state(), base_url=BASE))
    loopback = {"REMOTE_ADDR": "127.0.0.1"}
    response = client.post("/admin/role-assignments", data=b"{not json", environ_base=loopback)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "BadRequest"
