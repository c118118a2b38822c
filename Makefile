# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv from pyproject.toml by itself (about 6 GB: torch is the CUDA build, which
# runs on a CPU; open_clip needs torchvision, and only the CUDA torch has a matching torchvision).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit test-integration bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/headserve demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q tests

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

bench: $(STAMP)
	$(PY) -m headserve.bench --out bench-out

clean:
	rm -rf demo-out bench-out .pytest_cache
