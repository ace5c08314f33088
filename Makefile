# The project's commands. From a fresh machine that has only Python 3.11 or 3.12:
#   make run    the demo: web, one Celery worker and an embedded Redis, data in var/
#   make test   the whole test suite (needs PostgreSQL and Redis on 127.0.0.1, as CI has)
# See docs/operations.md.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
BIN := $(VENV)/bin
# Refreshed whenever pyproject.toml changes, so `make install` is a no-op otherwise.
STAMP := $(VENV)/.installed
# Extra arguments for pytest, e.g. `make test PYTEST_ARGS='-k compose -x'`.
PYTEST_ARGS ?=
# When set, `make test` writes pytest's exit code there (.ci/run reports it as its own).
PYTEST_RC_FILE ?=
# Debian packages that some target needs: `chromium` for the browser tests (tests/browser drive it
# with Playwright through executable_path=/usr/bin/chromium; nothing downloads a browser build) and a
# font for it, so that the pages it renders and the screenshots it takes have readable text.
APT_PACKAGES ?= chromium fonts-dejavu-core

# The first of these that is a Python in the range pyproject.toml allows (>=3.11,<3.13).
# Evaluated only when the virtualenv is made; a pyenv shim for an inactive version fails the check.
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' >/dev/null 2>&1 \
	&& { echo $$p; break; }; done)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

# `make bench`: users in the benchmark database, and the size the naive approach is run at.
SIZE ?= 1000000
NAIVE_SIZE ?= 100000
# `make load`: concurrent simulated people and how long they act (see bench/load.py).
LOAD_USERS ?= 50
LOAD_DURATION ?= 3m

.PHONY: help install system-packages run test lint migrate clean bench load

help:
	@echo "make install   create $(VENV) and install the project with its test, dev, bench and load tools,"
	@echo "               and the Debian packages the tests need ($(APT_PACKAGES))"
	@echo "make run       the demo on http://127.0.0.1:$${PORT:-5000}/ (Ctrl-C stops it)"
	@echo "make test      the whole test suite; PYTEST_ARGS='...' passes arguments to pytest"
	@echo "make lint      ruff check and ruff format --check"
	@echo "make migrate   apply the database migrations (DATABASE_URL, or var/messaging.db)"
	@echo "make bench     fan-out benchmark (SIZE=1000000 NAIVE_SIZE=100000), results in bench/results/"
	@echo "make load      headless load run against the real stack (LOAD_USERS=50 LOAD_DURATION=3m),"
	@echo "               results in bench/results/load.md and load.json; zero errors required"
	@echo "make clean     remove var/ (the demo's data) and $(VENV)"

install: $(STAMP) system-packages

$(STAMP): pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
		echo "error: no Python 3.11 or 3.12 found (tried python3.11, python3.12, python3);" \
		     "install one, or pass PYTHON=/path/to/python3.x" >&2; exit 1; fi
	@if ! $(BIN)/python -c 'import sys' >/dev/null 2>&1; then \
		echo "creating $(VENV) with $$($(PYTHON) --version 2>&1) ($(PYTHON))"; \
		rm -rf $(VENV); \
		$(PYTHON) -m venv $(VENV) || { echo "error: '$(PYTHON) -m venv' failed;" \
			"on Debian or Ubuntu: apt-get install python3-venv" >&2; rm -rf $(VENV); exit 1; }; \
	fi
	$(BIN)/python -m pip install --quiet -e '.[test,dev,bench,load]'
	@touch $@

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# Only the Python install: the demo needs no Debian package (those are for the browser tests).
run: $(STAMP)
	$(BIN)/python scripts/run_demo.py

test: install system-packages
	@rc=0; $(BIN)/pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ -n "$(PYTEST_RC_FILE)" ]; then echo $$rc > "$(PYTEST_RC_FILE)"; fi; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): a failure" >&2; fi; \
	exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

migrate: install
	@mkdir -p "$${DATA_DIR:-var}"
	$(BIN)/alembic upgrade head

bench: install
	$(BIN)/python -m bench.run --size $(SIZE) --naive-size $(NAIVE_SIZE) $(BENCH_ARGS)

load: install
	$(BIN)/python -m bench.load --users $(LOAD_USERS) --duration $(LOAD_DURATION) $(LOAD_ARGS)

clean:
	rm -rf var $(VENV)
