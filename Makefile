# relay — developer entry points. `make demo` and `make test` are the README's first two commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STACK  := deploy/local/stack
PYTEST_ARGS ?= -n auto

.PHONY: venv stack-up stack-down stack-status test test-parallel test-alone test-one lint demo bench clean

$(BIN)/relay: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/relay

stack-up:
	$(STACK) up

stack-down:
	$(STACK) down

stack-status:
	$(STACK) status

## test: the whole suite against the real local stack (brings it up if needed), in two phases:
## every test that shares the stack, in parallel; then, alone, those that stop its services or load
## the machine (markers outage, serial). The stack lock keeps them apart even without the phases.
test: test-parallel test-alone

test-parallel: venv stack-up
	$(BIN)/pytest $(PYTEST_ARGS) -m "not outage and not serial"

test-alone: venv stack-up
	$(BIN)/pytest -m "outage or serial"

## test-one: any pytest selection against the stack, e.g. make test-one T='tests/test_relay_e2e.py -k sigkill'
test-one: venv stack-up
	$(BIN)/pytest -x -rP $(T)

lint: venv
	$(BIN)/ruff check relay tests benchmarks

demo: venv stack-up
	$(BIN)/python -m relay.demo

## bench: throughput, baselines, latency and discovery on the local stack (see benchmarks/README.md).
## BENCH_EVENTS, BENCH_WORKERS, BENCH_LATENCY_SECONDS, BENCH_PROFILE=1 tune it; kept out of `make test`.
bench: venv stack-up
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks

clean:
	$(STACK) down
	rm -rf .stack
