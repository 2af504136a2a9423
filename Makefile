# One entry point per job. Every target sets up the environment itself (scripts/bootstrap.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BOOT := scripts/bootstrap.sh
export PYTHONPATH := $(CURDIR)/src
OUT ?= results

.PHONY: bench bench-full test lint typecheck unit integration verify clean

## Main job: the AMS benchmark in quick mode (trains or reuses the cached models first).
bench:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench ams --quick --out $(OUT)/ams-quick.json

## The full AMS benchmark (10 minutes of video).
bench-full:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench ams --out $(OUT)/ams-full.json

## Everything CI checks: lint, types, the whole test suite.
test:
	venv=$$($(BOOT)); \
	$$venv/bin/ruff check src tests scripts; \
	$$venv/bin/ruff format --check src tests scripts; \
	$$venv/bin/mypy; \
	$$venv/bin/python -m pytest

lint:
	venv=$$($(BOOT)); $$venv/bin/ruff check src tests scripts; $$venv/bin/ruff format --check src tests scripts

typecheck:
	venv=$$($(BOOT)); $$venv/bin/mypy

unit:
	venv=$$($(BOOT)); $$venv/bin/python -m pytest tests/unit

integration:
	venv=$$($(BOOT)); $$venv/bin/python -m pytest tests/integration

clean:
	rm -rf $(OUT) .mypy_cache .pytest_cache .ruff_cache
