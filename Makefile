# The two commands of the README. Each installs what it needs first, idempotently.

CARGO ?= cargo
# Builds from scratch (CI) are faster without incremental compilation, and the target
# directory stays ~15 GB smaller; set CARGO_INCREMENTAL=1 to have it back.
export CARGO_INCREMENTAL ?= 0
KILN_BIND ?= 127.0.0.1:8080
# The Python with OpenAI's own client, for tests/api/openai_python.rs (in `unit`); `make
# test-deps` installs it.
export KILN_TEST_PYTHON ?= $(CURDIR)/tests/python/.venv/bin/python
# The S3 server the object storage tests start (tests/common/s3.rs); `make test-deps`
# installs it. Named here, its absence fails those tests instead of skipping them.
export KILN_TEST_S3_SERVER ?= $(CURDIR)/tools/s3s-fs/bin/s3s-fs

.PHONY: run test build lint unit api-postgres campaign deps test-deps worker-test web web-test e2e schemathesis deploy-check screenshots bench-replicas

## Build everything in release mode and start kiln on http://127.0.0.1:8080.
run: deps web
	$(CARGO) build --release --locked --bin kiln
	./target/release/kiln serve --bind $(KILN_BIND)

## Run every check and test: scripts/test.sh runs the steps below, downloads beside the
## compile and the suites in two lanes (KILN_TEST_LANES=1 for one), with a summary of
## each step's time.
test:
	@./scripts/test.sh

deps:
	@./scripts/deps.sh

## What the tests need on top: also the glTF validator (Node.js and npm required) and
## the S3 server s3s-fs (built with cargo).
test-deps:
	@./scripts/deps.sh --test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --locked --all-targets -- -D warnings
	$(CARGO) machete

## Every crate's tests; the repository tests' PostgreSQL runs (`<name>::postgres` in the
## library) are left to `api-postgres`, which has a server for them.
unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast -E 'not (binary_id(kiln) & test(/::postgres$$/))'; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi

## The API suite again on PostgreSQL (`unit` runs it on SQLite), and the repository tests'
## PostgreSQL runs: a throwaway server (scripts/with-postgres.sh; KILN_TEST_DATABASE_URL to
## use another), one database per test.
api-postgres:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		KILN_TEST_DATABASE=postgres ./scripts/with-postgres.sh $(CARGO) nextest run --locked --lib --test api \
			--no-fail-fast -E 'binary_id(kiln::api) | (binary_id(kiln) & test(/::postgres$$/))'; \
	else \
		KILN_TEST_DATABASE=postgres ./scripts/with-postgres.sh sh -c \
			'$(CARGO) test --locked --lib --no-fail-fast -- ::postgres && $(CARGO) test --locked --test api --no-fail-fast'; \
	fi

## The scale-out benchmarks (docs/benchmarks.md, not part of `make test`): task creations
## per second on SQLite, on PostgreSQL with 1 and 3 replicas, cross-replica event delivery,
## a 100 MiB result streamed to S3; release build, a throwaway PostgreSQL. About 10
## minutes after compiling. BENCH_SECTIONS="create deliver s3" picks some.
bench-replicas:
	./scripts/with-postgres.sh $(CARGO) bench --locked --bench replicas -- $(BENCH_SECTIONS)

## The fault campaign (tests/campaign, docs/reliability.md): the real binary killed with
## SIGKILL while clients upload and tasks run, a corpus of malformed requests on every
## face, and three replicas on one PostgreSQL and one S3 server (killed, restarted one by
## one, started at once); a few minutes. Its tests are #[ignore]d, so `unit` does not run
## them too. It runs under a throwaway PostgreSQL (scripts/with-postgres.sh), which only
## the replica tests use; the others stay on SQLite.
## KILN_CAMPAIGN_SEED replays a SIGKILL loop's choices; KILN_CAMPAIGN_KILLS (20) sets its length,
## KILN_CAMPAIGN_QUOTA_KILLS (12) the quota loop's.
campaign:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		./scripts/with-postgres.sh $(CARGO) nextest run --locked --test campaign --run-ignored only --no-fail-fast --no-capture; \
	else \
		./scripts/with-postgres.sh $(CARGO) test --locked --test campaign --no-fail-fast -- --ignored --nocapture --test-threads 1; \
	fi

## The TRELLIS.2 worker's tests (Python, no GPU; a stand-in pipeline). Installs worker/.venv first.
worker-test:
	@./scripts/deps.sh --worker
	cd worker && .venv/bin/python -m pytest -q

## The web page: `npm ci` when needed, then its production build into web/dist, which
## the kiln binary embeds (build.rs). Runs before any cargo build.
web:
	@./scripts/web.sh build

## The web page's unit tests (Vitest).
web-test:
	@./scripts/web.sh test

## The web page end to end: Debian's chromium (installed when missing) against the kiln
## binary, built first.
e2e: web
	$(CARGO) build --locked --bin kiln
	@./scripts/web.sh e2e

## schemathesis against the server's own OpenAPI document, every check, bounded to a
## couple of minutes (docs/reliability.md): the kiln binary, built first, in a temporary
## directory on a free port. Installs tools/schemathesis/.venv when needed.
schemathesis: web
	$(CARGO) build --locked --bin kiln
	@./scripts/schemathesis.sh

## The deployment files (docs/deploy.md), without Docker (these machines have none): the
## workflow (actionlint), the Dockerfiles (hadolint, and the image's environment checked by
## the kiln binary), deploy/compose.yaml (`docker compose config`, the Compose
## Specification's schema, its variables, its kiln configuration), deploy/k8s (Kubernetes'
## schemas), the entrypoint script (shellcheck; run with a stand-in and with the real
## binary), deploy/nginx.conf (run by Debian's nginx) and deploy/garage-init.py. Installs
## tools/deploy-check/.venv first.
deploy-check: web
	$(CARGO) build --locked --bin kiln
	@./scripts/deploy-check.sh

## Screenshots of every screen for docs/screenshots (not part of `make test`).
screenshots: web
	$(CARGO) build --locked --bin kiln
	@./scripts/web.sh shots
