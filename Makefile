# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow test-reliability lint bench clean

# torch is pinned on the same pip line as everything that depends on it: a CPU wheel of that
# version is on local disk, anything else would pull a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/legodiffusion demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or timing"

test-reliability: $(STAMP)
	$(BIN)/python -m pytest -q -m "reliability and not slow"

lint: $(STAMP)
	$(BIN)/ruff check legodiffusion tests benchmarks
	$(BIN)/ruff format --check legodiffusion tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) .legodiffusion .pytest_cache
