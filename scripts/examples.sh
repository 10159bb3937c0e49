#!/usr/bin/env bash
# The examples of how a service accepts authd's access tokens, run against a real authd:
# examples/resource-server (Rust, axum, over HTTP with curl) and examples/pyjwt_verify.py (PyJWT's
# PyJWKClient). Each of the two must
#   - accept a fresh access token (and name its user and key);
#   - refuse a challenge token (the second login step of a user with two-factor login);
#   - refuse an access token carrying another token's signature;
#   - refuse a token whose key was revoked (`authd keys revoke` of the current key), once its
#     cache of the JWKS has expired, and accept a token from a new login (the new current key);
#   - refuse an access token once its `exp` has passed.
# It also checks that the JWKS holds public keys only, with the `Cache-Control` authd promises.
#
#   scripts/examples.sh                          once per algorithm, ES256 then EdDSA
#   EXAMPLES_ALGORITHMS=ES256 scripts/examples.sh   one of them
#
# authd runs from the debug build on SQLite in a temporary data directory, loopback only, with
# the `log` mail transport, bcrypt cost 4 and the rate limits off. keys.refresh_secs = 1 (so the
# JWKS says `max-age=1`) and jwt.access_ttl_secs = 10 keep the waits short; every wait is
# bounded. PyJWT is pinned in examples/requirements.txt and installed from PyPI into
# target/examples-venv.
set -euo pipefail

if [ "$#" -gt 0 ]; then
    echo "usage: $0   (EXAMPLES_ALGORITHMS=\"ES256 EdDSA\" chooses the algorithms)" >&2
    exit 2
fi
cd "$(dirname "$0")/.."

ALGORITHMS="${EXAMPLES_ALGORITHMS:-ES256 EdDSA}"
ACCESS_TTL=10
VENV=target/examples-venv
REQUIREMENTS=examples/requirements.txt

echo "--> PyJWT (pinned in $REQUIREMENTS)"
if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.txt" 2>/dev/null; then
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$VENV/requirements.txt"
fi
"$VENV/bin/python" -c 'import jwt; print("PyJWT", jwt.__version__)'

echo "--> authd and the example resource server (debug builds)"
# One build of the whole workspace, as `make test` makes it: the same features, so nothing
# compiles again (a build of one package alone would resolve other features and rebuild).
cargo build --workspace --locked --quiet
authd=target/debug/authd
resource_server=target/debug/authd-example-resource-server

# Only the settings chosen here: none of the caller's AUTHD_* variables or DATABASE_URL. And
# nothing on loopback goes through a proxy (curl, reqwest and urllib all read these).
for variable in $(compgen -e); do
    case "$variable" in AUTHD_* | DATABASE_URL) unset "$variable" ;; esac
done
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

work="$(mktemp -d)"
authd_pid=""
resource_pid=""
stop() {
    local pid
    for pid in "$resource_pid" "$authd_pid"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            wait "$pid" 2>/dev/null || true
        fi
    done
    authd_pid=""
    resource_pid=""
}
cleanup() {
    stop
    rm -rf "$work"
}
trap cleanup EXIT

show_logs() {
    local log
    for log in "$work"/authd.log "$work"/resource-server.log; do
        [ -f "$log" ] || continue
        echo "--- $log (last 30 lines) ---" >&2
        tail -n 30 "$log" >&2 || true
    done
}
fail() {
    echo "FAIL: $*" >&2
    show_logs
    exit 1
}
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# json_field FILE KEY: one member of the JSON object in FILE.
json_field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}
# jwt_field TOKEN PART KEY: a member of the token's header (PART 0) or claims (PART 1), unverified.
jwt_field() {
    python3 -c '
import base64, json, sys
part = sys.argv[1].split(".")[int(sys.argv[2])]
print(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))[sys.argv[3]])' "$1" "$2" "$3"
}

# The authd under test: its settings, for `serve` and for the admin commands alike.
authd_env=()
authd_cli() {
    env "${authd_env[@]}" "$authd" "$@"
}
start_authd() {
    local algorithm="$1" port
    port="$(free_port)"
    base="http://127.0.0.1:$port"
    authd_env=(
        AUTHD_ENV=development
        AUTHD_DATA_DIR="$work/data-$algorithm"
        AUTHD_HTTP__ADDR="127.0.0.1:$port"
        AUTHD_MAIL__TRANSPORT=log
        AUTHD_PASSWORD__BCRYPT_COST=4
        AUTHD_RATE_LIMIT__ENABLED=false
        AUTHD_JWT__ALGORITHM="$algorithm"
        AUTHD_JWT__ACCESS_TTL_SECS="$ACCESS_TTL"
        AUTHD_KEYS__REFRESH_SECS=1
        AUTHD_LOG__FORMAT=json
    )
    env "${authd_env[@]}" "$authd" serve 2>"$work/authd.log" &
    authd_pid=$!
    for _ in $(seq 100); do
        if curl -fsS -o /dev/null "$base/readyz" 2>/dev/null; then
            echo "authd ($algorithm) serves $base"
            return
        fi
        kill -0 "$authd_pid" 2>/dev/null || fail "authd exited before answering /readyz"
        sleep 0.1
    done
    fail "authd did not answer /readyz within 10 s"
}
start_resource_server() {
    local port
    port="$(free_port)"
    resource_base="http://127.0.0.1:$port"
    "$resource_server" --listen "127.0.0.1:$port" --jwks-url "$jwks_url" \
        2>"$work/resource-server.log" &
    resource_pid=$!
    for _ in $(seq 100); do
        # Up when it refuses a request without a token.
        if [ "$(curl -sS -o /dev/null -w '%{http_code}' "$resource_base/hello" 2>/dev/null)" = 401 ]; then
            echo "the resource server serves $resource_base"
            return
        fi
        kill -0 "$resource_pid" 2>/dev/null || fail "the resource server exited before answering"
        sleep 0.1
    done
    fail "the resource server did not answer within 10 s"
}

