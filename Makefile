# The README's commands. `make serve` and `make test` each set up what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= graft-data
PORT ?= 50051
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup system-deps serve test check lint format proto demo-data clean

setup: $(VENV)/.installed

# client/ (the SDK) and devtools/ (fixtures for tests, bench/ and scripts/; never a
# dependency of the service) are distributions of their own, installed beside it.
$(VENV)/.installed: pyproject.toml client/pyproject.toml devtools/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e client -e devtools -e '.[dev,more-weights]'
	touch $@

# Debian packages the tests use: real image data for the tests and the walk-through
# (dataset-fashion-mnist, MIT), a real Prometheus server + promtool (prometheus) and a
# real PostgreSQL server for the PostgreSQL store's tests (postgresql; Debian keeps its
# initdb off PATH, under /usr/lib/postgresql/<version>/bin; tests/postgres.py finds it),
# and a real browser that renders the model reports' HTML page headless (chromium).
SYSTEM_PACKAGES := dataset-fashion-mnist prometheus postgresql chromium
HAVE_INITDB := { ls /usr/lib/postgresql/*/bin/initdb || command -v initdb; } >/dev/null 2>&1
system-deps:
	@if [ ! -d $(FASHION_MNIST) ] || ! command -v promtool >/dev/null || ! $(HAVE_INITDB) \
	  || ! command -v chromium >/dev/null; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(SYSTEM_PACKAGES); \
	fi

serve: setup system-deps demo-data
	$(VENV)/bin/graft serve --port $(PORT) --data-dir $(DATA_DIR) --data-root $(CURDIR)/$(DATA_DIR)/datasets

demo-data: setup system-deps
	$(PY) scripts/make_demo_data.py --out $(DATA_DIR)/datasets

proto: setup
	$(PY) scripts/gen_protos.py

check: setup
	$(PY) scripts/gen_protos.py --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# GRAFT_TEST_POSTGRES: a missing PostgreSQL fails its tests here instead of skipping them.
test: setup system-deps check
	GRAFT_TEST_POSTGRES=1 $(PY) -m pytest

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DATA_DIR)
