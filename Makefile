# Two commands matter: `make serve` and `make test`. Everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The Pythons pyproject.toml's requires-python admits; CI tests each (.github/workflows/ci.yml).
SUPPORTED_PYTHONS := 3.11 3.12 3.13
# The first of them on PATH makes the venv; override with PYTHON=python3.x or a path. No fallback to
# plain python3: another version would fail later and less clearly (see $(VENV)/.made below). Looked
# up now, before PATH gains the venv's bin/ below, so that a half-made venv's python is never taken.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(shell command -v python$(v) 2>/dev/null)))
endif
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
HOST ?= 127.0.0.1
PORT ?= 3000
SEED ?= 42
DATA ?= data/breast-cancer.csv
# The candidate for `make promote`; breast_cancer:latest is the store's newest model.
MODEL ?= breast_cancer:latest
SERVICE := bento.service:BreastCancerClassifier

# The model store is project-local unless the caller points BENTOML_HOME elsewhere.
export BENTOML_HOME ?= $(CURDIR)/.bentoml
# No usage-tracking calls from developer machines or CI.
export BENTOML_DO_NOT_TRACK ?= true
# Tools that are not Python packages (helm) live here; see scripts/install-tools.sh.
export PATH := $(CURDIR)/.tools/bin:$(abspath $(VENV))/bin:$(PATH)

.PHONY: help install tools data train model serve lint check test image e2e bench lock clean promote import-model \
	promoted predict check-venv-python

help:
	@echo "Two commands matter:"
	@echo "  make serve         train if the store has no model, then serve on http://$(HOST):$(PORT)"
	@echo "  make test          install what the tests need, lint, and run the whole suite"
	@echo "Building blocks:"
	@echo "  make install       the virtual environment ($(VENV)) from requirements/dev.txt"
	@echo "  make tools         install, plus helm, checkov and the chart README generator in .tools/"
	@echo "  make data          write $(DATA) from scikit-learn's bundled copy"
	@echo "  make train         (re)train on $(DATA) with SEED and save to the model store"
	@echo "  make promote MODEL=breast_cancer:<version>  compare with the promoted model; promote or refuse"
	@echo "  make import-model  import the registry's promoted model into the model store"
	@echo "  make promoted      the promoted model and the promotion history"
	@echo "  make image         build the bento and its container image (MODEL_TAG=<tag> picks the model)"
	@echo "  make e2e           the chart on a kind cluster: install, load during a model upgrade, rollback"
	@echo "  make bench         benchmark the service against a hand-written app and the limit"
	@echo "  make check         the inner loop: lint and the tests that need nothing outside the venv (< 2 min)"
	@echo "  make predict DATA=rows.csv  score a CSV with the running service (python -m client)"
	@echo "  make lint          ruff check and ruff format --check"
	@echo "  make lock          re-pin requirements/*.txt from requirements/*.in"
	@echo "  make clean         remove the venv, tools, model store, data, reports and caches"
	@echo "Variables (make VAR=value ...):"
	@echo "  PYTHON=$(PYTHON)  VENV=$(VENV)  HOST=$(HOST)  PORT=$(PORT)  SEED=$(SEED)  DATA=$(DATA)"
	@echo "  BENTOML_HOME=$(BENTOML_HOME)  MODEL_TAG, MODEL, REGISTRY: see docs/training.md"

# $(call python_version,INTERPRETER): shell text printing its major.minor version, empty if it does not run.
python_version = $$($(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)

# A venv counts as made once pip is in it: `python -m venv` writes bin/python before it installs pip,
# so a run that failed (no venv module: Debian's python3-venv) or was interrupted leaves a venv that
# only looks made. Such a venv is made again; one with pip in it but no stamp (made by hand) is kept.
$(VENV)/.made:
	@if [ -x $(PY) ] && $(PY) -c 'import pip' 2>/dev/null; then touch $@; exit 0; fi; \
	if [ -z "$(PYTHON)" ]; then \
		echo "make: none of python3.11, python3.12, python3.13 is on PATH: install one, or pass PYTHON=/path/to/python3.x" >&2; \
		exit 1; \
	fi; \
	version=$(call python_version,$(PYTHON)); case " $(SUPPORTED_PYTHONS) " in *" $$version "*) ;; *) \
		echo "make: PYTHON=$(PYTHON) is $${version:+Python }$${version:-not a Python that runs}; this project supports Python $(SUPPORTED_PYTHONS)" >&2; \
		exit 1;; esac; \
	if ! $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null; then \
		echo "make: $(PYTHON) cannot make a virtual environment (no ensurepip); on Debian or Ubuntu: sudo apt-get install python$$version-venv" >&2; \
		exit 1; \
	fi; \
	if [ -e $(VENV) ]; then \
		if [ ! -f $(VENV)/pyvenv.cfg ]; then \
			echo "make: $(VENV) exists and is not a virtual environment: move it away, or pass VENV=<another directory>" >&2; \
			exit 1; \
		fi; \
		echo "make: $(VENV) has no pip (an earlier run stopped halfway): making it again"; \
		rm -rf $(VENV); \
	fi; \
	echo "$(PYTHON) -m venv $(VENV)"; \
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }; \
	touch $@

