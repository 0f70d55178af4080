# odoo-watchdog: `make demo` runs the lab demo, `make test` the test suite.
# Both do all the set-up on a new Debian 12 machine (as root): Debian packages, virtualenv,
# Python packages.

VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
DEB_PACKAGES := prometheus prometheus-alertmanager haproxy nginx-light systemd python3-venv postgresql-15 chromium
PYTEST_ARGS ?=

.PHONY: demo test setup system-packages venv docker lint bench clean

demo: setup
	$(PY) -m watchdog.cli demo

# The lint first: a type error fails fast, before the lab tests start.
test: setup lint docker
	$(PY) -m pytest $(PYTEST_ARGS)

# dockerd (--bridge=none --iptables=false) and the busybox image for the log tests; if
# docker cannot run here, those tests skip and say why, the rest still runs.
docker:
	@bash .ci/setup-docker.sh || echo "warning: dockerd unavailable; docker log tests will skip"

setup: system-packages venv

# apt-get only when a package is missing, so a second `make test` starts at once.
system-packages:
	@if ! dpkg -s $(DEB_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(DEB_PACKAGES)"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(DEB_PACKAGES); \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check watchdog tests bench
	$(VENV)/bin/mypy watchdog

bench: setup docker
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
