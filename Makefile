# odoo-watchdog: `make demo` runs the lab demo, `make test` the test suite.
# Both do all the set-up on a new Debian 12 machine (as root): Debian packages, virtualenv,
# Python packages.

VENV        ?= .venv
PYTHON      ?= python3
PY          := $(VENV)/bin/python
DEB_PACKAGES := prometheus prometheus-alertmanager haproxy nginx-light systemd python3-venv
PYTEST_ARGS ?=

.PHONY: demo test setup system-packages venv lint bench clean

demo: setup
	$(PY) -m watchdog.cli demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

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

bench: setup
	$(PY) bench/bench_rules_tick.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
