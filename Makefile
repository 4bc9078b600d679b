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

.PHONY: install test e2e e2e-system demo bench lint mutants compat compat-constraints dist clean

$(STAMP): setup.cfg pyproject.toml constraints.txt airflow_provider_seedream/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --constraint constraints.txt --editable ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Static checks, pinned in the dev extra: ruff's lint and format check, and mypy on the package.
LINTED := airflow_provider_seedream dags scripts
lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

test: lint
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

# Each supported Airflow minor in a virtual environment of its own, with a constraints file of its
# own (constraints/airflow-<minor>.txt: the latest patch, with the libraries of its release date).
# The hook, operator, catalog and DAG tests and the real-deployment tier run on each.
COMPAT_MINORS ?= 3.1 3.2 3.3
COMPAT_TESTS ?= tests/hooks tests/operators tests/test_catalog.py tests/test_example_dags.py tests/test_provider.py tests/deployment
# Release date of each minor's latest patch plus a week: the newest libraries its constraints take.
COMPAT_CUTOFF_3.1 := 2026-03-18
COMPAT_CUTOFF_3.2 := 2026-06-05
COMPAT_CUTOFF_3.3 := 2026-09-24
COMPAT_AIRFLOW_3.1 := 3.1.8
COMPAT_AIRFLOW_3.2 := 3.2.2
COMPAT_AIRFLOW_3.3 := 3.3.2

.venv-compat-%/.installed: constraints/airflow-%.txt setup.cfg pyproject.toml airflow_provider_seedream/__init__.py
	test -x .venv-compat-$*/bin/python || $(PYTHON) -m venv .venv-compat-$*
	.venv-compat-$*/bin/python -m pip install --quiet --constraint constraints/airflow-$*.txt \
		"apache-airflow==$(COMPAT_AIRFLOW_$*)" --editable ".[test]"
	touch $@

compat-%: .venv-compat-%/.installed
	@echo "== Airflow $$(.venv-compat-$*/bin/python -c 'import airflow; print(airflow.__version__)')"
	.venv-compat-$*/bin/python -m pytest -p no:cacheprovider $(COMPAT_TESTS) $(PYTEST_ARGS)

compat: $(addprefix compat-,$(COMPAT_MINORS))
.PRECIOUS: .venv-compat-%/.installed

# Rewrites constraints/airflow-<minor>.txt with uv's resolver limited to packages released by the
# cutoff; run it when a new patch of a minor is supported.
compat-constraints:
	test -x .venv-tools/bin/uv || ($(PYTHON) -m venv .venv-tools && .venv-tools/bin/pip install --quiet "uv==0.13.9")
	$(foreach minor,$(COMPAT_MINORS),printf 'apache-airflow==%s\n-e .[test]\n' $(COMPAT_AIRFLOW_$(minor)) \
		| .venv-tools/bin/uv pip compile --quiet --python-version 3.11 --exclude-newer $(COMPAT_CUTOFF_$(minor)) \
			--no-header --no-annotate - | grep -v '^-e ' > constraints/airflow-$(minor).txt;)

# The wheel and sdist, checked by twine, then the wheel installed as the README says into a fresh
# virtual environment, where Airflow must list the provider and its connection type.
DIST_VENV := .venv-dist
dist: $(STAMP)
	rm -rf dist build $(DIST_VENV)
	$(BIN)/python -m pip install --quiet "build==1.3.0" "twine==6.2.0"
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(PYTHON) -m venv $(DIST_VENV)
	$(DIST_VENV)/bin/python -m pip install --quiet --constraint constraints.txt \
		"$$(ls dist/*.whl)[emulator]"
	cd /tmp && AIRFLOW_HOME=$(CURDIR)/$(DIST_VENV)/airflow-home $(CURDIR)/$(DIST_VENV)/bin/python \
		$(CURDIR)/scripts/check_install.py

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Mutation testing (mutmut, configured in setup.cfg) of the modules that keep the money promises:
# the spend ledger and budget, the batch's decisions and report, storage, the errors' retry
# classification, the argument parser, the request checks, and the hook's retry and outcome
# classification. Each mutant runs against the fast tests that cover it; the kill rate of each
# module is printed and the survivors are written to mutants-survivors.txt, with why each one
# is equivalent (the target fails while one is unexplained).
HOOK_MUTANTS := airflow_provider_seedream.hooks.seedream
MUTANTS ?= "airflow_provider_seedream.ledger*" "airflow_provider_seedream.decisions*" \
	"airflow_provider_seedream.outcomes*" "airflow_provider_seedream.storage*" \
	"airflow_provider_seedream.exceptions*" "airflow_provider_seedream.arguments*" \
	"airflow_provider_seedream.validation*" "$(HOOK_MUTANTS).x__never_sent*" \
	"$(HOOK_MUTANTS).x__download_retryable*" "$(HOOK_MUTANTS).xǁ_BackoffHonouringRetryAfterǁ*" \
	"$(HOOK_MUTANTS).xǁSeedreamHookǁ_generation_retryable*" "$(HOOK_MUTANTS).xǁSeedreamHookǁ_send*" \
	"$(HOOK_MUTANTS).xǁSeedreamHookǁ_read_answer*" "$(HOOK_MUTANTS).xǁSeedreamHookǁ_retrying*" \
	"$(HOOK_MUTANTS).x_api_error*"
mutants: $(STAMP)
	$(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python scripts/mutant_report.py

clean:
	rm -rf $(VENV) .venv-compat-* .venv-tools $(DIST_VENV) dist .airflow .demo tests/e2e/artifacts build *.egg-info mutants
