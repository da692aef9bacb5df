# One command each: `make demo`, `make test`. Both create the environment first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Quiet, offline-safe defaults for tests (no hub access, no analytics, slower first Prefect start).
TEST_ENV := HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90

.PHONY: env demo test test-fast lint wheel-check bench clean labelstudio-env test-labelstudio

env: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the build this project is tested on.
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test,chinese]'
	touch $(STAMP)

demo: env
	$(BIN)/coldstart demo --workspace demo-workspace --rounds 3 --json demo-rounds.json

# Two workers, each test file on one of them (module fixtures built once): most tests wait on
# Prefect, DVC and git subprocesses, so two cores overlap them (BENCHMARKS.md, "Test suite").
# The longest files first (tests/conftest.py HEAVY_FIRST), not xdist's most-tests-first order;
# each worker's torch gets one core (tests/conftest.py).
test: env
	$(TEST_ENV) $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The wheel as users get it: fresh environment, not editable, init + one tiny round from it.
wheel-check: env
	.ci/wheel-check

# The layers (flows above bench above tasks above models; pyproject.toml [tool.importlinter]), the
# import graph without cycles, every import statement counted (tests/import_graph.py), and the
# types (mypy, zero errors; pyproject.toml [tool.mypy]).
lint: env
	$(BIN)/lint-imports
	$(BIN)/python tests/import_graph.py
	$(BIN)/mypy

test-fast: env
	$(TEST_ENV) $(BIN)/pytest -q -m "not slow"

# A real Label Studio (own environment, .ls-venv/: its dependencies conflict with coldstart's),
# every package pinned by .ci/labelstudio-constraints.txt. docs/labelstudio.md starts it.
labelstudio-env:
	.ci/labelstudio-env

# The real-server tests (marked labelstudio); SENTRY_DSN empty: no error reporting to the internet.
test-labelstudio: env labelstudio-env
	$(TEST_ENV) COLDSTART_TEST_LABELSTUDIO=1 SENTRY_DSN= $(BIN)/pytest -q -m labelstudio tests/labelstudio

bench: env
	$(TEST_ENV) $(BIN)/coldstart bench all --n 256 --json bench-all.json

clean:
	rm -rf demo-workspace demo-rounds.json .pytest_cache
