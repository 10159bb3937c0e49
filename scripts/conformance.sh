#!/usr/bin/env bash
# API conformance: serves authd and runs the schemathesis fuzzer against its OpenAPI document.
# It fails on any 5xx, any status, content type, header or body the document does not describe.
#
#   scripts/conformance.sh          the served /openapi.json must pass; then, as a check of the
#                                   check, a copy without the 400 of POST /login must fail
#   scripts/conformance.sh SPEC     run against the document in file SPEC only (exit status:
#                                   schemathesis's)
#
# authd runs from the debug build (`make test` has already compiled it) on SQLite in a
# temporary data directory, with the `log` mail transport, bcrypt cost 4 and the rate limits off
# (429 stays documented, but the fuzzer should see more than 429s). A user with and one without
# two-factor login are registered first, so /users/me gets a real access token and /login/otp a
# live challenge (scripts/conformance.toml). schemathesis is pinned in
# scripts/conformance-requirements.txt and installed from PyPI into target/conformance-venv.
# CONFORMANCE_EXAMPLES (default 300) bounds the test cases per operation and phase;
# CONFORMANCE_CHECKS replaces the list of checks.
set -euo pipefail

if [ "$#" -gt 1 ] || [[ "${1:-}" == -* ]]; then
    echo "usage: $0 [SPEC_FILE]" >&2
    exit 2
fi
spec_file=""
if [ -n "${1:-}" ]; then
    if [ ! -f "$1" ]; then
        echo "error: $1 is not a file" >&2
        exit 2
    fi
    # Absolute, since schemathesis runs from a temporary directory.
    spec_file="$(realpath "$1")"
fi

cd "$(dirname "$0")/.."

EXAMPLES="${CONFORMANCE_EXAMPLES:-300}"
VENV=target/conformance-venv
REQUIREMENTS=scripts/conformance-requirements.txt
# Every check of schemathesis but positive_data_acceptance, which expects a 2xx for any request
# that fits the schema: a wrong password or a common one fits it too. The stateful checks
# (use_after_free, ...) need links between operations, which the document has none of.
CHECKS="${CONFORMANCE_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,missing_required_header,unsupported_method,allow_header_conformance,ignored_auth}"

echo "--> schemathesis (pinned in $REQUIREMENTS)"
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi
"$VENV/bin/st" --version

echo "--> authd (debug build)"
# The whole workspace, as `make test` builds it: the same features, so nothing compiles again.
cargo build --workspace --locked --quiet
authd=target/debug/authd
VENV_ABS="$PWD/$VENV"

work="$(mktemp -d)"
pid=""
stop_authd() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        wait "$pid" || true
    fi
    pid=""
}
cleanup() {
    stop_authd
    rm -rf "$work"
}
trap cleanup EXIT

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# Only the settings chosen here: none of the caller's AUTHD_* variables or DATABASE_URL.
for variable in $(compgen -e); do
    case "$variable" in AUTHD_* | DATABASE_URL) unset "$variable" ;; esac
done
AUTHD_ENV=development \
    AUTHD_DATA_DIR="$work/data" \
    AUTHD_HTTP__ADDR="127.0.0.1:$port" \
    AUTHD_MAIL__TRANSPORT=log \
    AUTHD_PASSWORD__BCRYPT_COST=4 \
    AUTHD_RATE_LIMIT__ENABLED=false \
    AUTHD_OTP__MAX_ATTEMPTS=1000000 \
    AUTHD_LOG__FORMAT=json \
    RUST_LOG=info,authd::access=debug \
    "$authd" serve 2>"$work/authd.log" &
pid=$!

show_log() {
    echo "--- authd log (last 40 lines) ---" >&2
    tail -n 40 "$work/authd.log" >&2 || true
}
for _ in $(seq 100); do
    if curl -fsS -o /dev/null "$base/healthz" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: authd exited before answering /healthz" >&2
        show_log
        exit 1
    fi
    sleep 0.1
done
curl -fsS -o /dev/null "$base/healthz" || { echo "error: authd did not answer /healthz" >&2; show_log; exit 1; }
echo "authd serves $base"

