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

.PHONY: demo test lint bench fuzz clean venv

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

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kvassert demo

test: $(STAMP) $(CHECKOV_STAMP)
	KVASSERT_CHECKOV=$(CHECKOV_VENV)/bin/checkov $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check kvassert tests samples
	$(VENV)/bin/ruff format --check kvassert tests samples
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
