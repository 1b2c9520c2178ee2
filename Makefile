# Two commands matter: `make serve` and `make test`. Everything else is a building block.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first supported Python (3.11 to 3.13) on PATH; override with PYTHON=python3.x.
PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.13,$(shell command -v python$(v) 2>/dev/null)) python3)
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
export PATH := $(CURDIR)/.tools/bin:$(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install tools data train model serve lint test image bench lock clean promote import-model promoted

help:
	@echo "make serve   train if needed, then serve on http://$(HOST):$(PORT)"
	@echo "make test    install test dependencies and run the whole suite"
	@echo "make train   (re)train on $(DATA) and save to the model store ($$BENTOML_HOME)"
	@echo "make image   build the bento and its container image (MODEL_TAG=<tag> picks the model)"
	@echo "make promote MODEL=breast_cancer:<version>  compare with the promoted model; promote or refuse"
	@echo "make import-model  import the registry's promoted model into the model store"
	@echo "make promoted      the promoted model and the promotion history"
	@echo "make bench   benchmark the service against a bare ASGI reference"
	@echo "make lock    re-pin requirements/*.txt from requirements/*.in"

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(UV): | $(VENV)/bin/python
	$(PY) -m pip install --quiet "uv==0.13.9"

# The stamp makes the install incremental: it re-runs only when the lock changes. Bytecode is
# compiled at install time because the service's cold start is mostly imports (5 s instead of 11 s).
$(VENV)/.installed: requirements/dev.txt | $(UV)
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

image: model
	bash scripts/build-image.sh

# The registry (registry/, or REGISTRY=DIR) holds the promoted model; see training/promote.py.
promote: install
	$(PY) -m training.promote promote $(MODEL) --data $(DATA)

import-model: install
	$(PY) -m training.promote import

promoted: install
	$(PY) -m training.promote status

bench: model
	$(PY) -m bench.run

lock: $(UV)
	cd requirements && ../$(UV) pip compile --quiet --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu serve.in -o serve.txt
	cd requirements && ../$(UV) pip compile --quiet --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu dev.in -o dev.txt
	cd requirements && ../$(UV) pip compile --quiet --python-version 3.11 \
		--python-platform x86_64-unknown-linux-gnu checkov.in -o checkov.txt

clean:
	rm -rf $(VENV) .tools .bentoml data reports logs bench/results .pytest_cache .hypothesis
