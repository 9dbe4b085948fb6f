"""The FastAPI app under gunicorn with uvicorn workers, started with its App Service startup
command, configured by App Service-style app settings over ``appsettings.json``'s placeholders,
calling the protected API (also under gunicorn) with tokens that ``kvassert.aio`` gets through
the emulated Key Vault and Entra ID."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from _testing import (
    SAMPLES,
    Cloud,
    ServerProcess,
    closed_port,
    gunicorn,
    listening_socket,
    startup_command,
)

HERE = SAMPLES / "fastapi-async"
NEEDS = ("fastapi", "gunicorn", "httpx", "uvicorn", "uvicorn-worker")
CONCURRENT = 20


def test_startup_command_is_the_documented_one() -> None:
    command = startup_command("fastapi-async")
    assert command == (
        "gunicorn --bind=0.0.0.0:8000 --workers 2 --worker-class uvicorn_worker.UvicornWorker "
        "app:app"
    )
    assert f"`{command}`" in (HERE / "README.md").read_text()


@pytest.fixture
def start_app(cloud: Cloud, protected_api: ServerProcess) -> Iterator[Callable[..., ServerProcess]]:
    """Start the app as the client ``client_id`` with its startup command (``workers`` overrides
    the worker count, ``options`` are more gunicorn options, ``api_url`` replaces the protected
    API's URL, ``extra`` adds environment variables); stopped after the test."""
    started: list[ServerProcess] = []

    def start(
        client_id: str,
        *,
        workers: int | None = None,
        api_url: str | None = None,
        unset: tuple[str, ...] = (),
        options: tuple[str, ...] = (),
        **extra: str,
    ) -> ServerProcess:
        env = {**cloud.environment(client_id, api_url or protected_api.url), **extra}
        for name in unset:
            del env[name]
        args = gunicorn(startup_command("fastapi-async"), needs=NEEDS)
        if workers is not None:
            args[args.index("--workers") + 1] = str(workers)
        args[-1:-1] = options  # before the app
        server = ServerProcess(args, cwd=HERE, env=env)
        started.append(server)
        server.start()  # one worker answers /healthz; wait for the others' lifespan startup
        wait_for_output(server, "Application startup complete.", workers or 2)
        return server

    yield start
    for server in started:
        server.stop()


def wait_for_output(server: ServerProcess, text: str, count: int, timeout: float = 30) -> None:
    """Wait until ``text`` appears ``count`` times in what the server printed."""
    deadline = time.monotonic() + timeout
    while server.output().count(text) < count:
        assert time.monotonic() < deadline, f"no {count} x {text!r}:\n{server.output()}"
        time.sleep(0.05)


def get_all(url: str, count: int) -> list[httpx.Response]:
    """``count`` GETs of ``url`` at once, each on its own connection."""

    async def main() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(url) for _ in range(count))))

    return asyncio.run(main())


def json_of(answer: httpx.Response) -> object:
    try:
        return answer.json()
    except ValueError:
        raise AssertionError(f"{answer.status_code}: not JSON: {answer.text[:500]}") from None


def assert_clean_shutdown(app: ServerProcess, workers: int) -> None:
    """Stop the app with SIGTERM, as App Service does: gunicorn exits 0 once every worker ran
    the lifespan shutdown (closing its credential and HTTP client) without an error."""
    assert app.stop() == 0, app.output()
    output = app.output()
    assert output.count("Application shutdown complete.") == workers, output
    for trouble in ("Traceback", "Application shutdown failed", "Exception ignored"):
        assert trouble not in output, output


@pytest.mark.parametrize("workers", [2, 1], ids=["startup-command", "one-worker"])
def test_concurrent_requests_on_a_cold_app_cost_one_acquisition_per_worker(
    cloud: Cloud, start_app: Callable[..., ServerProcess], workers: int
) -> None:
    cloud.admin.clear_log()
    app = start_app(cloud.app_client_id, workers=None if workers == 2 else workers)
    assert cloud.operations() == {}  # starting the workers costs no call
    # A slow vault keeps the first acquisition in flight while all the requests arrive.
    cloud.admin.add_fault("sign", latency_ms=300)
    try:
        answers = get_all(f"{app.url}/", CONCURRENT)
    finally:
        cloud.admin.clear_faults("sign")
    assert [answer.status_code for answer in answers] == [200] * CONCURRENT, answers[0].text
    bodies = [json_of(answer) for answer in answers]
    assert all(body == bodies[0] for body in bodies)
    body = bodies[0]
    assert isinstance(body, dict)
    assert [item["name"] for item in body["items"]] == ["alpha", "beta", "gamma"]
    caller = body["caller"]
    assert caller["appid"] == cloud.app_client_id  # the API saw the sample app's token...
    assert caller["roles"] == [cloud.role]  # ...with the role it was granted
    assert caller["tid"] == cloud.info.tenant_id
    # The requests that missed a worker's cold cache together shared one acquisition: one
    # certificate read, one signature and one token per worker at most, and no secret read.
    tokens = cloud.operations(principal=cloud.app_principal_id).get("token", 0)
    vault = cloud.operations(principal=cloud.info.principal_id)
    assert 1 <= tokens <= workers
    assert vault.get("sign") == tokens
    assert vault.get("certificate_get") == tokens
    assert "secret_get" not in vault
    assert_clean_shutdown(app, workers)


