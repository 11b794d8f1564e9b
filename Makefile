# LUKHAS Context — developer entry points. `make help` lists them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv up redis-server down status test test-unit test-pure test-integration lint format typecheck bench clean \
        compose-build compose-up compose-down compose-clean bench-compose

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]" -c constraints.txt
	touch $(STAMP)

venv: $(STAMP)  ## Create .venv with the package (editable) and the dev tools

up: $(STAMP) redis-server  ## Start Kafka, Redis, the topics and a processor; then write and read a context
	$(BIN)/lukhas up
	$(BIN)/lukhas demo

# `lukhas up` never installs packages by itself; `make up` does, here, where it shows.
redis-server:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make up: redis-server is not installed; installing it: apt-get install redis-server"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	  else \
	    echo "make up: redis-server is not installed: install it (Debian: sudo apt-get install redis-server; macOS: brew install redis), then run make up again" >&2; \
	    exit 1; \
	  fi; }

down: $(STAMP)  ## Stop what `make up` started (keeps the data in .lukhas/)
	$(BIN)/lukhas down

status: $(STAMP)  ## Show the local cluster's status
	$(BIN)/lukhas status

test: lint typecheck  ## Lint, type-check, every test (starts its own Kafka and redis-server), then the unit tests without the native extension
	$(BIN)/pytest
	LUKHAS_TEST_PURE_PYTHON=1 $(BIN)/pytest tests/unit -q

test-pure: $(STAMP)  ## The unit tests with the native extension switched off (as without a C compiler)
	LUKHAS_TEST_PURE_PYTHON=1 $(BIN)/pytest tests/unit

test-unit: $(STAMP)  ## Run the unit tests only (no broker)
	$(BIN)/pytest tests/unit

test-integration: $(STAMP)  ## Run the integration tests only
	$(BIN)/pytest tests/integration

lint: $(STAMP)  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# mypy cannot follow the editable install's import hook (STYLE.md trap 3), so it checks a
# regular install of the package in a scratch target directory.
typecheck: $(STAMP)  ## mypy --strict over the installed package
	rm -rf build/typecheck
	$(BIN)/pip install -q --no-deps --no-build-isolation --target build/typecheck .
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p lukhas_context

bench: $(STAMP)  ## Materialisation throughput vs a bare consumer (starts its own cluster)
	$(BIN)/python benchmarks/materialize.py
	$(BIN)/python benchmarks/restore.py
	$(BIN)/python benchmarks/changes.py
	$(BIN)/python benchmarks/verify.py
	$(BIN)/python benchmarks/history.py
	$(BIN)/python benchmarks/locks.py
	$(BIN)/python benchmarks/fences.py
	$(BIN)/python benchmarks/transactions.py
	$(BIN)/python benchmarks/failover_local.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/reads.py
	$(BIN)/python benchmarks/guards.py
	$(BIN)/python benchmarks/ttl_touch.py
	$(BIN)/pip install -q -e ".[bench]" -c constraints.txt
	$(BIN)/python benchmarks/peers.py

# The compose cluster (docker-compose.yml), the second way to run it: needs a Docker engine.
COMPOSE_ENV := LUKHAS_BOOTSTRAP=127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094 \
               LUKHAS_API_URL=http://127.0.0.1:28081,http://127.0.0.1:28082

compose-build: $(STAMP)  ## Build the compose images (a Debian base by debootstrap if docker has none)
	PYTHON=$(BIN)/python bash docker/compose.sh build

compose-up: $(STAMP)  ## Start the docker compose cluster (3 Kafka nodes, Redis, 2 workers), then the demo
	PYTHON=$(BIN)/python bash docker/compose.sh up
	$(COMPOSE_ENV) $(BIN)/lukhas demo

bench-compose: $(STAMP)  ## Failover time of the compose cluster (needs `make compose-up`)
	$(BIN)/python benchmarks/failover.py

compose-down:  ## Stop the compose cluster (keeps its volumes)
	bash docker/compose.sh down

compose-clean:  ## Stop the compose cluster and remove its volumes
	bash docker/compose.sh clean

clean:  ## Remove build output (not .venv, not .lukhas)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
