# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first so that the torch requirement in pyproject is already met by a CPU build.
# GPU users: make setup TORCH_SPEC=torch  (or any build you like).
TORCH_SPEC ?= torch==2.13.0
OUT ?= demo_out
PYTEST_ARGS ?=
# Test files are spread over this many processes (pytest-xdist; a file stays on one worker, so
# module fixtures and the README's ordered blocks hold). TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto

.PHONY: setup demo test fuzz bench lint format clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,dask,eval,remote]'
	@touch $@

demo: setup
	OUT=$(OUT) PY=$(PY) bash scripts/demo.sh

test: setup
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The hostile-input suite with many more generated cases (make test runs 10 per strategy).
FUZZ_EXAMPLES ?= 200
fuzz: setup
	HOSTILE_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q tests/hostile $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/run_all.py

lint: setup
	$(VENV)/bin/ruff check engramctl tests benchmarks sample_data scripts
	$(VENV)/bin/ruff format --check engramctl tests benchmarks sample_data scripts
	$(VENV)/bin/lint-imports --no-cache

format: setup
	$(VENV)/bin/ruff format engramctl tests benchmarks sample_data scripts
	$(VENV)/bin/ruff check --fix engramctl tests benchmarks sample_data scripts

clean:
	rm -rf $(OUT) .pytest_cache build *.egg-info
