# Two commands for a fresh clone:  make demo  |  make test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= all
DEMO_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit venv clean-demo real-dev bench test-cluster report

# torch/torchvision are pinned to the releases this machine's pip serves from local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test,slurm]"
	touch $(STAMP)

venv: $(STAMP)

demo_data/.complete: $(STAMP) laplace_head/demo_data.py
	$(PY) -m laplace_head.dataset.demo --out demo_data
	touch $@

## make demo: the whole workflow on the bundled synthetic data (random_walker, CPU)
demo: demo_data/.complete
	$(SNAKEMAKE) --cores $(CORES) --configfile config/demo.yaml $(DEMO_ARGS)
	@echo "demo outputs: demo_project/ (see README, 'Output layout')"

## make lint: ruff, snakefmt, snakemake --lint
lint: $(STAMP) demo_data/.complete
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(SNAKEMAKE) --lint --configfile config/demo.yaml

unit: $(STAMP)
	$(PY) -m pytest -q

## make test: lint, then every test
test: lint unit

## make real-dev: the whole workflow on ../shared/data/real_dev
real-dev: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile config/real_dev.yaml

clean-demo:
	rm -rf demo_data demo_project

## make test-cluster: the demo through profiles/slurm on a throw-away one-node SLURM cluster
## (root; installs Debian's slurm-wlm and munge when missing; about 5 minutes)
test-cluster: $(STAMP)
	LAPLACE_HEAD_CLUSTER_TEST=1 $(PY) -m pytest tests/cluster -v -s
