# One command for the main job (make demo), one for the tests (make test); each sets up .venv and
# builds the package on first use and skips what is already done later.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ENV := source scripts/env.sh &&

.PHONY: help venv build test test-fast demo weights bench clean

help:
	@echo "make demo     run the tracker node on synthetic RGB-T bags end to end (demo_output/)"
	@echo "make test     run the test suite (sets up .venv and builds on first use)"
	@echo "make test-fast  the suite without tests marked slow"
	@echo "make weights  retrain the shipped ckd_tiny weights"
	@echo "make bench    speed benchmarks"
	@echo "make build    colcon build into install/ ;  make venv  create .venv"

venv:
	@bash scripts/setup_venv.sh

build: venv
	@bash scripts/build.sh

test: build
	@$(ENV) bash scripts/run_tests.sh $(PYTEST_ARGS)

test-fast: build
	@$(ENV) bash scripts/run_tests.sh -m "not slow" $(PYTEST_ARGS)

demo: build
	@$(ENV) bash scripts/demo.sh $(DEMO_ARGS)

weights: build
	@$(ENV) bash scripts/make_weights.sh

bench: build
	@$(ENV) python benchmarks/bench_tracker.py

clean:
	rm -rf build install log
