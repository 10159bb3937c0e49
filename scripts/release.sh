#!/usr/bin/env bash
# Cuts a release (`make release`, or `make release VERSION=X.Y.Z`): the version (by default the
# one git-cliff's bump rules give for the commits since the last release) goes into Cargo.toml,
# which is what `authd --version` and the OpenAPI document's `info.version` say, into Cargo.lock
# and openapi.json; CHANGELOG.md is regenerated with it; then the release commit
# `chore(release): vX.Y.Z` is made and tagged. A unit test (`release_versions_agree`) keeps
# Cargo.toml, CHANGELOG.md and openapi.json in step between releases.
set -euo pipefail
cd "$(dirname "$0")/.."

make --no-print-directory .venv-dev/.installed
cliff=(.venv-dev/bin/git-cliff --config cliff.toml)

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "release: commit or stash your changes first" >&2
    exit 1
fi

# Tags do not travel with every clone of the repository; the release commits say where each
# release was, so git-cliff finds every earlier one.
git log --format='%H %s' \
    | sed -n 's/^\([0-9a-f]*\) chore(release): \(v[0-9][0-9.]*\):.*/\1 \2/p' \
    | while read -r commit tag; do git tag -f "$tag" "$commit" >/dev/null; done

version="${VERSION:-$("${cliff[@]}" --bumped-version)}"
version="${version#v}"
if ! [[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
    echo "release: $version is not a version (X.Y.Z)" >&2
    exit 1
fi
if git rev-parse -q --verify "refs/tags/v$version" >/dev/null; then
    echo "release: v$version exists already" >&2
    exit 1
fi

# The first `version = ` line of Cargo.toml is the package's (the workspace table has none).
sed -i "0,/^version = \".*\"/s//version = \"$version\"/" Cargo.toml
cargo update --workspace --offline --quiet
cargo run --locked --quiet -- openapi > openapi.json
"${cliff[@]}" --tag "v$version" --output CHANGELOG.md

git add Cargo.toml Cargo.lock openapi.json CHANGELOG.md
git commit --quiet -m "chore(release): v$version: CHANGELOG.md regenerated"
git tag -f "v$version" >/dev/null
echo "released v$version: $(git rev-parse --short HEAD) (tag v$version)"
