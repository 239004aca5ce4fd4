# labkit — two commands on a fresh machine:  `make run`  and  `make test`.
# Both create .venv when it is missing and install requirements.txt into it first.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.labkit-installed
DATASET ?= auto
PYTEST_ARGS ?=

.PHONY: install run test test-quick test-browser lab bench clean help student

help:
	@echo "make run    - install, prepare data, execute every notebook (writes figures/ and notebooks/executed/)"
	@echo "make test   - install, run the whole test suite (includes every notebook in quick mode)"
	@echo "make test-browser - install chromium, chromium-driver and selenium, then drive JupyterLab in it"
	@echo "make lab    - JupyterLab on notebooks/"
	@echo "make student - write the student build (exercises without solutions) to notebooks/student/"
	@echo "make bench  - the benchmarks in benchmarks/"
	@echo "DATASET=jsc insists on the real JSC data; DATASET=jsc-synthetic asks for the stand-in"

# labkit needs Python >= 3.11 (tomllib; the pinned numpy and pandas): say so before building anything.
# requirements.txt pins setuptools too: the editable install below builds without isolation,
# and venvs of Python 3.12+ come without it.
PY_OK := import sys; sys.exit(sys.version_info < (3, 11))

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -c '$(PY_OK)' 2>/dev/null || { \
	  echo "labkit needs Python >= 3.11, but PYTHON=$(PYTHON) is: $$($(PYTHON) --version 2>/dev/null || echo not found)."; \
	  echo "Run again with a newer one, e.g. make $(MAKECMDGOALS) PYTHON=python3.11"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c '$(PY_OK)' || { \
	  echo "labkit needs Python >= 3.11, but $(VENV) has $$($(BIN)/python --version 2>&1)."; \
	  echo "Remove $(VENV) and run again with PYTHON=python3.11 (or newer)"; exit 1; }
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/labkit notebooks --dataset $(DATASET)

# The browser test runs when headless Chromium and selenium are here; say so either way.
HAVE_BROWSER = command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
	&& $(BIN)/python -c "import selenium" 2>/dev/null

test: $(STAMP)
	@if $(HAVE_BROWSER); then echo "browser test: headless chromium found, tests/test_browser.py runs"; \
	else echo "browser test: SKIPPED (chromium, chromium-driver or selenium missing); 'make test-browser' installs them and runs it"; fi
	$(BIN)/python -m pytest -q -n 2 -rs $(PYTEST_ARGS)

# Debian/Ubuntu packages for the browser (root, or sudo), selenium pinned in requirements-browser.txt
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test-browser: $(STAMP)
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver with apt-get ..."; \
	  $(SUDO) apt-get install -y chromium chromium-driver; }
	$(BIN)/python -m pip install -q -r requirements-browser.txt
	$(BIN)/python -m pytest -q -rs -p no:xdist tests/test_browser.py

student: $(STAMP)
	$(BIN)/labkit notebooks --student

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_sweep.py
	$(BIN)/python benchmarks/bench_search.py

clean:
	rm -rf notebooks/executed notebooks/student outputs .pytest_cache
