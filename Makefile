# Pushflow: `make demo` and `make test` work on a fresh clone with Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ASL := $(wildcard statemachines/*.asl.json)
export SAM_CLI_TELEMETRY := 0

.PHONY: help install demo test test-fast lint format build clean bench-gateway

help:
	@echo "make demo    seed 10,000 devices and send to them through the real state machine"
	@echo "make test    the whole suite: unit, integration (real PostgreSQL/Redis), e2e (real ASL)"
	@echo "make lint    ruff, mypy, statelint on every ASL file, sam validate --lint"
	@echo "make build   sam build (aws-sam-cli in its own virtual environment)"

# The project's venv, reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml layers/shared/requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[local,dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pushflow demo

# The suite runs on a cluster-mode Redis (as ElastiCache Serverless); the tests of
# the Redis adapters then run once more on a standalone server (~30 s).
REDIS_TESTS := tests/integration/test_recipient_filter.py tests/integration/test_publish_markers.py
test: $(STAMP)
	$(BIN)/python -m pytest
	PUSHFLOW_REDIS_MODE=standalone $(BIN)/python -m pytest -q $(REDIS_TESTS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "unit"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/shared/pushflow pushflow_local
	MYPYPATH=layers/shared $(BIN)/mypy bench reliability
	@# Every function is its own `app` module, as in Lambda: check them one by one.
	@for d in functions/*/; do MYPYPATH=layers/shared $(BIN)/mypy $$d || exit 1; done
	@for f in $(ASL); do echo "statelint $$f"; $(BIN)/statelint --ignore=URI $$f || exit 1; done
	bash scripts/sam-venv.sh
	.venv-sam/bin/sam validate --lint

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The functions run python3.13 on arm64: sam build (no Docker) needs that interpreter
# on PATH, and fetches the layer's compiled dependencies as manylinux aarch64 wheels.
build:
	@command -v python3.13 >/dev/null || { echo "make build: python3.13 must be on PATH (the functions' runtime; docs/deploy.md)"; exit 1; }
	bash scripts/sam-venv.sh
	.venv-sam/bin/sam build

clean:
	rm -rf .aws-sam .pushflow .pytest_cache .mypy_cache .ruff_cache

# Benchmarks: every stage of a send against this machine's limits (prints a
# table, writes bench/results.json; ~5-10 min). bench-smoke is the CI size:
# every figure produced, no timing asserted, under a minute.
.PHONY: bench bench-smoke
bench: $(STAMP)
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --small --out .pushflow/bench-smoke.json

# Status reads through the local API Gateway, 20 clients (target: 200 reads/s).
bench-gateway: $(STAMP)
	$(BIN)/python -m bench.gateway

# The fault suite: real sends through the local runtime while Redis, PostgreSQL,
# SNS and the functions fail at known points, plus 20 concurrent sends; prints
# the table, writes reliability/results.json (~2 min). The small size runs in
# `make test` as tests/e2e/test_reliability.py. docs/reliability.md explains.
.PHONY: reliability
reliability: $(STAMP)
	$(BIN)/python -m reliability
