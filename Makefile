# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates/updates the virtual environment in .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.xanestrack-installed

.PHONY: demo test lint bench clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first, pinned to the CPU build available locally, so that no later
# requirement pulls a different (CUDA) build.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xanestrack demo --out demo_output --overwrite

lint: $(STAMP)
	$(VENV)/bin/ruff format --check src tests benchmarks tools
	$(VENV)/bin/ruff check src tests benchmarks tools

# the suite in one process per core (at most 4), a test file's tests together in one of them
test: lint
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

bench: $(STAMP)
	$(PY) benchmarks/bench_pipeline.py

clean-venv:
	rm -rf $(VENV)
