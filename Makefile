# The README's verbs. Every target does its own set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= $(shell PYENV_VERSION=3.13.0 pyenv which python 2>/dev/null || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

# SAM CLI and cfn-lint pin their own boto3/pydantic, so they live in a venv of their own.
TOOLS := .tools
TOOLS_STAMP := $(TOOLS)/.installed-stamp
TOOL_REQUIREMENTS := 'aws-sam-cli==1.*' 'cfn-lint==1.*'
# sam runs src/Makefile with this PATH: its python3 (the tools venv's) downloads the Lambda wheels.
# That make must not inherit this one's flags (jobserver, -n, variable overrides).
SAM := env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL PATH="$(CURDIR)/$(TOOLS)/bin:$$PATH" SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION="$${AWS_DEFAULT_REGION:-$${AWS_REGION:-us-east-1}}" $(TOOLS)/bin/sam

# Everything that goes into .aws-sam/build: `make build` reruns sam build only when one changed
# (directories too, so that a deleted file also counts).
BUILD_INPUTS := template.yaml samconfig.toml src/Makefile src/requirements.txt src/run.sh \
	$(shell find src/tollgate prompts -not -path '*/__pycache__*' -not -name '*.pyc' 2>/dev/null)
BUILT_TEMPLATE := .aws-sam/build/template.yaml

.PHONY: run test lint typecheck unit validate build deploy tools browser-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --upgrade pip
	$(TOOLS)/bin/pip install --quiet $(TOOL_REQUIREMENTS)
	touch $@

tools: $(TOOLS_STAMP)

## run: the whole gateway on this machine (local DynamoDB, offline model server unless OPENAI_API_KEY is set)
run: $(STAMP)
	exec $(BIN)/python -m tollgate.local.run

## aggregate: run the cost aggregator in-process against `make run`'s local servers (EVENT=events/<file>.json)
.PHONY: aggregate
aggregate: $(STAMP)
	@test -n "$(EVENT)" || { echo "usage: make aggregate EVENT=events/aggregator_scheduled.json" >&2; exit 2; }
	$(BIN)/python -m tollgate.local.aggregate --event "$(EVENT)" $(if $(AS_OF),--as-of "$(AS_OF)")

## test: lint, types, template validation, the Lambda build, then the whole test suite
test: lint typecheck validate build browser-deps
	$(BIN)/pytest

# Headless Chromium from Debian and playwright-core from npm (which never downloads a browser).
BROWSER_STAMP := tests/browser/node_modules/.installed-stamp
browser-deps: $(BROWSER_STAMP)
$(BROWSER_STAMP): tests/browser/package-lock.json
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	npm ci --silent --prefix tests/browser
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## bench: overhead, cold start and cost side by side with their floors (a few minutes);
## writes docs/bench.json and docs/BENCHMARKS.md. BENCH_ARGS="--quick" for a smoke run.
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

## validate: the SAM template, including cfn-lint
validate: $(TOOLS_STAMP)
	$(SAM) validate --lint

## build: the Lambda artifacts in .aws-sam/build (arm64 wheels from PyPI, code, prompts, encodings)
build: $(BUILT_TEMPLATE)

$(BUILT_TEMPLATE): $(TOOLS_STAMP) $(BUILD_INPUTS)
	$(SAM) build

## deploy: build, then `sam deploy --guided` (asks for region and parameters, saves them in samconfig.toml)
deploy: build
	$(SAM) deploy --guided

## invoke: a Lambda event through the real code without Docker (EVENT=events/<file>.json): a function
## URL event is mapped to the request the Web Adapter sends and its streamed body printed; an
## aggregator event runs like `make aggregate`
.PHONY: invoke
invoke: $(STAMP)
	@test -n "$(EVENT)" || { echo "usage: make invoke EVENT=events/function_url_chat.json" >&2; exit 2; }
	$(BIN)/python -m tollgate.local.invoke --event "$(EVENT)" $(if $(AS_OF),--as-of "$(AS_OF)")
