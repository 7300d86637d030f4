# Two entry points on a fresh Debian machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
CONFIG ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test unit interop system-deps test-system-deps bench lock clean

# Debian packages the server needs: Python 3.11+ with venv.
system-deps:
	@$(PYTHON) -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3 python3-venv python3-dev; }

# ... and what the tests need on top: Node.js with npm for the official JavaScript clients, and a
# real redis-server for the cluster tests (the tests start and stop their own servers).
test-system-deps: system-deps
	@command -v node >/dev/null && command -v npm >/dev/null && command -v redis-server >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm redis-server; }

$(VENV)/.installed: setup.cfg pyproject.toml
	$(MAKE) system-deps
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e . --config-settings editable_mode=compat
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(VENV)/bin/pip install --quiet -r requirements-test.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	$(MAKE) test-system-deps
	npm ci --no-audit --no-fund
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/twistd --nodaemon --pidfile= soketify $(if $(CONFIG),--config $(CONFIG))

unit: test-system-deps $(VENV)/.test-installed
	$(VENV)/bin/python -m pytest -q tests --ignore=tests/interop

interop: test-system-deps $(VENV)/.test-installed node_modules/.installed
	node --test --test-concurrency=1 tests/interop/

test: unit interop

bench: $(VENV)/.test-installed node_modules/.installed
	$(VENV)/bin/python bench/run.py

# Re-pin: requirements.txt (runtime, for the Debian package) and requirements-test.txt (tests).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet . && \
	  { echo "# Pinned runtime dependencies (used by the Debian package). Regenerate with: make lock"; \
	    .lock-venv/bin/pip freeze | grep -iv '^soketify'; } > requirements.txt
	.lock-venv/bin/pip install --quiet '.[test]' && \
	  { echo "# Pinned Python packages for running the tests (make test). Regenerate with: make lock"; \
	    .lock-venv/bin/pip freeze | grep -iv '^soketify'; } > requirements-test.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) node_modules _trial_temp .pytest_cache .lock-venv debian/soketify debian/.debhelper
