# calib_seg: common tasks. `make help` lists them. Everything runs inside .venv (created on first use).
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed-stamp
ARGS ?=

.DEFAULT_GOAL := help

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet -c constraints.txt -e ".[dev,cluster]"
	@touch $(VENV_STAMP)

install: $(VENV_STAMP) ## create .venv and install calib_seg with pinned dependencies (about 3 min)

train: $(VENV_STAMP) ## train the default density model on synthetic beads (CPU, ~3 min); ARGS="..." for overrides
	$(PY) -m calib_seg.train $(ARGS)

test: $(VENV_STAMP) ## fast test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-full: $(VENV_STAMP) ## every test, including the slow ones
	$(PY) -m pytest -q -m "slow or not slow" $(ARGS)

lint: $(VENV_STAMP) ## ruff
	.venv/bin/ruff check .

tensorboard: $(VENV_STAMP) ## serve TensorBoard over outputs/ and multirun/ (port 6006)
	.venv/bin/tensorboard --logdir_spec outputs:outputs,multirun:multirun --port 6006 --bind_all

.PHONY: help install train test test-full lint tensorboard