# POST a JSON body, print one field of the JSON answer; fail unless the status is the one expected.
post_json() {
    local path="$1" body="$2" expected="$3" field="$4" out status
    out="$work/answer.json"
    status="$(curl -sS -o "$out" -w '%{http_code}' "$base$path" -H 'content-type: application/json' -d "$body")"
    if [ "$status" != "$expected" ]; then
        echo "error: POST $path answered $status, not $expected: $(cat "$out")" >&2
        show_log
        exit 1
    fi
    [ -z "$field" ] || python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$out" "$field"
}
password="fuzzing-conformance-7351"
post_json /register "{\"email\":\"plain@example.test\",\"password\":\"$password\"}" 201 ""
post_json /register "{\"email\":\"second@example.test\",\"password\":\"$password\",\"two_factor_enabled\":true}" 201 ""
AUTHD_CONFORMANCE_ACCESS_TOKEN="$(post_json /login "{\"email\":\"plain@example.test\",\"password\":\"$password\"}" 200 access_token)"
AUTHD_CONFORMANCE_CHALLENGE_TOKEN="$(post_json /login "{\"email\":\"second@example.test\",\"password\":\"$password\"}" 200 challenge_token)"
export AUTHD_CONFORMANCE_ACCESS_TOKEN AUTHD_CONFORMANCE_CHALLENGE_TOKEN

# Runs schemathesis against the document $1 (a URL or a file), with more options in "$@".
fuzz() {
    local spec="$1" config="$PWD/scripts/conformance.toml"
    shift
    # From the temporary directory, where schemathesis and hypothesis leave their caches; with
    # no database of earlier failures, so every run starts as fresh as in CI.
    (cd "$work" && "$VENV_ABS/bin/st" --no-color --config-file "$config" run "$spec" \
        --url "$base" \
        --checks "$CHECKS" \
        --max-examples "$EXAMPLES" \
        --workers 2 \
        --request-timeout 10 \
        --warnings off \
        --generation-database none \
        "$@")
}

status=0
if [ -n "$spec_file" ]; then
    echo "--> schemathesis against $spec_file"
    fuzz "$spec_file" || status=$?
else
    echo "--> schemathesis against the served $base/openapi.json: must pass"
    if ! fuzz "$base/openapi.json"; then
        echo "error: authd does not conform to its OpenAPI document (above)" >&2
        status=1
    fi
    echo "--> check of the check: without the 400 of POST /login the same run must fail"
    curl -fsS "$base/openapi.json" | python3 -c '
import json, sys
doc = json.load(sys.stdin)
del doc["paths"]["/login"]["post"]["responses"]["400"]
json.dump(doc, sys.stdout)' >"$work/without-400.json"
    if fuzz "$work/without-400.json" --include-operation-id login >"$work/self-check.log" 2>&1; then
        cat "$work/self-check.log"
        echo "error: schemathesis passed a document that lacks a status authd answers" >&2
        status=1
    elif grep -q "Undocumented status code" "$work/self-check.log" \
        && grep -q "Received: 400" "$work/self-check.log"; then
        echo "ok: it failed on the undocumented 400"
    else
        cat "$work/self-check.log"
        echo "error: schemathesis failed, but not on the removed status" >&2
        status=1
    fi
fi

if ! kill -0 "$pid" 2>/dev/null; then
    echo "error: authd died during the run" >&2
    status=1
fi
if grep -q '"level":"ERROR"' "$work/authd.log"; then
    echo "error: authd logged errors during the run:" >&2
    grep '"level":"ERROR"' "$work/authd.log" | head -n 20 >&2
    status=1
fi
stop_authd
echo "--> what authd answered, by route (access log)"
python3 - "$work/authd.log" <<'PY'
import collections, json, sys
seen = collections.defaultdict(collections.Counter)
routes = ("/register", "/login", "/login/otp", "/users/me", "/healthz", "/readyz")
for line in open(sys.argv[1], errors="replace"):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry.get("target") != "authd::access":
        continue
    span, status = entry.get("span", {}), entry["fields"]["status"]
    operation = f'{span.get("method")} {span.get("route")}'
    if span.get("route") not in routes or status == 405:
        operation = "anything else"
    seen[operation][status] += 1
for operation in sorted(seen, key=lambda o: (o == "anything else", o)):
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(seen[operation].items()))
    print(f"  {operation:18} {statuses}")
PY
exit "$status"
