# Two commands do everything on a fresh machine:
#   make run    set up .venv, then train + evaluate the default experiment (python run.py)
#   make test   set up .venv, then run the test suite (slow tests excluded; `make test-slow` runs them)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-slow lint fixtures lock

# every package at the version pinned in requirements.lock (refresh it on purpose: `make lock`)
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel on local disk; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python run.py $(ARGS)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" $(ARGS)

test-slow: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# re-resolve pyproject.toml's ranges in a throw-away venv and rewrite requirements.lock
lock:
	bash scripts/lock.sh

fixtures:
	bash scripts/official/make_fixtures.sh