# get URL FILE [HEADERS_FILE]: GET URL into FILE (its headers into HEADERS_FILE); expect 200.
get() {
    local status
    status="$(curl -sS -o "$2" -D "${3:-/dev/null}" -w '%{http_code}' "$1")" || fail "GET $1: no answer"
    [ "$status" = 200 ] || fail "GET $1: expected 200, got $status: $(cat "$2")"
}
# post_json PATH BODY FIELD: POST to authd, expect 200 or 201, print FIELD of the answer.
post_json() {
    local out="$work/answer.json" status
    status="$(curl -sS -o "$out" -w '%{http_code}' "$base$1" -H 'content-type: application/json' -d "$2")"
    case "$status" in
        200 | 201) json_field "$out" "$3" ;;
        *) fail "POST $1: expected 200 or 201, got $status: $(cat "$out")" ;;
    esac
}
password="example-service-4182"
login() {
    post_json /login "{\"email\":\"$1\",\"password\":\"$password\"}" "$2"
}
# The kid of the one key in state `current`, from the admin command.
current_kid() {
    authd_cli keys list --format json >"$work/keys.json" || fail "authd keys list failed"
    python3 - "$work/keys.json" <<'PY' || fail "keys list: expected one current key, got: $(cat "$work/keys.json")"
import json, sys
current = [key["kid"] for key in json.load(open(sys.argv[1])) if key["state"] == "current"]
if len(current) != 1:
    sys.exit(1)
print(current[0])
PY
}

# The verdicts, one line each: "accepted sub=..." or "refused: reason".
rust_verdict() {
    local out="$work/hello.json" status
    status="$(curl -sS -o "$out" -w '%{http_code}' "$resource_base/hello" -H "authorization: Bearer $1")"
    case "$status" in
        200) echo "accepted sub=$(json_field "$out" sub) kid=$(json_field "$out" kid)" ;;
        401) echo "refused: $(json_field "$out" reason)" ;;
        *) echo "status $status: $(cat "$out")" ;;
    esac
}
python_verdict() {
    local out status=0
    out="$("$VENV/bin/python" examples/pyjwt_verify.py "$jwks_url" "$1" 2>&1)" || status=$?
    echo "$out (exit $status)"
}
# expect VERIFIER WHAT PATTERN TOKEN: VERIFIER's verdict on TOKEN must match the glob PATTERN.
expect() {
    local got
    got="$("$1"_verdict "$4")"
    # shellcheck disable=SC2053 # the pattern is a glob on purpose
    [[ "$got" == $3 ]] || fail "$1 on $2: expected \"$3\", got \"$got\""
    echo "ok: $1, $2: $got"
}