def test_lifespan_shutdown_closes_the_credential(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    """After its graceful shutdown on SIGTERM, uvicorn re-raises the signal and the worker dies
    without running finalizers, so a leaked aiohttp session would go unreported there. A worker
    recycled by ``--max-requests`` exits normally instead: in Python's development mode an
    aiohttp session or connection left open by then is reported on stderr ("Unclosed client
    session", "Unclosed connector", "unclosed transport"), as it is when the lifespan handler
    does not close the credential."""
    app = start_app(
        cloud.app_client_id, workers=1, options=("--max-requests", "3"), PYTHONDEVMODE="1"
    )
    for _ in range(3):  # the token, the vault, the identity and the API: every session used
        assert httpx.get(f"{app.url}/", timeout=30).status_code == 200
    # gunicorn boots the replacement worker once the first one has exited (and reported).
    wait_for_output(app, "Application startup complete.", 2)
    output = app.output()
    assert "Maximum request limit of 3 exceeded" in output, output
    assert "Application shutdown complete." in output, output
    for leak in ("Unclosed", "unclosed transport", "Traceback", "Exception ignored"):
        assert leak not in output, output
    assert_clean_shutdown(app, 2)  # the first worker's shutdown, then the second's


def test_health_makes_no_calls(cloud: Cloud, start_app: Callable[..., ServerProcess]) -> None:
    # The "API" is a socket that listens and never accepts: any connection would wait in its
    # backlog.
    with listening_socket() as api:
        cloud.admin.clear_log()
        app = start_app(cloud.app_client_id, api_url=f"http://127.0.0.1:{api.getsockname()[1]}")
        for _ in range(5):
            answer = httpx.get(f"{app.url}/healthz", timeout=10)
            assert answer.status_code == 200
            assert json_of(answer) == {"status": "ok"}
        assert cloud.operations() == {}  # no Key Vault, identity or Entra call
        api.setblocking(False)
        with pytest.raises(BlockingIOError):
            api.accept()  # no call to the API
    assert_clean_shutdown(app, 2)


def test_api_refusal_is_a_502_that_says_why(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    client_id, _ = cloud.register_vault_client()  # the certificate, but no Data.Read
    app = start_app(client_id, workers=1)
    answer = httpx.get(f"{app.url}/", timeout=30)
    assert answer.status_code == 502
    body = json_of(answer)
    assert isinstance(body, dict)
    assert body["error"] == "the API answered 403"
    assert body["status"] == 403
    assert body["detail"]["error"] == "insufficient_scope"


def test_token_failure_is_a_502_with_the_aadsts_code(
    cloud: Cloud, start_app: Callable[..., ServerProcess]
) -> None:
    client_id, _ = cloud.register_client(roles=[cloud.role])  # the certificate not registered
    app = start_app(client_id, workers=1)
    answers = get_all(f"{app.url}/", 3)
    assert [answer.status_code for answer in answers] == [502] * 3
    body = json_of(answers[0])
    assert isinstance(body, dict)
    error = body["error"]
    assert error.startswith(f"no token for {cloud.api_uri}/.default: ")
    assert "AADSTS700027" in error
    assert "\n" not in error
    assert_clean_shutdown(app, 1)  # a credential whose requests failed closes cleanly too


def test_unreachable_api_is_a_502(cloud: Cloud, start_app: Callable[..., ServerProcess]) -> None:
    with closed_port() as sock:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = start_app(cloud.app_client_id, workers=1, api_url=url)
        answer = httpx.get(f"{app.url}/", timeout=30)
    assert answer.status_code == 502
    body = json_of(answer)
    assert isinstance(body, dict)
    assert body["error"].startswith(f"the API at {url} cannot be reached: ")


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
