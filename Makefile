# authd: the usual targets. `make help` lists them.
CARGO ?= cargo
AUTHD := target/release/authd
PYTHON ?= python3
# Development tools (pre-commit, commitizen, git-cliff), pinned in scripts/dev-requirements.txt.
DEV_VENV := .venv-dev

.PHONY: help build run migrate test test-sqlite lint fmt openapi clean run-docker test-docker check-deploy bench bench-smoke conformance examples setup changelog deny release

help: ## List targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## Build the release binary (target/release/authd)
	$(CARGO) build --release --locked

run: ## Run the server with ./config and AUTHD_* settings
	$(CARGO) run --release --locked -- serve

migrate: ## Apply database migrations (database.url / DATABASE_URL)
	$(CARGO) run --release --locked -- migrate

test: ## All tests: PostgreSQL (throwaway unless DATABASE_URL is set) and SQLite passes side by side
	./scripts/test.sh

test-sqlite: ## The backend-neutral integration tests on SQLite only (no PostgreSQL needed)
	AUTHD_TEST_BACKEND=sqlite $(CARGO) test --locked --test it -- both::

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt: ## Format the code
	$(CARGO) fmt --all

setup: $(DEV_VENV)/.installed ## Install the git hooks: fmt and clippy before a commit, a conventional message (.venv-dev/)
	$(DEV_VENV)/bin/pre-commit install --install-hooks

# The venv is rebuilt when the pinned requirements change.
$(DEV_VENV)/.installed: scripts/dev-requirements.txt
	rm -rf $(DEV_VENV)
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install --quiet --disable-pip-version-check --no-input -r scripts/dev-requirements.txt
	touch $@

changelog: $(DEV_VENV)/.installed ## Regenerate CHANGELOG.md from the conventional commits (git-cliff, cliff.toml)
	$(DEV_VENV)/bin/git-cliff --config cliff.toml --output CHANGELOG.md

deny: ## cargo deny: licenses, bans and sources of the dependency tree (deny.toml; installs cargo-deny)
	bash scripts/deny.sh

conformance: ## Fuzz a served authd against its OpenAPI document (schemathesis; see README)
	./scripts/conformance.sh

examples: ## Run the example verifiers (Rust resource server, PyJWT) against a live authd
	./scripts/examples.sh

openapi: ## Regenerate openapi.json from the code
	$(CARGO) run --locked --quiet -- openapi > openapi.json

clean: ## Remove build output
	$(CARGO) clean

run-docker: ## PostgreSQL, Mailpit (inbox: http://127.0.0.1:8025) and authd on :5050, in Docker
	docker compose up --build

test-docker: ## `make test` inside the Rust image, against a PostgreSQL container
	docker compose --profile test run --rm --build test; \
	status=$$?; \
	docker compose --profile test rm --stop --force -v test-postgres; \
	exit $$status

check-deploy: ## Lint the Dockerfile, validate docker-compose.yml, replay its steps without Docker
	bash scripts/check-deploy.sh

bench: ## Load benchmark on a throwaway PostgreSQL (see BENCHMARKS.md; BENCH_ARGS=--help)
	$(CARGO) build --release --locked -p authd -p authd-bench
	./scripts/with-postgres.sh target/release/authd-bench $(BENCH_ARGS)

release: $(DEV_VENV)/.installed ## Cut a release: version (VERSION=X.Y.Z, else git-cliff's bump) in Cargo.toml, Cargo.lock, openapi.json, CHANGELOG.md; commit and tag
	VERSION=$(VERSION) ./scripts/release.sh

# The debug build `make test` made (one `cargo build --workspace`: the same features, so nothing
# compiles again); authd-bench runs the authd beside it, target/debug/authd.
bench-smoke: ## A 1 s smoke run of the benchmark on the debug build (CI; its figures mean nothing)
	$(CARGO) build --workspace --locked
	./scripts/with-postgres.sh target/debug/authd-bench --secs 1 --cost 4 --import-rows 10000
