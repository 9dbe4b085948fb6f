# The two README commands (`make demo`, `make test`) must work on a fresh machine with only
# Python 3.10+, so every target depends on the virtualenv stamp, which installs what is needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov pins packaging<24 and pycep-parser 0.5 (which cannot parse Bicep `extension` lines),
# both at odds with the test tools, so it lives in a tool venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

# Debian packages the tests and benchmarks start as real processes (on 127.0.0.1 only).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint bench fuzz soak clean venv system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet 'checkov==3.3.30'
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --no-deps 'pycep-parser==0.7.1'
	touch $(CHECKOV_STAMP)

system-deps:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kvassert demo

test: $(STAMP) $(CHECKOV_STAMP) system-deps
	KVASSERT_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check kvassert tests samples bench
	$(VENV)/bin/ruff format --check kvassert tests samples bench
	$(VENV)/bin/mypy

# The property tests at full size (every test that reads KVASSERT_FUZZ_EXAMPLES).
fuzz: $(STAMP) $(CHECKOV_STAMP) system-deps
	KVASSERT_FUZZ_EXAMPLES=20000 KVASSERT_CHECKOV=$(CHECKOV_VENV)/bin/checkov \
		$(PY) -m pytest -q -p no:randomly tests -k "fuzz or propert or pinning"

# Load and soak at full size (64 threads x 5000 calls; 24 simulated hours).
soak: $(STAMP) system-deps
	KVASSERT_LOAD_SCALE=full $(PY) -m pytest -q tests/e2e -k "load or soak"

bench: $(STAMP) system-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
