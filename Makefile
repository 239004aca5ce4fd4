# labkit — two commands on a fresh machine:  `make run`  and  `make test`.
# Both create .venv when it is missing and install requirements.txt into it first.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.labkit-installed
DATASET ?= auto
PYTEST_ARGS ?=

.PHONY: install run test test-quick lab bench clean help

help:
	@echo "make run    - install, prepare data, execute every notebook (writes figures/ and notebooks/executed/)"
	@echo "make test   - install, run the whole test suite (includes every notebook in quick mode)"
	@echo "make lab    - JupyterLab on notebooks/"
	@echo "make bench  - the benchmarks in benchmarks/"
	@echo "DATASET=jsc insists on the real JSC data; DATASET=jsc-synthetic asks for the stand-in"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/labkit notebooks --dataset $(DATASET)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf notebooks/executed outputs .pytest_cache
