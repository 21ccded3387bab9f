# Two commands do everything on a fresh machine with Python 3.11+ and make:
#   make demo   - set up, then run 16 simulated weeks of the self-optimising loop
#   make test   - set up, then run the test suite
# Opt-in: make test-postgres - the production setup (deploy/, compose.yaml) on a real PostgreSQL.
# Set-up creates .venv from requirements.lock (exact, tested versions) once; later runs reuse it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
READY  := $(VENV)/.ready

.PHONY: setup demo test test-fast test-postgres ui serve screenshots clean

setup: $(READY)

$(READY): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check --no-cache-dir -r requirements.lock
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check --no-cache-dir --no-deps -e .
	@touch $@

demo: $(READY)
	$(BIN)/loop demo

test: $(READY)
	$(BIN)/python -m pytest

test-fast: $(READY)
	$(BIN)/python -m pytest -m "not slow"

# Installs Debian's postgresql package if no initdb is found (needs root), the servers' extra packages
# (requirements-server.txt) into .venv, then starts a throw-away cluster, the Prefect and MLflow servers
# with authentication, the worker and the scoring service on loopback, and runs a weekly cycle against them.
test-postgres: $(READY)
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "installing Debian's postgresql package"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends postgresql \
	    || { apt-get update -q && apt-get install -y -q --no-install-recommends postgresql; }; \
	fi
	$(BIN)/python -m pip install --quiet --quiet --disable-pip-version-check --no-cache-dir -r requirements-server.txt
	LOOP_TEST_POSTGRES=1 $(BIN)/python -m pytest -m postgres --durations=5 tests/test_postgres.py

ui: $(READY)
	$(BIN)/loop ui

serve: $(READY)
	$(BIN)/loop serve

# Opt-in: installs Debian's chromium (needs root and apt) and playwright into .venv (not in requirements.lock),
# runs the demo if its state is missing, and saves PNGs of the running UIs under docs/screenshots/.
screenshots: $(READY)
	@test -x /usr/bin/chromium || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)
	@$(BIN)/python -c 'import playwright' 2>/dev/null || $(BIN)/python -m pip install --quiet --disable-pip-version-check playwright
	$(BIN)/python tools/screenshots.py

clean:
	rm -rf .loop
