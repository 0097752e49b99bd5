# Every target sets up what it needs: a fresh clone runs `make train` or `make test` directly.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup train test test-slow lint wheel-check clean

setup: $(STAMP)

# torch is pinned in constraints.txt. From the package index that pin is the CUDA build on Linux
# (several GB); on a machine without a GPU, `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu`
# takes PyTorch's CPU-only build from PyTorch's own index first.
TORCH_INDEX ?=
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install --quiet -c constraints.txt --index-url $(TORCH_INDEX) torch)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

## Train the reference model (20 epochs) into runs/reference and report its test accuracy.
train: $(STAMP)
	$(BIN)/mnist-digits train --recipe reference --out runs/reference

## The fast test suite (about 10 minutes on 2 CPU cores).
test: $(STAMP)
	$(BIN)/python -m pytest

## Only the slow tests: a full reference training run (the fast ones are `make test`).
test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src

## Build the wheel, install it in a clean environment, and evaluate the shipped model from it.
wheel-check: $(STAMP)
	bash .ci/wheel-check

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
