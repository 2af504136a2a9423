# One entry point per job. Every target sets up the environment itself (scripts/bootstrap.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BOOT := scripts/bootstrap.sh
export PYTHONPATH := $(CURDIR)/src
OUT ?= results

.PHONY: bench bench-full test lint typecheck unit integration clean

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

# ---------------------------------------------------------------- operator and local control plane
.PHONY: k8s-tools cluster-up cluster-down chart-crds bench-operator e2e
CLUSTER_DIR ?= .cluster
DEVICES ?= 1000

## Build (or find cached) etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, kwok, helm.
k8s-tools:
	scripts/k8s-tools.sh

## Start the local control plane (detached); prints the KUBECONFIG export.
cluster-up:
	venv=$$($(BOOT)); $$venv/bin/python -m edgeadapt.devcluster up --dir $(CLUSTER_DIR)

## Stop it.
cluster-down:
	venv=$$($(BOOT)); $$venv/bin/python -m edgeadapt.devcluster down --dir $(CLUSTER_DIR)

## Copy crds/ into the chart (a unit test fails while they differ).
chart-crds:
	cp crds/*.yaml charts/edgeadapt/files/crds/

## Operator scale benchmark: DEVICES EdgeDevices to Ready -> $(OUT)/operator-$(DEVICES).json
bench-operator:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench operator --devices $(DEVICES) --out $(OUT)/operator-$(DEVICES).json

## The e2e tier alone (Helm install into the local control plane, examples to Ready).
e2e:
	venv=$$($(BOOT)); $$venv/bin/python -m pytest tests/e2e
