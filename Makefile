# Two entry points on a fresh Debian machine: `make run` and `make test`.
VENV ?= .venv
PYTHON ?= python3
CONFIG ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test unit interop system-deps test-system-deps bench lock clean package package-deps package-test package-test-deps

# Debian packages the server needs: Python 3.11+ with venv.
system-deps:
	@$(PYTHON) -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y python3 python3-venv python3-dev; }

# ... and what the tests need on top: Node.js with npm for the official JavaScript clients, a
# real redis-server for the cluster tests (the tests start and stop their own servers), and
# Debian's Chromium for the debug console's browser tests (driven by playwright-core from npm).
test-system-deps: system-deps
	@command -v node >/dev/null && command -v npm >/dev/null && command -v redis-server >/dev/null \
	  && command -v chromium >/dev/null || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y nodejs npm redis-server chromium; }

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

# The Debian package: `make package` builds dist/deb/soketify_<version>_<arch>.deb from a copy of the
# files a clean clone holds (tracked and new files, nothing git ignores), running the unit tests
# against the built venv (DEB_BUILD_OPTIONS=nocheck skips them). `make package-test` then checks it
# with lintian, installs it on this machine, runs and reloads the service, and purges it
# (tests/package/run.sh; it needs root).
DEB_DIR := dist/deb

# Build dependencies from debian/control, through apt when any is missing.
package-deps:
	@{ command -v dpkg-checkbuilddeps >/dev/null && dpkg-checkbuilddeps >/dev/null 2>&1; } || \
	  { $(SUDO) apt-get update && $(SUDO) apt-get install -y dpkg-dev && $(SUDO) apt-get build-dep -y ./; }

package: package-deps
	rm -rf $(DEB_DIR) && mkdir -p $(DEB_DIR)/soketify
	git ls-files -z --cached --others --exclude-standard | \
	  tar --null --files-from=- --ignore-failed-read -cf - | tar -xf - -C $(DEB_DIR)/soketify
	cd $(DEB_DIR)/soketify && dpkg-buildpackage -us -uc -b
	@ls -l $(DEB_DIR)/*.deb

package-test-deps:
	@command -v lintian >/dev/null || { $(SUDO) apt-get update && $(SUDO) apt-get install -y lintian; }

package-test: package package-test-deps node_modules/.installed
	$(SUDO) tests/package/run.sh $(DEB_DIR)
