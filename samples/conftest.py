"""Fixtures shared by the samples' tests: one emulator process (``python -m kvassert.emulator``)
for the session, prepared by ``emulator_setup.prepare`` exactly as the samples' READMEs have
you prepare it (a non-exportable vault certificate, the API and client app registrations, least
privilege for the managed identity) plus a second API, ``api://kvassert-samples-other``; and the
protected API running under gunicorn."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from _testing import OTHER_API_URI, SAMPLES, Cloud, ServerProcess, gunicorn, startup_command
from emulator_setup import ROLE, prepare

from kvassert.emulator import EmulatorProcess


@pytest.fixture(scope="session")
def cloud() -> Iterator[Cloud]:
    with EmulatorProcess() as emulator:
        assert emulator.info is not None and emulator.admin is not None
        prepared = prepare(emulator.info, emulator.admin)
        emulator.admin.register_application(
            str(uuid.uuid4()), identifier_uris=[OTHER_API_URI], app_roles=[ROLE]
        )
        yield Cloud(emulator.info, emulator.admin, prepared)


@pytest.fixture
def start_protected_api(cloud: Cloud) -> Iterator[Callable[..., ServerProcess]]:
    """Start the protected API with its App Service startup command (``workers`` overrides the
    worker count); every server started is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*, workers: int | None = None, **extra: str) -> ServerProcess:
        args = gunicorn(startup_command("protected-api"))
        if workers is not None:
            args[args.index("--workers") + 1] = str(workers)
        server = ServerProcess(
            args, cwd=SAMPLES / "protected-api", env={**cloud.api_environment(), **extra}
        )
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def protected_api(cloud: Cloud) -> Iterator[ServerProcess]:
    """The protected API as deployed (its startup command), for the whole session."""
    server = ServerProcess(
        gunicorn(startup_command("protected-api")),
        cwd=SAMPLES / "protected-api",
        env=cloud.api_environment(),
    )
    with server:
        yield server
