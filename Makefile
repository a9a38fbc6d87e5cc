# The two commands of the README. Each installs what it needs first, idempotently.

CARGO ?= cargo
KILN_BIND ?= 127.0.0.1:8080

.PHONY: run test build lint unit deps test-deps

## Build everything in release mode and start kiln on http://127.0.0.1:8080.
run: deps
	$(CARGO) build --release --locked --bin kiln
	./target/release/kiln serve --bind $(KILN_BIND)

## Run every check and test.
test: test-deps lint unit

deps:
	@./scripts/deps.sh

## What the tests need on top: also the glTF validator (Node.js and npm required).
test-deps:
	@./scripts/deps.sh --test

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --locked --all-targets -- -D warnings

unit:
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --locked --no-fail-fast; \
	else \
		$(CARGO) test --workspace --locked --no-fail-fast; \
	fi
