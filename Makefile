# P2PEP — every target depends on `setup`, which installs everything the
# project needs on a fresh machine (Python venv, Go-built lnd/btcd, stubs).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: setup proto binaries lock lint test test-unit test-regtest up bench clean images k8s-config k8s-check k8s-api-check web-assets

setup: $(STAMP) binaries proto web-assets

# Exactly the versions in the lock (hash-checked), then the project itself;
# `pip check` fails if pyproject.toml asks for something the lock lacks.
$(STAMP): pyproject.toml $(LOCK)
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip check
	touch $(STAMP)

# Re-pin requirements.lock after a change to pyproject.toml's dependencies.
lock:
	bash scripts/lock.sh

binaries:
	bash scripts/build-binaries.sh >/dev/null

# the household app's Chart.js, as services/portal/web/package-lock.json pins it (npm ci)
web-assets:
	bash scripts/web-assets.sh

# Our stubs from proto/, LND's from the protos of the pinned lnd module.
proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

# the type and lint gate: mypy strict over p2pep/ and services/ (with the typed gRPC stubs), ruff over all code
lint: setup
	$(BIN)/ruff check p2pep services tests bench scripts
	$(BIN)/python -m mypy

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not regtest" tests

test-regtest: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m regtest tests

# container images, built here with podman (no registry, no Docker engine): scripts/build-images.sh
images: setup
	bash scripts/build-images.sh

# k8s/overlays/*/config/ from the settings classes; k8s-check renders and validates every overlay
k8s-config: setup
	$(BIN)/p2pep k8s config

k8s-check: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_k8s.py

# opt-in, not in `make test`: the kube store, the lnd exporter and the bootstrap Job against a real
# kube-apiserver + etcd with the regtest overlay's RBAC (k8s/README.md); the first run builds
# kube-apiserver (scripts/build-kube-apiserver.sh: ~14 min on 2 cores, then cached by version)
k8s-api-check: setup
	dir=$$(bash scripts/build-kube-apiserver.sh) && \
	  P2PEP_KUBE_APISERVER_DIR=$$dir $(BIN)/python -m pytest -q -p no:cacheprovider -rs tests/test_k8s_kubeapi.py

up: setup
	$(BIN)/p2pep up $(UP_FLAGS)

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) p2pep/v1 p2pep/lndrpc build services/portal/web/node_modules p2pep/webauth/static/vendor
