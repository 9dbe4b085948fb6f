"""Opt-in pytest fixtures: ``pytest_plugins = ["kvassert.emulator.pytest_plugin"]``.

- ``kvassert_emulator`` (session): one in-process ``Emulator`` for the whole run;
- ``kvassert_emulator_clean`` (function): the same emulator, reset before the test (keys,
  certificates, registrations, role assignments, faults, log, clock offset);
- ``kvassert_identity_env`` (function): the clean emulator with ``IDENTITY_ENDPOINT`` and
  ``IDENTITY_HEADER`` set, so ``ManagedIdentityCredential`` talks to it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvassert.emulator.server import Emulator


@pytest.fixture(scope="session")
def kvassert_emulator() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def kvassert_emulator_clean(kvassert_emulator: Emulator) -> Emulator:
    assert kvassert_emulator.state is not None
    kvassert_emulator.state.reset()
    return kvassert_emulator


@pytest.fixture
def kvassert_identity_env(
    kvassert_emulator_clean: Emulator, monkeypatch: pytest.MonkeyPatch
) -> Emulator:
    for name, value in kvassert_emulator_clean.info.identity_environ().items():
        monkeypatch.setenv(name, value)
    return kvassert_emulator_clean
