# Two commands matter on a fresh machine: `make run` (the main job) and `make test` (ruff, mypy, pytest).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck unit
install: $(VENV)/.installed

# torch is installed on its own, pinned: on CPU-only machines any other spec pulls several GB of CUDA builds.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: install
	$(BIN)/quasar validator --mock --rounds 3

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest

test: lint typecheck unit