check_jwks() {
    local algorithm="$1"
    get "$jwks_url" "$work/jwks.json" "$work/jwks.headers"
    python3 - "$work/jwks.json" "$work/jwks.headers" "$algorithm" <<'PY' || fail "the JWKS (above)"
import json, sys
jwks, algorithm = json.load(open(sys.argv[1])), sys.argv[3]
headers = [line.strip().lower() for line in open(sys.argv[2])]
problems = []
if "cache-control: public, max-age=1" not in headers:
    problems.append(f"expected Cache-Control: public, max-age=1, got headers {headers}")
keys = jwks.get("keys") or []
if not keys:
    problems.append("expected at least one key, got none")
shapes = {"ES256": ("EC", "P-256"), "EdDSA": ("OKP", "Ed25519")}
for key in keys:
    private = sorted(set(key) & {"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
    if private:
        problems.append(f"expected public members only, got {private} in key {key.get('kid')}")
    if not key.get("kid") or key.get("use") != "sig":
        problems.append(f"expected a kid and use=sig, got {key}")
    if (key.get("alg"), (key.get("kty"), key.get("crv"))) != (algorithm, shapes[algorithm]):
        problems.append(f"expected an {algorithm} key {shapes[algorithm]}, got {key}")
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
    echo "ok: the JWKS has $(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["keys"]))' "$work/jwks.json") public $algorithm key(s), max-age=1"
}

run_suite() {
    local algorithm="$1"
    echo "==> $algorithm"
    start_authd "$algorithm"
    get "$base/.well-known/oauth-authorization-server" "$work/metadata.json"
    local issuer jwks_uri
    issuer="$(json_field "$work/metadata.json" issuer)"
    jwks_uri="$(json_field "$work/metadata.json" jwks_uri)"
    [ "$issuer" = authd ] || fail "metadata: expected issuer authd, got $issuer"
    [[ "$jwks_uri" == */.well-known/jwks.json ]] \
        || fail "metadata: expected a jwks_uri ending in /.well-known/jwks.json, got $jwks_uri"
    jwks_url="$base/.well-known/jwks.json"
    check_jwks "$algorithm"
    start_resource_server

    local user sub
    user="ada-$algorithm@example.test"
    sub="$(post_json /register "{\"email\":\"$user\",\"password\":\"$password\"}" id)"
    post_json /register "{\"email\":\"grace-$algorithm@example.test\",\"password\":\"$password\",\"two_factor_enabled\":true}" id >/dev/null

    echo "--> a fresh access token, a challenge token, a forged signature"
    local kid token other challenge
    kid="$(current_kid)"
    token="$(login "$user" access_token)"
    other="$(login "$user" access_token)"
    challenge="$(login "grace-$algorithm@example.test" challenge_token)"
    [ "$(jwt_field "$token" 0 kid)/$(jwt_field "$token" 0 alg)" = "$kid/$algorithm" ] \
        || fail "expected an access token signed by $kid with $algorithm, got header $(jwt_field "$token" 0 kid)/$(jwt_field "$token" 0 alg)"
    expect rust "fresh token" "accepted sub=$sub kid=$kid" "$token"
    expect python "fresh token" "accepted sub=$sub (exit 0)" "$token"
    expect rust "challenge token" "refused: not an access token" "$challenge"
    expect python "challenge token" "refused: not an access token (exit 1)" "$challenge"
    expect rust "another token's signature" "refused: bad signature" "${token%.*}.${other##*.}"
    expect python "another token's signature" "refused: Signature verification failed (exit 1)" "${token%.*}.${other##*.}"

    echo "--> authd keys revoke $kid (the current key)"
    authd_cli keys revoke "$kid" >/dev/null || fail "authd keys revoke $kid failed"
    local new_kid
    new_kid="$(current_kid)"
    [ "$new_kid" != "$kid" ] || fail "after revoking $kid: expected another current key, got $kid"
    # authd reloads its keys every second: until then the JWKS still lists the revoked key.
    for _ in $(seq 50); do
        get "$jwks_url" "$work/jwks.json"
        grep -qF "\"$kid\"" "$work/jwks.json" || break
        sleep 0.1
    done
    grep -qF "\"$kid\"" "$work/jwks.json" && fail "expected $kid gone from the JWKS within 5 s, got $(cat "$work/jwks.json")"
    check_jwks "$algorithm"
    # The resource server may use its cached set for max-age (1 s) more.
    for _ in $(seq 30); do
        [[ "$(rust_verdict "$token")" == accepted* ]] || break
        sleep 0.1
    done
    expect rust "token of the revoked key" "refused: unknown kid" "$token"
    expect python "token of the revoked key" "refused: Unable to find a signing key* (exit 1)" "$token"
    local fresh
    fresh="$(login "$user" access_token)"
    [ "$(jwt_field "$fresh" 0 kid)" = "$new_kid" ] \
        || fail "expected a new login's token signed by $new_kid, got $(jwt_field "$fresh" 0 kid)"
    expect rust "token of the new current key" "accepted sub=$sub kid=$new_kid" "$fresh"
    expect python "token of the new current key" "accepted sub=$sub (exit 0)" "$fresh"

    echo "--> the same token once its exp has passed"
    local exp
    exp="$(jwt_field "$fresh" 1 exp)"
    for _ in $(seq $((ACCESS_TTL * 10 + 30))); do
        [ "$(date +%s)" -gt "$exp" ] && break
        sleep 0.1
    done
    [ "$(date +%s)" -gt "$exp" ] || fail "expected exp $exp to pass within $((ACCESS_TTL + 3)) s"
    expect rust "expired token" "refused: expired" "$fresh"
    expect python "expired token" "refused: Signature has expired (exit 1)" "$fresh"

    kill -0 "$authd_pid" 2>/dev/null || fail "authd died during the run"
    if grep -q '"level":"ERROR"' "$work/authd.log"; then
        fail "authd logged errors: $(grep '"level":"ERROR"' "$work/authd.log" | head -n 5)"
    fi
    stop
}

for algorithm in $ALGORITHMS; do
    run_suite "$algorithm"
done
echo "ok: both verifiers accept and refuse as they should ($ALGORITHMS)"
