# syntax=docker/dockerfile:1
#
# The kiln server image: the web page built with npm, kiln built with cargo (the page
# embedded, as `make run` does), and a small Debian runtime that runs it as a non-root
# user. See docs/deploy.md.
#
#   docker build -t kiln .
#   docker run -p 8080:8080 -v kiln-data:/var/lib/kiln kiln
#
# `make deploy-check` lints this file (hadolint) and runs its entrypoint script and
# environment against the real binary; nothing here can be built on the development
# machines, which have no Docker daemon. CI builds it on every push.

# --- 1. The web page (web/, as scripts/web.sh build does: npm ci, then npm run build) ---
FROM node:22-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY web/ ./
RUN npm run build --silent

# --- 2. kiln, release build, with the page in web/dist for build.rs to embed ---
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=web /src/web/dist web/dist
# The registry and target directories are BuildKit caches, so a rebuild after a source
# change compiles kiln and not its dependencies; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kiln \
    && install -m 0755 target/release/kiln /usr/local/bin/kiln

# --- 3. The runtime image ---
FROM debian:bookworm-slim AS runtime
# ca-certificates for HTTPS to cloud providers and object storage; tzdata so that TZ
# places retention.run_at (a local time of day). Unpinned on purpose: the versions are
# Debian bookworm's current security updates, which replace older ones in the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid kiln --home-dir /var/lib/kiln --shell /usr/sbin/nologin kiln \
    && mkdir -p /var/lib/kiln \
    && chown kiln:kiln /var/lib/kiln
COPY --from=build /usr/local/bin/kiln /usr/local/bin/kiln
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# Listen on every interface of the container; keep the database, stored files and the
# sealing key in the volume; log to stderr only (the container runtime keeps it).
ENV KILN_SERVER__BIND=0.0.0.0:8080 \
    KILN_SERVER__DATA_DIR=/var/lib/kiln \
    KILN_LOG__DIR=""

USER 10001:10001
WORKDIR /var/lib/kiln
VOLUME ["/var/lib/kiln"]
EXPOSE 8080
# kiln answers SIGTERM by finishing open requests and running tasks within
# server.shutdown_grace (30 s): give `docker stop` a longer timeout (`-t 40`,
# compose's stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/docker-entrypoint.sh", "health"]
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["serve"]
