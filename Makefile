# calib_seg: common tasks. `make help` lists them. Everything runs inside .venv (created on first use).
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-stamp
ARGS ?=

.DEFAULT_GOAL := help

# colour only on a terminal: piped or redirected output (`make help | less`, CI logs) stays plain text
help: ## list the targets
	@if [ -t 1 ]; then on=$$'\033[36m'; off=$$'\033[0m'; else on=; off=; fi; \
	grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -v on="$$on" -v off="$$off" 'BEGIN {FS = ":.*?## "}; {printf "  %s%-16s%s %s\n", on, $$1, off, $$2}'

$(VENV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -c constraints.txt -e ".[dev,cluster]"
	@touch $(VENV_STAMP)

install: $(VENV_STAMP) ## create .venv and install calib_seg with pinned dependencies (about 3 min)

EXPORT_STAMP := .venv/.installed-export-stamp
$(EXPORT_STAMP): $(VENV_STAMP)
	.venv/bin/pip install --quiet -c constraints.txt -e ".[dev,cluster,export]"
	@touch $(EXPORT_STAMP)

install-export: $(EXPORT_STAMP) ## add the BioImage Model Zoo export extra (bioimageio.spec/core, onnx; ~300 MB, ~1.5 min)

HPO_STAMP := .venv/.installed-hpo-stamp
$(HPO_STAMP): $(VENV_STAMP)
	.venv/bin/pip install --quiet -c constraints.txt -e ".[dev,cluster,hpo]"
	@touch $(HPO_STAMP)

install-hpo: $(HPO_STAMP) ## add the Optuna sweep extra (hydra-optuna-sweeper 1.3.0, optuna 2.10.1, SQLAlchemy 1.4; ~20 MB)

train: $(VENV_STAMP) ## train the default density model on synthetic beads (CPU, ~1 min); ARGS="..." for overrides
	$(PY) -m calib_seg.train $(ARGS)

test: $(VENV_STAMP) ## fast test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV_STAMP) ## only the tests marked slow (CI runs this after `make test`)
	$(PY) -m pytest -q -m slow $(ARGS)

test-full: $(VENV_STAMP) ## every test, including the slow ones
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(VENV_STAMP) ## ruff
	.venv/bin/ruff check .

# 127.0.0.1 by default: the logs show training data and paths, not for everyone on a shared node.
# HOST=0.0.0.0 serves on every interface (remote use, on a network you trust); an ssh tunnel is the safer way.
HOST ?= 127.0.0.1
PORT ?= 6006
tensorboard: $(VENV_STAMP) ## serve TensorBoard over outputs/ and multirun/ on http://127.0.0.1:6006 (HOST=0.0.0.0 for remote, PORT=...)
	.venv/bin/tensorboard --logdir_spec outputs:outputs,multirun:multirun --host $(HOST) --port $(PORT)

# --- sweeps -------------------------------------------------------------------------------------------------
# Each grid is a file in conf/hparams_search/ (hydra.sweeper.params). The sweep folder is chosen here, not by
# Hydra, so the target knows exactly where the sweep landed even when other sweeps start in the same second:
# multirun/<date>/<time>_<grid>_<random>. A hydra.sweep.dir=... inside ARGS wins (the report then reads that).
# The report runs even when some jobs failed (it is where failures are listed); the target still exits with
# the sweep's status.
SWEEP_DIR_ARG = $(patsubst hydra.sweep.dir=%,%,$(filter hydra.sweep.dir=%,$(ARGS)))
define run_sweep
	@dir="$(or $(SWEEP_DIR_ARG),multirun/$$(date +%Y-%m-%d)/$$(date +%H-%M-%S)_$(1)_$$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n'))"; \
	set -x; $(PY) -m calib_seg.train -m hparams_search=$(1) hydra.sweep.dir="$$dir" $(ARGS); rc=$$?; set +x; \
	echo "sweep $(1) landed in $$dir (exit $$rc)"; \
	if $(PY) -c 'import importlib.util as u, sys; sys.exit(u.find_spec("calib_seg.report") is None)'; then \
		$(PY) -m calib_seg.report "$$dir" || echo "report failed (exit $$?): python -m calib_seg.report $$dir"; \
	else echo "calib_seg.report not installed yet: run python -m calib_seg.report $$dir later"; fi; \
	exit $$rc
endef

sweep-filters: $(VENV_STAMP) ## C01..C04 grid (4 runs) + report; ARGS="data=beads_synth trainer.max_epochs=5 hydra/launcher=slurm ..."
	$(call run_sweep,filters)

sweep-arch: $(VENV_STAMP) ## architecture study (3 runs: Baseline_Shallow/Deep, ResNet_Deep) + report; ARGS="..."
	$(call run_sweep,arch)

sweep-hpo: $(VENV_STAMP) ## mito 36-run grid (model x lr x batch) + report; ARGS="data.source.root=/path/to/epfl hydra/launcher=slurm"
	$(call run_sweep,hpo_mito)

# Optuna searches: the same command with the same hydra.sweep.dir=... continues the study (docs/sweeps.md "Optuna")
sweep-hpo-optuna: $(HPO_STAMP) ## Optuna TPE over the mito grid's space (20 trials) + report; ARGS="hydra.sweeper.n_trials=30 hydra.sweep.dir=..."
	$(call run_sweep,hpo_mito_optuna)

sweep-density-optuna: $(HPO_STAMP) ## Optuna TPE over density filters x lr x batch (20 trials) + report; ARGS="hydra.sweep.dir=... (resume)"
	$(call run_sweep,density_optuna)

# --- studies: several sweeps x seeds, one report answering the seed report's questions (docs/sweeps.md "Studies") ---
# The same command with the same study.dir=... resumes (finished jobs are skipped); ARGS go to every job.
study-calibration: $(VENV_STAMP) ## architecture + filter + 50x-extrapolation sweeps x study.seeds, one study.md; ARGS="study=calibration_quick" (CPU) or "hydra/launcher=slurm study.dir=..."
	$(PY) -m calib_seg.study calibration $(ARGS)

study-mito: $(VENV_STAMP) ## mito 36-run grid x study.seeds, one study.md; ARGS="study=mito_quick" (CPU) or "data.source.root=/path/to/epfl hydra/launcher=slurm"
	$(PY) -m calib_seg.study mito $(ARGS)

slurm-up: ## start a single-node SLURM cluster on this machine (root/sudo, apt; idempotent)
	scripts/slurm-local-up

slurm-down: ## stop the daemons slurm-up started
	scripts/slurm-local-down

# newest sweep = the most recently modified multirun/<date>/<folder>/ (override: make report SWEEP=multirun/...)
SWEEP ?= $(shell ls -dt multirun/*/*/ 2>/dev/null | head -1)
report: $(VENV_STAMP) ## sweep report (report.md, summary.csv, report_figures/) into SWEEP=multirun/<date>/<folder> (default: newest)
	@test -n "$(SWEEP)" || { echo "no sweep folder under multirun/; pass SWEEP=path/to/sweep"; exit 2; }
	$(PY) -m calib_seg.report $(SWEEP)

.PHONY: report

bench: $(VENV_STAMP) ## benchmarks B1-B6 at CPU size -> benchmarks/results.{md,json} (~50 min on 2 busy cores); ARGS="--only B3" or FULL=1 for GPU sizes
	$(PY) benchmarks/run_all.py $(if $(FULL),,--quick) $(ARGS)

.PHONY: bench

.PHONY: help install install-export install-hpo train test test-slow test-full lint tensorboard sweep-filters sweep-arch sweep-hpo sweep-hpo-optuna sweep-density-optuna study-calibration study-mito slurm-up slurm-down
