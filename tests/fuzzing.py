"""One knob for every fuzz-style property test: ``KVASSERT_FUZZ_EXAMPLES``.

``make test`` runs each fuzz target with the default (500 examples); ``make fuzz`` sets
``KVASSERT_FUZZ_EXAMPLES=20000``. Tests import ``fuzz_settings`` instead of hard-coding
``max_examples``, so the knob reaches all of them, and nothing here changes Hypothesis's global
profile (other tests keep their own settings).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

ENV_VAR = "KVASSERT_FUZZ_EXAMPLES"
DEFAULT_EXAMPLES = 500


def fuzz_examples(env: dict[str, str] | None = None) -> int:
    """The example count from ``KVASSERT_FUZZ_EXAMPLES`` (default 500); a bad value is an error,
    not a silent default, so a mistyped ``make fuzz`` cannot pass on a handful of examples."""
    text = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    if not text:
        return DEFAULT_EXAMPLES
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise ValueError(f"{ENV_VAR} must be a positive integer, got {text!r}")
    return int(text)


def fuzz_settings(share: float = 1.0) -> settings:
    """Hypothesis settings for a fuzz target: ``share`` of the configured example count (at least
    one). No deadline: the count, not the clock, bounds a run, and CI machines are slow."""
    return settings(
        max_examples=max(1, round(fuzz_examples() * share)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
