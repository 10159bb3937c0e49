# syntax=docker/dockerfile:1
#
# authd in a container.
#
#   docker build -t authd .       the runtime image (the last stage)
#   docker compose up --build     authd with PostgreSQL and a development mail inbox (make run-docker)
#
# Stages:
#   toolchain  the Rust toolchain and the source
#   test       the toolchain with Debian's chromium for the page tests; `make test-docker` runs
#              `make test` in it
#   builder    `cargo build --release --locked`, the same command as `make build`
#   runtime    distroless: glibc, CA certificates, the binary, a non-root user; no shell, no
#              package manager. SQLite is bundled and TLS is rustls, so nothing else is needed.
#
# Configuration is the same as outside a container: AUTHD_<SECTION>__<KEY> variables (README,
# "Configuration"), e.g. AUTHD_DATABASE__URL, AUTHD_KEYS__ENCRYPTION_KEY, AUTHD_MAIL__SMTP__HOST. The
# image sets only what a container needs: listen on all interfaces, keep files in /var/lib/authd.

FROM rust:1-bookworm AS toolchain
WORKDIR /src
COPY . .

FROM toolchain AS test
# The page tests drive a headless Chromium over the DevTools protocol. Not pinned to a version:
# Debian replaces chromium with each security update and drops the old one from the archive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium \
    && rm -rf /var/lib/apt/lists/*

FROM toolchain AS builder
# The caches keep downloaded crates and compiled dependencies between builds; they are not
# part of any image.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
    && install -D -m 0755 target/release/authd /out/authd \
    && mkdir -p /out/data

# cc-debian12 is Debian 12 (the builder's glibc 2.36) with libgcc and ca-certificates; the
# `nonroot` variant runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/authd /usr/local/bin/authd
# The data directory holds the SQLite file and a generated key-encryption key when those are
# used; with PostgreSQL and AUTHD_KEYS__ENCRYPTION_KEY (production) nothing is written to it.
COPY --from=builder --chown=65532:65532 /out/data /var/lib/authd
ENV AUTHD_HTTP__ADDR=0.0.0.0:5050 \
    AUTHD_DATA_DIR=/var/lib/authd
WORKDIR /var/lib/authd
USER 65532:65532
EXPOSE 5050
# GET /healthz on the configured http.addr, exit 0 on 200: no curl needed in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/authd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/authd"]
CMD ["serve"]
