# One-command entry points: `make demo` (install + whole pipeline on the tiny profile)
# and `make test` (install + test suite). Re-running skips what is already installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch; GPU clusters use environment.yml instead.
TORCH_SPEC ?= torch==2.13.0
MELTINGPOT_VERSION ?= 2.4.1
PROFILE ?= tiny
CORES ?= 2
STAMP := $(VENV)/.installed
MELTINGPOT_WHEEL := .wheels/dm_meltingpot-$(MELTINGPOT_VERSION)-py3-none-any.whl

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test data dvc-data repro

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

$(MELTINGPOT_WHEEL): tools/build_meltingpot_wheel.py | $(VENV)/bin/python
	$(BIN)/python tools/build_meltingpot_wheel.py $(MELTINGPOT_VERSION) .wheels

$(STAMP): pyproject.toml $(MELTINGPOT_WHEEL) | $(VENV)/bin/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet "$(MELTINGPOT_WHEEL)"
	$(BIN)/pip install --quiet -e ".[hf,test]"
	touch $(STAMP)

demo: install
	$(BIN)/snakemake all --profile profiles/local --cores $(CORES) --configfile params/$(PROFILE).yaml
	$(BIN)/snakemake --report reports/report.html --configfile params/$(PROFILE).yaml
	@echo "demo finished: report in reports/index.md (tables in reports/tables/, figures in reports/figures/) and reports/report.html"

data: install
	$(BIN)/snakemake data --profile profiles/local --cores $(CORES) --configfile params/$(PROFILE).yaml

test: install
	$(BIN)/python -m pytest -q

dvc-data: data   ## the dataset of PROFILE, recorded in data.dvc (commit it, then dvc push)
	$(BIN)/dvc add data

repro: install   ## dvc.yaml's vars line names the profile (params/tiny.yaml)
	$(BIN)/dvc repro