# An existing venv is used whatever PYTHON says; when PYTHON is given explicitly (command line or
# environment, as CI's version matrix does) and the venv has another version, stop instead.
check-venv-python: | $(VENV)/.made
ifneq ($(filter command line environment,$(origin PYTHON)),)
	@want=$(call python_version,$(PYTHON)); have=$(call python_version,$(PY)); [ "$$want" = "$$have" ] || { \
		echo "make: $(VENV) is Python $$have but PYTHON=$(PYTHON) is $${want:-not a Python that runs}: rm -rf $(VENV), or pass VENV=<another directory>" >&2; \
		exit 1; }
endif

$(UV): | $(VENV)/.made
	$(PY) -m pip install --quiet "uv==0.13.9"

# The stamp makes the install incremental: it re-runs only when the lock changes. Bytecode is
# compiled at install time because the service's cold start is mostly imports (5 s instead of 11 s).
$(VENV)/.installed: requirements/dev.txt | $(UV) check-venv-python
	$(UV) pip sync --quiet --compile-bytecode --python $(PY) requirements/dev.txt
	@touch $@

install: $(VENV)/.installed

tools: install
	bash scripts/install-tools.sh

data: install
	$(PY) -m training.dataset --output $(DATA)

train: install
	$(PY) -m training.train --data $(DATA) --seed $(SEED)

# Train only when the store has no breast_cancer model yet.
model: install
	@$(VENV)/bin/bentoml models get breast_cancer:latest >/dev/null 2>&1 \
		|| $(PY) -m training.train --data $(DATA) --seed $(SEED)

serve: model
	$(VENV)/bin/bentoml serve $(SERVICE) --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: tools lint
	$(PY) -m pytest

# The inner loop: no test that needs a program outside the venv (helm, podman, promtool, wrk: their
# folders are left out) or is marked slow. Elsewhere, a test that needs such a program (chromium,
# curl) or takes more than a few seconds carries @pytest.mark.slow. `make test` runs everything.
CHECK_LEAVES_OUT := tests/charts tests/k8s tests/container tests/monitoring tests/bench tests/workflows/test_e2e_kind.py
check: lint
	$(PY) -m pytest -m "not slow" $(addprefix --ignore=,$(CHECK_LEAVES_OUT))

# Scores DATA with the service at HOST:PORT (make serve), beside it as <name>.predictions.csv.
predict: install
	$(PY) -m client $(DATA) --url http://$(HOST):$(PORT)

image: model
	bash scripts/build-image.sh

# The registry (registry/, or REGISTRY=DIR) holds the promoted model; see training/promote.py.
promote: install
	$(PY) -m training.promote promote $(MODEL) --data $(DATA)

import-model: install
	$(PY) -m training.promote import

promoted: install
	$(PY) -m training.promote status

# The chart and two images on a kind cluster (Docker, kind, kubectl, jq; see docs/ci-cd.md).
e2e: tools
	bash scripts/e2e-kind.sh

bench: model
	$(PY) -m bench.run

# Resolved for the oldest supported Python (the container's, bentofile.yaml), so no pin needs a newer
# one; every pin has a wheel for 3.12 and 3.13 as well, which CI's test matrix installs and runs.
LOCK_PYTHON := $(firstword $(SUPPORTED_PYTHONS))
lock: $(UV)
	cd requirements && ../$(UV) pip compile --quiet --python-version $(LOCK_PYTHON) \
		--python-platform x86_64-unknown-linux-gnu serve.in -o serve.txt
	cd requirements && ../$(UV) pip compile --quiet --python-version $(LOCK_PYTHON) \
		--python-platform x86_64-unknown-linux-gnu dev.in -o dev.txt
	cd requirements && ../$(UV) pip compile --quiet --python-version $(LOCK_PYTHON) \
		--python-platform x86_64-unknown-linux-gnu checkov.in -o checkov.txt

clean:
	rm -rf $(VENV) .tools .bentoml data reports logs bench/results .pytest_cache .hypothesis
