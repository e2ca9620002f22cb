# Both entry points bootstrap their own virtual environment from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help demo test lint typecheck bench clean

help: ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml testbed/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ./testbed -e '.[dev,testbed]'
	touch $(STAMP)

demo: $(STAMP) ## record a local call (SFU, two synthetic participants, S3 store)
	$(BIN)/bot demo

test: $(STAMP) ## every test (slow browser and fault cases included)
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP) ## ruff and hadolint
	$(BIN)/ruff check bot testbed tests bench deploy
	$(BIN)/ruff format --check bot testbed tests bench deploy
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

bench: $(STAMP) ## CPU and memory against ffmpeg and aiortc (BENCHMARKS.md)
	$(BIN)/python -m bench

clean: ## remove the venv, recordings and caches
	rm -rf $(VENV) recordings .pytest_cache .mypy_cache .ruff_cache
