# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Each bootstraps .venv from pyproject.toml by itself (about 6 GB: torch is the CUDA build, which
# runs on a CPU; open_clip needs torchvision, and only the CUDA torch has a matching torchvision).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo example-repository test lint test-unit test-integration bench bench-smoke soak clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP) example-repository
	$(VENV)/bin/headserve demo --out demo-out

# model_repository/ commits the example repository's configs (a test checks they equal the
# generator's); this generates it afresh and copies in its weights, the git-ignored version directories.
example-repository: $(STAMP)
	rm -rf build/example-repository
	$(VENV)/bin/headserve export example --repo build/example-repository > /dev/null
	cd build/example-repository && for v in */[0-9]*; do \
		rm -rf ../../model_repository/$$v && cp -r $$v ../../model_repository/$$v; done

test: lint
	$(PY) -m pytest -q tests

# Types are checked on the torch-free modules: what the client and the drift job run, the contract, the app's
# torch-free commands and the benchmarks' shared parts; and on the encoder engines (export/engine.py).
TYPED := -p headserve.client -m headserve.contract -m headserve.artifact -m headserve.class_names \
	-m headserve.drift -m headserve.drift_report -m headserve.encoders -m headserve.errors -m headserve.fsutil \
	-m headserve.lockfile -m headserve.preprocess -m headserve.processes -m headserve.server \
	-m headserve.triton_flags -m headserve.yolo -m headserve.app.classify -m headserve.app.drift -m headserve.app.cli \
	-m headserve.app.soak -m headserve.app.results_file -m headserve.app.bench.__main__ -m headserve.app.bench.timing \
	-m headserve.app.bench.repository -m headserve.export.engine -m headserve.app.inventory -m headserve.export.lifecycle -m headserve.regions -m headserve.ray_cluster -m headserve.app.ray_classify
lint: $(STAMP)
	$(VENV)/bin/ruff check headserve train export client app tests
	rm -rf build/typecheck && mkdir -p build/typecheck/headserve
	ln -s $(CURDIR)/headserve/*.py build/typecheck/headserve/
	for p in train export client app; do ln -s $(CURDIR)/$$p build/typecheck/headserve/$$p; done
	cd build/typecheck && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml $(TYPED)

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

# Every benchmark module (headserve.app.bench's BENCHMARKS), on real-size encoder architectures with random
# weights: tens of minutes on 2 cores. bench-smoke runs the same modules on the tiny twins with short runs, in
# minutes; it only shows that each benchmark runs, and its numbers say nothing about real encoders.
bench: $(STAMP)
	$(PY) -m headserve.app.bench --out bench-out

bench-smoke: $(STAMP)
	$(PY) -m headserve.app.bench --smoke --out bench-out-smoke

# A bounded soak on loopback: 16 clients, two heads, SOAK_SECONDS (default 60), then it stops by itself
# and prints requests, errors, p50/p99 latency and the server's RSS at start and end.
SOAK_SECONDS ?= 60
soak: $(STAMP)
	$(VENV)/bin/headserve soak --clients 16 --seconds $(SOAK_SECONDS)

clean:
	rm -rf demo-out bench-out bench-out-smoke .pytest_cache
