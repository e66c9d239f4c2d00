# knunu: every target creates .venv itself when needed. `make` alone lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
INSTALLER ?= uv
UV_VERSION := 0.13.9
STAMP     := $(VENV)/.knunu-installed-$(INSTALLER)
CONFIG    ?=
CLUSTER   ?= local
CONFIG_ARG := $(if $(CONFIG),--config $(CONFIG),)
WORKSPACE ?=
# pytest-xdist workers for make test: one a core the process may use (nproc), at most 4 (each
# holds up to 4 GiB; 24 GiB machines)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: help setup analysis simulate process train fit reinterpret cluster scheduler-up scheduler-down py313 test lint format bench clean distclean

help: ## list the targets (default)
	@echo "knunu make targets:"
	@grep -E '^[a-z][a-z0-9-]*:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | awk -F'\t' '{printf "  %-10s %s\n", $$1, $$2}'
	@echo "variables: CONFIG=<yaml> CLUSTER=local|slurm|htcondor WORKSPACE=<pyhf json> INSTALLER=uv|pip TEST_WORKERS=<n>"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(INSTALLER),pip)
	$(BIN)/python -m pip install --quiet --only-binary=pythia8mc -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
else
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --only-binary pythia8mc -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --no-deps -e .
endif
	@rm -f $(VENV)/.knunu-installed-*
	@touch $@

setup: $(STAMP) ## create .venv and install knunu with the locked dependencies

analysis: $(STAMP) ## run the default analysis end to end on a local Dask cluster
	$(BIN)/knunu run --cluster $(CLUSTER) $(CONFIG_ARG)

simulate: $(STAMP) ## generate MC and pseudo-data ntuples
	$(BIN)/knunu simulate --cluster $(CLUSTER) $(CONFIG_ARG)

process: $(STAMP) ## run the ITA/HTA processors into histograms
	$(BIN)/knunu process --cluster $(CLUSTER) $(CONFIG_ARG)

train: $(STAMP) ## train the BDTs
	$(BIN)/knunu train --cluster $(CLUSTER) $(CONFIG_ARG)

fit: $(STAMP) ## fit a workspace (WORKSPACE=file, default: the run's or the configured one)
	$(BIN)/knunu fit $(CONFIG_ARG) $(if $(WORKSPACE),--workspace $(WORKSPACE),)

reinterpret: $(STAMP) ## WET couplings and B+ -> K+ X limits on the published likelihood and the run's own
	$(BIN)/knunu reinterpret $(CONFIG_ARG)

cluster: $(STAMP) ## start the CLUSTER backend, run a check task, print its addresses
	$(BIN)/knunu cluster --cluster $(CLUSTER) $(CONFIG_ARG)

scheduler-up: $(STAMP) ## start a single-node SLURM or a personal HTCondor pool here (CLUSTER=slurm|htcondor, root)
	@test "$(CLUSTER)" != local || { echo "CLUSTER=slurm or CLUSTER=htcondor"; exit 2; }
	KNUNU_PYTHON=$(abspath $(BIN))/python bash cluster/scripts/$(CLUSTER).sh up
	@bash cluster/scripts/$(CLUSTER).sh env

scheduler-down: ## stop the daemons scheduler-up started (CLUSTER=slurm|htcondor)
	@test "$(CLUSTER)" != local || { echo "CLUSTER=slurm or CLUSTER=htcondor"; exit 2; }
	bash cluster/scripts/$(CLUSTER).sh down

# the batch schedulers' tests (and the chaos run, marker alone) run alone: their workers are
# jobs that must start within 120 s (one missed it with the other core busy, stop 42)
test: $(STAMP) ## lint, then the whole test suite (doctests included): one xdist worker a core, the batch schedulers' tests and the chaos run alone after
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n $(TEST_WORKERS) -m "not slurm and not htcondor and not alone"
	$(BIN)/pytest -m "slurm or htcondor or alone"

py313: $(STAMP) ## install and run the tiny analysis with Debian 13's Python 3.13 (chroot, root), compare with this one
	KNUNU_PYTHON=$(BIN)/python cluster/scripts/python313.sh

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## run the benchmarks against their peers (results in benchmarks/results)
	$(BIN)/python benchmarks/bench_simulation.py
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_ita.py
	$(BIN)/python benchmarks/bench_layouts.py
	$(BIN)/python benchmarks/bench_reuse.py
	$(BIN)/python benchmarks/bench_cluster.py --start
	$(if $(filter pip,$(INSTALLER)),$(BIN)/python -m pip install --quiet,$(BIN)/uv pip install --quiet --python $(BIN)/python) --no-deps redistpy==2.0.0 numexpr==2.14.2
	$(BIN)/python benchmarks/bench_reinterpret.py
	@if test -d runs/default/ntuples; then $(BIN)/python benchmarks/bench_rdataframe.py --run runs/default; \
	else echo "bench_rdataframe.py: needs a finished runs/default (make analysis)"; fi
	@if test -d runs/default/models; then $(BIN)/python benchmarks/bench_targeting.py --run runs/default; \
	else echo "bench_targeting.py: needs a finished runs/default (make analysis)"; fi

clean: ## remove run outputs, build files and caches (keeps .venv)
	rm -rf runs build dist *.egg-info benchmarks/results .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean ## also remove .venv
	rm -rf $(VENV)
