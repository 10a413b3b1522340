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

## bench: throughput, baselines, live mode at 768 tasks (idle cost; latency at half of max rate and at
## 100 events/s, loadgen in processes of its own), discovery, supervisor loop; issue 9's targets with
## pass/fail in benchmarks/results/latest.md|json (7-10 min on 2 cores; see benchmarks/README.md).
## BENCH_EVENTS, BENCH_WORKERS, BENCH_IDLE_SECONDS, BENCH_LATENCY_SECONDS, BENCH_PROFILE=1 tune it,
## BENCH_ARGS passes any other option (e.g. BENCH_ARGS='--out /tmp/b'). Only its smoke run is in `make test`.
BENCH_ARGS ?=
bench: venv stack-up
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	$(STACK) down
	rm -rf .stack
