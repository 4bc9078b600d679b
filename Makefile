# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# `make e2e` also installs what its tier needs: Debian's redis-server and chromium, and the
# package's `celery` and `e2e` extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
E2E_STAMP := $(VENV)/.installed-e2e
E2E_SYSTEM_PACKAGES := redis-server chromium
PYTEST_ARGS ?=

.PHONY: install test e2e e2e-system demo bench mutants clean

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The system packages of the e2e tier: installed with apt as root, else the command to run is printed.
e2e-system:
	@missing=""; \
	for command in $(E2E_SYSTEM_PACKAGES); do command -v $$command >/dev/null 2>&1 || missing="$$missing $$command"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make e2e needs Debian packages it cannot install without root; run:" >&2; \
		echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends$$missing" >&2; \
		exit 1; \
	fi; \
	echo "Installing$$missing with apt-get"; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing

$(E2E_STAMP): $(STAMP) setup.cfg constraints.txt
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev,celery,e2e]"
	touch $(E2E_STAMP)

# CeleryExecutor with a Redis broker, and the UI in headless Chromium (tests/e2e).
e2e: e2e-system $(E2E_STAMP)
	SEEDREAM_E2E=1 $(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Mutation testing (mutmut, configured in setup.cfg): every mutant of the spend ledger and the
# argument parser is run against their fast tests; the survivors are listed.
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	$(BIN)/mutmut run
	$(BIN)/mutmut results

clean:
	rm -rf $(VENV) .airflow .demo tests/e2e/artifacts build *.egg-info mutants
