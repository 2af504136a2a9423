# One entry point per job. Every target sets up the environment itself (scripts/bootstrap.sh).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
BOOT := scripts/bootstrap.sh
export PYTHONPATH := $(CURDIR)/src
OUT ?= results
CRDS := src/edgeadapt/api/crds

.PHONY: demo bench bench-full test verify proto lint typecheck unit integration clean

## Main job: a trainer, two adapting edge agents and a baseline agent over gRPC on loopback
## (trains or reuses the cached models first) -> $(OUT)/demo.json and .png
demo:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt demo --out $(OUT)/demo.json

## The AMS benchmark in quick mode (every variant on 5 minutes of video).
bench:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench ams --quick --out $(OUT)/ams-quick.json

## The full AMS benchmark (10 minutes of video).
bench-full:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench ams --out $(OUT)/ams-full.json

## Everything CI checks: lint, types, the whole test suite (the real-node tier included: the
## node's Debian packages are installed when missing, the images built when their content changed).
test:
	venv=$$($(BOOT)); \
	$$venv/bin/ruff check src tests scripts; \
	$$venv/bin/ruff format --check src tests scripts; \
	$$venv/bin/mypy; \
	scripts/node-host.sh; \
	$$venv/bin/python -m pytest

## Generated files match their sources: protos -> src/edgeadapt/_proto, $(CRDS) -> the chart.
verify:
	venv=$$($(BOOT)); EDGEADAPT_VENV=$$venv scripts/gen-proto.sh --check; \
	diff -r $(CRDS) charts/edgeadapt/files/crds && echo "chart CRDs match $(CRDS)"

## Regenerate the gRPC code from proto/.
proto:
	venv=$$($(BOOT)); EDGEADAPT_VENV=$$venv scripts/gen-proto.sh

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
.PHONY: k8s-tools cluster-up cluster-down chart-crds bench-operator e2e images node-up node
CLUSTER_DIR ?= .cluster
DEVICES ?= 1000

## Build (or find cached) etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, kwok, helm.
k8s-tools:
	scripts/k8s-tools.sh

## Start the local control plane (detached); prints the KUBECONFIG export.
cluster-up:
	venv=$$($(BOOT)); $$venv/bin/python -m edgeadapt.devcluster up --dir $(CLUSTER_DIR)

## The control plane with a real node (kubelet, containerd, kube-proxy, CoreDNS) running the
## project's images: the chart installs and its pods' containers run.
node-up:
	venv=$$($(BOOT)); scripts/node-host.sh; \
	$$venv/bin/python -m edgeadapt.devcluster up --dir $(CLUSTER_DIR) --real-node

## Build the images (images/*/Dockerfile, buildah, from a local Debian base); cached by content.
images:
	venv=$$($(BOOT)); scripts/node-host.sh; $$venv/bin/python -m edgeadapt.devcluster images

## The real-node tier alone.
node:
	venv=$$($(BOOT)); scripts/node-host.sh; $$venv/bin/python -m pytest tests/node

## Stop it.
cluster-down:
	venv=$$($(BOOT)); $$venv/bin/python -m edgeadapt.devcluster down --dir $(CLUSTER_DIR)

## Copy the CRDs into the chart (a unit test fails while they differ).
chart-crds:
	cp $(CRDS)/*.yaml charts/edgeadapt/files/crds/

## Operator scale benchmark: DEVICES EdgeDevices to Ready -> $(OUT)/operator-$(DEVICES).json
bench-operator:
	venv=$$($(BOOT)); mkdir -p $(OUT); \
	$$venv/bin/python -m edgeadapt bench operator --devices $(DEVICES) --out $(OUT)/operator-$(DEVICES).json

## The e2e tier alone (Helm install into the local control plane, examples to Ready).
e2e:
	venv=$$($(BOOT)); $$venv/bin/python -m pytest tests/e2e
