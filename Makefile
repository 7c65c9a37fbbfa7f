# Two commands for a fresh clone:  make demo  |  make test
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
CORES ?= all
DEMO_ARGS ?=
ANNOTATE_ARGS ?=
STAMP := $(VENV)/.installed
# config/config.yaml is the base; demo.yaml / real_dev.yaml override it, real_large.yaml
# overrides real_dev.yaml (later files win).
DEMO_CONFIG := config/config.yaml config/demo.yaml
REAL_DEV_CONFIG := config/config.yaml config/real_dev.yaml
REAL_LARGE_CONFIG := $(REAL_DEV_CONFIG) config/real_large.yaml

.PHONY: demo test lint unit test-workflow test-browser venv clean-demo real-dev real-large bench \
	test-cluster report annotate-demo

# torch/torchvision are pinned to the releases this machine's pip serves from local disk.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[test,slurm]"
	touch $(STAMP)

venv: $(STAMP)

demo_data/.complete: $(STAMP) laplace_head/dataset/demo.py
	$(PY) -m laplace_head demo-data --out demo_data
	touch $@

## make demo: the whole workflow on the bundled synthetic data (random_walker, CPU)
demo: demo_data/.complete
	$(SNAKEMAKE) --cores $(CORES) --configfile $(DEMO_CONFIG) $(DEMO_ARGS)
	@echo "demo outputs: demo_project/ (see README, 'Output layout')"

## make report: snakemake's HTML report of the demo run (runs the demo first if needed)
report: demo
	$(SNAKEMAKE) --cores $(CORES) --configfile $(DEMO_CONFIG) --report demo_project/report.html
	@echo "report: demo_project/report.html"

## make lint: ruff, snakefmt, snakemake --lint
lint: $(STAMP) demo_data/.complete
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile rules/
	$(SNAKEMAKE) --lint --configfile $(DEMO_CONFIG)

## make unit: the fast tier, tests/unit (about 1.5 minutes on 2 cores)
unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

## make test-workflow: tests/workflow, snakemake in subprocesses (about 12 minutes on 2 cores)
test-workflow: $(STAMP)
	$(PY) -m pytest -q tests/workflow

## make test-browser: the annotator in headless Chromium, tests/browser (about half a minute;
## needs Debian's chromium and chromium-driver, which .ci/run installs)
test-browser: $(STAMP)
	$(PY) -m pytest -q tests/browser

## make test: the full contract: lint, the unit tier, the workflow tier, the browser test (not
## cluster, not slow)
test: lint unit test-workflow test-browser

## make annotate-demo: the annotator on the finished demo project (runs the demo first if needed);
## open the URL it prints, Ctrl-C stops it. Masks go to annotations/masks (ANNOTATE_ARGS adds flags)
annotate-demo: demo
	$(PY) -m laplace_head annotate --config $(DEMO_CONFIG) $(ANNOTATE_ARGS)

## make real-dev: the whole workflow on ../shared/data/real_dev
real-dev: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(REAL_DEV_CONFIG)

## make real-large: the whole workflow on ../shared/data/real_large (real_dev's settings,
## val/test 15 % each)
real-large: $(STAMP)
	$(SNAKEMAKE) --cores $(CORES) --configfile $(REAL_LARGE_CONFIG)

## make bench: every bench/bench_*.py and bench/gpu_check.py (on the CPU, tiny SAM) once at a
## quick setting (smoke run, not for the numbers; bench_packing and bench_loading read
## ../shared/data/real_dev)
bench: $(STAMP)
	$(PY) bench/bench_dag.py --sizes 1000
	$(PY) bench/bench_packing.py --samples 8 --promptsets 2 --repeats 1
	$(PY) bench/bench_loading.py --samples 8 --promptsets 2 --epochs 1
	$(PY) bench/bench_precompute.py --skip-vit-b --tiny-images 2 --tiny-k 2 --size 120 160
	$(PY) bench/bench_training.py --rows 16 --epochs 1 --repeats 1 --workers 0 --device cpu
	$(PY) bench/bench_interactive.py --images 1 --clicks 2 --skip-vit-b
	$(PY) bench/bench_interactive.py --images 1 --clicks 2 --skip-vit-b --config $(REAL_DEV_CONFIG)
	$(PY) bench/bench_annotate.py --images 1 --clicks 2
	$(PY) bench/gpu_check.py --device cpu --tiny

clean-demo:
	rm -rf demo_data demo_project

## make test-cluster: the demo through profiles/slurm on a throw-away one-node SLURM cluster
## (root; installs Debian's slurm-wlm and munge when missing; about 5 minutes)
test-cluster: $(STAMP)
	LAPLACE_HEAD_CLUSTER_TEST=1 $(PY) -m pytest tests/cluster -v -s
