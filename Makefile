# One-command entry points: `make demo` (install + whole pipeline on the tiny profile)
# and `make test` (install + test suite; what CI runs). `make test-fast` is the unit tests only.
# Re-running skips what is already installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Which torch build is installed: TORCH_SPEC pins the version and TORCH_INDEX, when set, is the
# pip index to take it from (PyTorch's CPU wheel index on a laptop, a CUDA one on a GPU machine;
# GPU clusters may use environment.yml instead). Empty: pip's default index, where this pin
# resolves to a CPU wheel on the project's CI machines and may be a CUDA build elsewhere.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
MELTINGPOT_VERSION ?= 2.4.1
PROFILE ?= tiny
CORES ?= 2
STAMP := $(VENV)/.installed
MELTINGPOT_WHEEL := .wheels/dm_meltingpot-$(MELTINGPOT_VERSION)-py3-none-any.whl

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install browser demo test test-fast report data dvc-data repro

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools

$(MELTINGPOT_WHEEL): tools/build_meltingpot_wheel.py | $(VENV)/bin/python
	$(BIN)/python tools/build_meltingpot_wheel.py $(MELTINGPOT_VERSION) .wheels

$(STAMP): pyproject.toml $(MELTINGPOT_WHEEL) | $(VENV)/bin/python
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet "$(MELTINGPOT_WHEEL)"
	$(BIN)/pip install --quiet -e ".[hf,test,play]"
	touch $(STAMP)

demo: install
	$(BIN)/snakemake all --profile profiles/local --cores $(CORES) --configfile params/$(PROFILE).yaml
	$(BIN)/snakemake --report reports/report.html --configfile params/$(PROFILE).yaml
	@echo "demo finished: report in reports/index.md (tables in reports/tables/, figures in reports/figures/) and reports/report.html"

data: install
	$(BIN)/snakemake data --profile profiles/local --cores $(CORES) --configfile params/$(PROFILE).yaml

# The browser tests (report page, play mode) drive Debian's chromium through Playwright (no
# browser download); installed with apt where we may, else those tests are skipped with a reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; } \
	  || echo "chromium is not installed (needs root and apt): the browser tests will be skipped"

test: install browser
	$(BIN)/python -m pytest -q

# Unit tests only: not the end-to-end DAG and DVC runs (marker `slow`), not the local SLURM
# cluster (`slurm`), and not these tests of more than a few seconds each (training runs, the
# dry runs of every profile or of a new variant, the Wan VAE round trip). `make test` still
# runs all of them.
SLOW_UNIT_TESTS := \
	tests/test_workflow.py::test_dry_run_of_every_profile_lists_the_data_rules \
	tests/test_variants.py::test_a_new_variant_is_one_file_and_reaches_the_dag \
	tests/test_train.py::test_resume_gives_the_same_weights_as_an_uninterrupted_run \
	tests/test_train.py::test_finetune_snapshots_are_the_learning_curve_points \
	tests/test_train.py::test_torchrun_two_processes_equal_one_process \
	tests/test_train.py::test_cached_rollout_equals_uncached_beyond_the_window \
	tests/test_train.py::test_untrained_residual_model_copies_the_context \
	tests/test_train.py::test_context_noise_noises_only_the_contexts_the_model_reads \
	tests/test_train.py::test_state_first_rollout_cached_equals_uncached_and_snaps_states \
	tests/test_train.py::test_own_context_frame_is_what_a_rollout_draws \
	tests/test_codecs.py::test_wan_vae_codec_round_trips_shapes \
	tests/test_fault_injection.py \
	tests/test_checkpoint_safety.py \
	tests/test_play_browser.py

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not slurm" $(addprefix --deselect ,$(SLOW_UNIT_TESTS))

report: install   ## every table and figure of reports/ (index.html) from the committed results/, no GPU, no data
	$(BIN)/actionparty report --results results --out reports --profile params/$(PROFILE).yaml

dvc-data: data   ## the dataset of PROFILE, recorded in data.dvc (commit it, then dvc push)
	$(BIN)/dvc add data

# dvc.yaml's vars line names the profile (params/tiny.yaml). In a fresh clone data/ is first
# pulled from the default remote, or rebuilt by Snakemake and checked against data.dvc.
repro: install
	$(BIN)/python tools/dvc_snakemake.py data
	$(BIN)/dvc repro
