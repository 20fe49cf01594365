# Every workflow of the project. `make run` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PROTO_STAMP := shared/multipass/v1/__init__.py
PROTOS := $(wildcard protos/multipass/v1/*.proto)
PYTEST_ARGS ?=
# `make test` runs the suite on this many pytest-xdist workers (modules stay whole; 0 = one process)
TEST_WORKERS ?= 2
# e.g. make bench BENCH_ARGS="--only orchestration_overhead_ratio"
BENCH_ARGS ?=

.PHONY: install protos lint format test test-unit test-integration test-e2e test-k8s soak run up down status bench images clean

install: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=25" setuptools wheel
	$(PY) -m pip install -q -c constraints.txt -e '.[ml,dev]'
	touch $(STAMP)

protos: $(STAMP)
	rm -rf shared/multipass/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=shared --pyi_out=shared --grpc_python_out=shared $(PROTOS)
	touch $(PROTO_STAMP)

$(PROTO_STAMP): $(PROTOS) $(STAMP)
	$(MAKE) protos

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: install
	scripts/ensure_chromium.sh
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-unit: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

test-integration: install
	scripts/ensure_chromium.sh
	$(PY) -m pytest -q tests/integration $(PYTEST_ARGS)

test-e2e: install
	$(PY) -m pytest -q tests/e2e $(PYTEST_ARGS)

test-k8s: install
	$(PY) -m pytest -q tests/k8s $(PYTEST_ARGS)

# 100 jobs under random worker kills, a gateway kill and a NATS restart (docs/RELIABILITY.md, "Soak")
soak: install
	$(PY) -m pytest -q -p no:cacheprovider -s -m soak tests/chaos/test_soak.py $(PYTEST_ARGS)

run: install
	$(VENV)/bin/multipass up --detach
	$(VENV)/bin/multipass demo --out out

up: install
	$(VENV)/bin/multipass up --detach

down:
	-$(VENV)/bin/multipass down

status: install
	$(VENV)/bin/multipass status

bench: install
	$(PY) -m multipass_bench $(BENCH_ARGS)

# the five service images from docker/Dockerfile (needs docker; REGISTRY=... to prefix the tags)
images:
	docker/build-images.sh

clean:
	rm -rf $(VENV) shared/multipass/v1 .multipass out .pytest_cache .ruff_cache
