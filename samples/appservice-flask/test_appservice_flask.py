"""The Flask app under gunicorn, started with its App Service startup command (two workers),
configured by App Service-style app settings over ``appsettings.json``'s placeholders, calling
the protected API (also under gunicorn) with tokens that kvassert gets through the emulated Key
Vault and Entra ID."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from _testing import SAMPLES, Cloud, ServerProcess, gunicorn, json_of, startup_command

HERE = SAMPLES / "appservice-flask"


def test_startup_command_is_the_documented_one() -> None:
    command = startup_command("appservice-flask")
    assert command == "gunicorn --bind=0.0.0.0:8000 --workers 2 app:app"
    assert f"`{command}`" in (HERE / "README.md").read_text()


@pytest.fixture
def start_app(cloud: Cloud, protected_api: ServerProcess) -> Iterator[Callable[..., ServerProcess]]:
    """Start the app as the client ``client_id``; stopped after the test."""
    started: list[ServerProcess] = []

    def start(client_id: str, *, unset: tuple[str, ...] = ()) -> ServerProcess:
        env = cloud.environment(client_id, protected_api.url)
        for name in unset:
            del env[name]
        server = ServerProcess(gunicorn(startup_command("appservice-flask")), cwd=HERE, env=env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def test_index_returns_the_api_data_fetched_with_a_vault_signed_token(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    cloud.admin.clear_log()
    app = start_app(cloud.app_client_id)
    assert cloud.operations() == {}  # building the credential at import costs no call
    with requests.Session() as session:
        bodies = [json_of(session.get(f"{app.url}/", timeout=30)) for _ in range(12)]
    assert all(body == bodies[0] for body in bodies)
    assert [item["name"] for item in bodies[0]["items"]] == ["alpha", "beta", "gamma"]
    caller = bodies[0]["caller"]
    assert caller["appid"] == cloud.app_client_id  # the API saw the sample app's token...
    assert caller["roles"] == [cloud.role]  # ...with the role it was granted
    assert caller["tid"] == cloud.info.tenant_id
    # Each worker that served a request signed once and got one token; the rest were cache
    # hits. The vault's secret (the private key of an exportable certificate) is never read.
    tokens = cloud.operations(principal=cloud.app_principal_id).get("token", 0)
    vault = cloud.operations(principal=cloud.info.principal_id)
    assert 1 <= tokens <= 2
    assert vault.get("sign") == tokens
    assert vault.get("certificate_get") == tokens
    assert "secret_get" not in vault


def test_health_answers_without_a_token(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    app = start_app(cloud.app_client_id)
    cloud.admin.clear_log()
    answer = requests.get(f"{app.url}/healthz", timeout=10)
    assert answer.status_code == 200
    assert json_of(answer) == {"status": "ok"}
    assert cloud.operations() == {}


def test_api_refusal_is_a_502_that_says_why(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    client_id, _ = cloud.register_vault_client()  # the certificate, but no Data.Read
    app = start_app(client_id)
    answer = requests.get(f"{app.url}/", timeout=30)
    assert answer.status_code == 502
    body = json_of(answer)
    assert body["error"] == "the API answered 403"
    assert body["status"] == 403
    assert body["detail"]["error"] == "insufficient_scope"


def test_token_failure_is_a_502_with_the_aadsts_code(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    client_id, _ = cloud.register_client(roles=[cloud.role])  # the certificate not registered
    app = start_app(client_id)
    answer = requests.get(f"{app.url}/", timeout=30)
    assert answer.status_code == 502
    error = json_of(answer)["error"]
    assert error.startswith(f"no token for {cloud.api_uri}/.default: ")
    assert "AADSTS700027" in error
    assert "\n" not in error


@pytest.mark.parametrize(
    ("unset", "message"),
    [
        ("AzureAd__TenantId", "AzureAd:TenantId: found 'Enter_the_Tenant_Id_Here'; expected"),
        ("DOWNSTREAM_API_URL", "set DOWNSTREAM_API_URL (the protected API's base URL)"),
    ],
    ids=["AzureAd__TenantId", "DOWNSTREAM_API_URL"],
)
def test_missing_app_setting_stops_the_workers_with_its_name(
    cloud: Cloud, start_app: Callable[..., ServerProcess], unset: str, message: str
) -> None:
    with pytest.raises(RuntimeError, match="exited with") as failure:
        start_app(cloud.app_client_id, unset=(unset,))
    assert message in str(failure.value)
