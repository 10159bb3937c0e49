//! The admin command line, run as the real `authd` binary against a real database.

mod jwks_url;

use std::time::Duration;

use assert_cmd::Command;
use authd::config::Settings;
use authd::token::{TokenKeys, TokenKind};
use chrono::Utc;
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{PASSWORD, SECRET, TestApp, TestDb, create_empty_database, fresh_database};

/// A URL where no database listens: commands that need one must fail fast with exit code 2.
const NO_DATABASE: &str = "postgres://postgres@127.0.0.1:1/x";

/// The fields of the public User object, as `POST /register` returns it.
const USER_FIELDS: [&str; 9] = [
    "created_at",
    "email",
    "email_verified",
    "email_verified_at",
    "first_name",
    "id",
    "last_name",
    "second_factor",
    "two_factor_enabled",
];

/// The binary with a clean environment: the test secret, cheap bcrypt, an empty data directory,
/// and nothing inherited that could change its settings.
fn authd_process(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTHD_") {
            cmd.env_remove(key);
        }
    }
    let data_dir = std::env::temp_dir().join(format!("authd-cli-{}", Uuid::new_v4().simple()));
    cmd.env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("AUTHD_JWT__SECRET", SECRET)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("AUTHD_DATA_DIR", data_dir)
        .args(args);
    cmd
}

/// The same through assert_cmd: stdin is a pipe (never a terminal), closed unless written to.
fn authd(args: &[&str]) -> Command {
    let mut cmd = Command::from_std(authd_process(args));
    // Turns a command that hangs into a failure instead of a stuck suite.
    cmd.timeout(Duration::from_secs(60));
    cmd
}

/// The same, pointed at a database.
fn authd_on(db_url: &str, args: &[&str]) -> Command {
    let mut cmd = authd(&["--database-url", db_url]);
    cmd.args(args);
    cmd
}

/// What a finished command did.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|err| panic!("stdout is not JSON ({err}): {self:?}"))
    }

    /// Asserts the failure was reported as exactly one `error:` line, and returns it.
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        lines[0]
    }
}

/// Runs the command off the async workers (a server in the same test may need them).
async fn run(mut cmd: Command) -> Run {
    let output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("authd runs");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `authd user add --email <email> --password-stdin <extra...>` with `stdin` as its input.
fn user_add(db_url: &str, email: &str, extra: &[&str], stdin: impl Into<Vec<u8>>) -> Command {
    let mut cmd = authd_on(
        db_url,
        &["user", "add", "--email", email, "--password-stdin"],
    );
    cmd.args(extra).write_stdin(stdin);
    cmd
}

async fn add_user(db_url: &str, email: &str, extra: &[&str]) -> Value {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let cmd = user_add(db_url, email, &args, format!("{PASSWORD}\n"));
    let added = run(cmd).await;
    assert_eq!(added.code, Some(0), "{added:?}");
    added.json()
}

async fn count_users(db_url: &str) -> i64 {
    TestDb::connect(db_url)
        .int("SELECT CAST(COUNT(*) AS BIGINT) FROM users")
        .await
}

fn field_names(user: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = user
        .as_object()
        .expect("a user is a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

/// A signing key made for these tests, stored as the database would store it, and its JWKS in
/// a file: `token inspect --jwks` verifies with that and needs no database.
struct TestKey {
    record: authd::store::SigningKeyRecord,
    jwks: String,
}

fn test_key() -> &'static TestKey {
    static KEY: std::sync::OnceLock<TestKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let key = authd::keys::new_signing_key(
            &TEST_KEK,
            authd::keys::KeyAlgorithm::Es256,
            authd::keys::KeyState::Current,
            Utc::now(),
        )
        .unwrap();
        let record = authd::store::SigningKeyRecord::from(key);
        // In cargo's scratch directory for tests (under target/), not the system's: under
        // nextest every test is a process of its own, and each writes one.
        let jwks = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "authd-cli-test-jwks-{}-{}.json",
            std::process::id(),
            Uuid::new_v4().simple()
        ));
        let set = key_set(&record);
        std::fs::write(&jwks, set.jwks().as_bytes()).unwrap();
        TestKey {
            record,
            jwks: jwks.display().to_string(),
        }
    })
}

const TEST_KEK: [u8; 32] = [7; 32];

fn key_set(record: &authd::store::SigningKeyRecord) -> authd::keys::KeySet {
    authd::keys::KeySet::from_records(
        std::slice::from_ref(record),
        &authd::keys::KeyMaterial {
            kek: Some(&TEST_KEK),
            hs256_secret: None,
            algorithm: authd::config::JwtAlgorithm::Es256,
            retired_horizon_secs: 3_600,
        },
        Utc::now(),
    )
    .unwrap()
}

/// Keys signing with the test key under `jwt`'s claims.
fn keys_for(jwt: &authd::config::JwtSettings) -> TokenKeys {
    TokenKeys::with_set(key_set(&test_key().record), jwt)
}

fn keys() -> TokenKeys {
    keys_for(&Settings::defaults().jwt)
}

/// `authd token inspect --jwks <the test key's JWKS> ARGS...`, with no database anywhere.
fn inspect_cmd(args: &[&str]) -> Command {
    let mut all = vec!["token", "inspect", "--jwks", test_key().jwks.as_str()];
    all.extend_from_slice(args);
    authd_on(NO_DATABASE, &all)
}

/// `token inspect --format json` on `token`, with no database anywhere.
async fn inspect_json(token: &str) -> (Run, Value) {
    let inspected = run(inspect_cmd(&[token, "--format", "json"])).await;
    let json = inspected.json();
    (inspected, json)
}

// ---- user add ----

#[tokio::test]
async fn user_add_with_password_on_stdin_creates_a_user_who_can_log_in_over_http() {
    let app = TestApp::spawn().await;
    let user = add_user(
        &app.db_url,
        "  Ada@Example.TEST ",
        &["--first-name", "Ada", "--last-name", "Lovelace"],
    )
    .await;
    assert_eq!(field_names(&user), USER_FIELDS);
    assert_eq!(user["email"], "ada@example.test");
    assert_eq!(user["first_name"], "Ada");
    assert_eq!(user["last_name"], "Lovelace");
    assert_eq!(user["two_factor_enabled"], false);

    let token = app.access_token("ada@example.test").await;
    let me: Value = app
        .get_with_token("/users/me", &token)
        .await
        .json()
        .await
        .unwrap();
    let mut expected = user.clone();
    expected["recovery_codes_left"] = 0.into();
    assert_eq!(me, expected, "the CLI prints the same User the API returns");
}

#[tokio::test]
async fn user_add_with_two_factor_prints_a_table_and_stores_the_setting() {
    let db_url = fresh_database().await;
    let cmd = user_add(
        &db_url,
        "grace@example.test",
        &["--two-factor"],
        format!("{PASSWORD}\n"),
    );
    let added = run(cmd).await;
    assert_eq!(added.code, Some(0), "{added:?}");
    assert!(
        added
            .stdout
            .starts_with("created user grace@example.test\n"),
        "{added:?}"
    );
    for row in ["email", "2FA", "created"] {
        assert!(added.stdout.contains(row), "no {row}: {added:?}");
    }
    assert!(
        added
            .stdout
            .lines()
            .any(|line| line.contains("2FA") && line.contains("email")),
        "the second step is the emailed code: {added:?}"
    );
    let db = TestDb::connect(&db_url);
    assert_eq!(
        db.int("SELECT CAST(COUNT(*) AS BIGINT) FROM users WHERE two_factor_enabled")
            .await,
        1
    );
    let hash = db.text("SELECT password_hash FROM users").await;
    assert!(hash.starts_with("$2"), "stored a bcrypt hash");
    assert!(!added.stdout.contains(&hash) && !added.stdout.contains(PASSWORD));
}

#[tokio::test]
async fn user_add_refuses_a_duplicate_email_with_exit_code_1() {
    let db_url = fresh_database().await;
    add_user(&db_url, "ada@example.test", &[]).await;
    let again = user_add(&db_url, "ADA@example.test", &[], format!("{PASSWORD}\n"));
    let refused = run(again).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.error_line().contains("already exists"),
        "{refused:?}"
    );
    assert_eq!(count_users(&db_url).await, 1);
}

#[tokio::test]
async fn user_add_refuses_invalid_input_naming_each_field_with_exit_code_1() {
    let db_url = fresh_database().await;
    let mut cmd = authd_on(
        &db_url,
        &["user", "add", "--email", "not-an-email", "--password-stdin"],
    );
    cmd.write_stdin("short\n");
    let refused = run(cmd).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    let line = refused.error_line();
    assert!(line.contains("email:"), "{line}");
    assert!(line.contains("password:"), "{line}");
    assert_eq!(count_users(&db_url).await, 0);
}

#[tokio::test]
async fn user_add_refuses_a_password_longer_than_bcrypt_can_hash_like_register_does() {
    let db_url = fresh_database().await;
    let cmd = user_add(
        &db_url,
        "ada@example.test",
        &[],
        format!("{}\n", "x".repeat(73)),
    );
    let refused = run(cmd).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.error_line().contains("password:"), "{refused:?}");
    assert_eq!(count_users(&db_url).await, 0);
}

/// Runs the binary with stdin an open pipe that never receives anything, as under a job runner:
/// a command that waits for input would wait forever, so after 60s it is killed and fails.
async fn run_with_silent_stdin(mut cmd: std::process::Command) -> Run {
    use std::process::Stdio;
    tokio::task::spawn_blocking(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("authd runs");
        let _stdin_held_open = child.stdin.take();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                child.kill().unwrap();
                panic!("authd waited for input that will never come");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().unwrap();
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn user_add_without_a_terminal_and_without_email_fails_at_once() {
    let db_url = fresh_database().await;
    let mut cmd = authd_process(&["--database-url", &db_url, "user", "add"]);
    cmd.arg("--password-stdin");
    let refused = run_with_silent_stdin(cmd).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.error_line().contains("--email"), "{refused:?}");
    assert_eq!(count_users(&db_url).await, 0);
}

#[tokio::test]
async fn user_add_without_a_terminal_and_without_password_stdin_fails_at_once() {
    let db_url = fresh_database().await;
    let refused = run_with_silent_stdin(authd_process(&[
        "--database-url",
        &db_url,
        "user",
        "add",
        "--email",
        "ada@example.test",
    ]))
    .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.error_line().contains("--password-stdin"),
        "{refused:?}"
    );
    assert_eq!(count_users(&db_url).await, 0);
}

#[tokio::test]
async fn user_add_with_password_stdin_and_nothing_on_stdin_is_refused() {
    let db_url = fresh_database().await;
    let cmd = user_add(&db_url, "ada@example.test", &[], "");
    let refused = run(cmd).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.error_line().contains("stdin"), "{refused:?}");
    assert_eq!(count_users(&db_url).await, 0);
}

// ---- user list ----

#[tokio::test]
async fn user_list_json_is_the_api_user_shape_in_creation_order() {
    let db_url = fresh_database().await;
    let ada = add_user(
        &db_url,
        "ada@example.test",
        &["--first-name", "Ada", "--last-name", "Lovelace"],
    )
    .await;
    let grace = add_user(&db_url, "grace@example.test", &["--two-factor"]).await;
    let linus = add_user(&db_url, "linus@example.test", &[]).await;

    // The API's User, with the account's state, its live sessions and its passkeys.
    let listing = |user: &Value| {
        let mut listed = user.clone();
        listed["disabled"] = Value::Bool(false);
        listed["sessions"] = Value::from(0);
        listed["passkeys"] = Value::from(0);
        listed
    };
    let (ada, grace, linus) = (listing(&ada), listing(&grace), listing(&linus));
    let listed = run(authd_on(&db_url, &["user", "list", "--format", "json"])).await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    assert_eq!(
        listed.json(),
        Value::Array(vec![ada.clone(), grace.clone(), linus])
    );
    assert!(!listed.stdout.contains("password") && !listed.stdout.contains("$2"));

    let first_two = run(authd_on(
        &db_url,
        &["user", "list", "--format", "json", "--limit", "2"],
    ))
    .await;
    assert_eq!(first_two.json(), Value::Array(vec![ada.clone(), grace]));

    let found = run(authd_on(
        &db_url,
        &["user", "list", "--format", "json", "--search", "LOVE"],
    ))
    .await;
    assert_eq!(found.json(), Value::Array(vec![ada]));

    let none = run(authd_on(
        &db_url,
        &["user", "list", "--format", "json", "--search", "nobody"],
    ))
    .await;
    assert_eq!(none.json(), Value::Array(vec![]));
}

#[tokio::test]
async fn user_list_prints_a_table_of_email_name_two_factor_and_creation_time() {
    let db_url = fresh_database().await;
    let ada = add_user(
        &db_url,
        "ada@example.test",
        &[
            "--first-name",
            "Ada",
            "--last-name",
            "Lovelace",
            "--two-factor",
        ],
    )
    .await;
    let listed = run(authd_on(&db_url, &["user", "list"])).await;
    assert_eq!(listed.code, Some(0), "{listed:?}");
    let created = chrono::DateTime::parse_from_rfc3339(ada["created_at"].as_str().unwrap())
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let header = listed.stdout.lines().nth(1).unwrap();
    let row = listed
        .stdout
        .lines()
        .find(|l| l.contains("ada@example.test"))
        .unwrap();
    for (column, value) in [
        ("email", "ada@example.test"),
        ("name", "Ada Lovelace"),
        ("2FA", "email"),
        ("created", created.as_str()),
    ] {
        assert!(header.contains(column), "no column {column}: {listed:?}");
        assert!(row.contains(value), "no {value}: {listed:?}");
    }
    assert!(!listed.stdout.contains("$2"));
}

// ---- user set-2fa ----

#[tokio::test]
async fn user_set_2fa_switches_the_next_login_to_an_emailed_code_at_once() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    app.access_token("ada@example.test").await;

    let on = run(authd_on(
        &app.db_url,
        &["user", "set-2fa", "Ada@Example.test", "on"],
    ))
    .await;
    assert_eq!(on.code, Some(0), "{on:?}");
    assert!(
        on.stdout
            .contains("two-factor login is on for ada@example.test")
    );
    // The running server asks for a code at the very next login, without a restart.
    let (challenge, _code) = app.start_challenge("ada@example.test").await;
    assert!(!challenge.is_empty());

    let off = run(authd_on(
        &app.db_url,
        &["user", "set-2fa", "ada@example.test", "off"],
    ))
    .await;
    assert_eq!(off.code, Some(0), "{off:?}");
    app.access_token("ada@example.test").await;
}

#[tokio::test]
async fn user_set_2fa_for_an_unknown_user_exits_1() {
    let db_url = fresh_database().await;
    let refused = run(authd_on(
        &db_url,
        &["user", "set-2fa", "nobody@example.test", "on"],
    ))
    .await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.error_line().contains("no user"), "{refused:?}");
    let invalid = run(authd_on(&db_url, &["user", "set-2fa", "nobody", "on"])).await;
    assert_eq!(invalid.code, Some(1), "{invalid:?}");
    assert!(invalid.error_line().contains("email:"), "{invalid:?}");
}

// ---- exit codes for bad arguments, the system and configuration ----

#[tokio::test]
async fn bad_arguments_exit_1_because_the_input_is_wrong() {
    for args in [
        &["user", "set-2fa", "ada@example.test", "maybe"][..],
        &["user", "list", "--limit", "0"],
        &["user", "list", "--format", "yaml"],
        &["user", "frobnicate"],
    ] {
        let refused = run(authd_on(NO_DATABASE, args)).await;
        assert_eq!(refused.code, Some(1), "{args:?}: {refused:?}");
        assert!(refused.stderr.starts_with("error: "), "{refused:?}");
    }
}

#[tokio::test]
async fn help_documents_every_command_and_the_exit_codes() {
    let help = run(authd(&["--help"])).await;
    assert_eq!(help.code, Some(0), "{help:?}");
    for text in [
        "user",
        "session",
        "token",
        "migrate",
        "Exit codes:",
        "0  success",
    ] {
        assert!(help.stdout.contains(text), "no {text}: {}", help.stdout);
    }
    for command in [
        &["user", "add", "--help"][..],
        &["user", "list", "--help"],
        &["user", "set-2fa", "--help"],
        &["user", "disable", "--help"],
        &["user", "enable", "--help"],
        &["user", "delete", "--help"],
        &["session", "list", "--help"],
        &["session", "revoke", "--help"],
        &["token", "inspect", "--help"],
    ] {
        let help = run(authd(command)).await;
        assert_eq!(help.code, Some(0), "{help:?}");
        assert!(help.stdout.contains("2  the system failed"), "{command:?}");
    }
}

#[tokio::test]
async fn an_unreachable_database_fails_with_exit_code_2_and_one_line() {
    for args in [
        &["user", "list"][..],
        &["user", "set-2fa", "a@example.test", "on"],
        &["migrate"],
    ] {
        let mut cmd = authd_on(NO_DATABASE, args);
        cmd.env("AUTHD_DATABASE__ACQUIRE_TIMEOUT_SECS", "2");
        let failed = run(cmd).await;
        assert_eq!(failed.code, Some(2), "{args:?}: {failed:?}");
        assert!(failed.error_line().contains("database"), "{failed:?}");
        assert!(failed.stdout.is_empty(), "{failed:?}");
    }
}

#[tokio::test]
async fn bad_configuration_exits_2() {
    let db_url = fresh_database().await;
    let mut cost = authd_on(&db_url, &["user", "list"]);
    cost.env("AUTHD_PASSWORD__BCRYPT_COST", "99");
    let failed = run(cost).await;
    assert_eq!(failed.code, Some(2), "{failed:?}");
    assert!(failed.error_line().contains("bcrypt_cost"), "{failed:?}");

    let missing = run(authd_on(
        &db_url,
        &["--config", "/nonexistent/authd.toml", "user", "list"],
    ))
    .await;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.error_line().contains("/nonexistent/authd.toml"));
}

// ---- migrate ----

#[tokio::test]
async fn migrate_applies_pending_migrations_once_and_is_safe_to_run_again() {
    let db_url = create_empty_database().await;
    let first = run(authd_on(&db_url, &["migrate"])).await;
    assert_eq!(first.code, Some(0), "{first:?}");
    assert!(!first.stdout.is_empty());
    let mut lines = first.stdout.lines();
    let last = lines.next_back().unwrap();
    assert!(lines.all(|l| l.starts_with("applied ")), "{first:?}");
    // No key-encryption key beside this command: the server's first start records its check.
    assert!(last.starts_with("no keys.encryption_key here"), "{first:?}");
    assert_eq!(count_users(&db_url).await, 0, "the users table exists");

    let second = run(authd_on(&db_url, &["migrate"])).await;
    assert_eq!(second.code, Some(0), "{second:?}");
    assert!(
        second
            .stdout
            .starts_with("database is up to date: no pending migrations\n"),
        "{second:?}"
    );
}

// ---- token inspect ----

#[tokio::test]
async fn token_inspect_of_a_valid_access_token_shows_kind_claims_and_times_without_a_database() {
    let (sub, jti) = (Uuid::new_v4(), Uuid::new_v4());
    let issued = keys().issue(TokenKind::Access, sub, jti).unwrap();
    let (inspected, json) = inspect_json(&issued.token).await;
    assert_eq!(inspected.code, Some(0), "{inspected:?}");
    assert_eq!(json["kind"], "access");
    assert_eq!(json["valid"], true);
    assert_eq!(json["error"], Value::Null);
    assert_eq!(json["header"]["typ"], "at+jwt");
    assert_eq!(json["header"]["alg"], "ES256");
    assert_eq!(json["kid"], test_key().record.kid);
    assert_eq!(json["key_state"], "published");
    assert_eq!(json["claims"]["sub"], sub.to_string());
    assert_eq!(json["claims"]["jti"], jti.to_string());
    assert_eq!(json["claims"]["aud"], "authd");
    let expires_at: chrono::DateTime<Utc> = json["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires_at.timestamp(), issued.expires_at.timestamp());
    assert_eq!(json["expires"], "expires in 14m");
    assert!(
        json["issued"].as_str().unwrap().starts_with("issued "),
        "{json}"
    );

    let table = run(inspect_cmd(&[&issued.token])).await;
    assert_eq!(table.code, Some(0), "{table:?}");
    for text in [
        "access (typ at+jwt)",
        "expires in 14m",
        " UTC ",
        &sub.to_string(),
        "valid: signature and claims verified",
    ] {
        assert!(table.stdout.contains(text), "no {text}: {}", table.stdout);
    }
}

#[tokio::test]
async fn token_inspect_reads_a_challenge_token_from_stdin_with_a_dash() {
    let issued = keys()
        .issue(TokenKind::Challenge, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    let mut cmd = inspect_cmd(&["-", "--format", "json"]);
    cmd.write_stdin(format!("{}\n", issued.token));
    let inspected = run(cmd).await;
    assert_eq!(inspected.code, Some(0), "{inspected:?}");
    let json = inspected.json();
    assert_eq!(json["kind"], "challenge");
    assert_eq!(json["valid"], true);
    assert_eq!(json["claims"]["aud"], "authd/otp-challenge");
    assert_eq!(json["expires"], "expires in 4m");

    let mut empty = inspect_cmd(&["-"]);
    empty.write_stdin("");
    let refused = run(empty).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(refused.error_line().contains("no token"), "{refused:?}");
}

#[tokio::test]
async fn token_inspect_of_a_tampered_token_says_bad_signature_and_still_decodes_it() {
    let keys = keys();
    let victim = keys
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    let mallory = Uuid::new_v4();
    let theirs = keys
        .issue(TokenKind::Access, mallory, Uuid::new_v4())
        .unwrap();
    // Mallory's claims under the victim's signature.
    let [header, _, signature]: [&str; 3] = victim
        .token
        .split('.')
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let payload = theirs.token.split('.').nth(1).unwrap();
    let tampered = format!("{header}.{payload}.{signature}");

    let (inspected, json) = inspect_json(&tampered).await;
    assert_eq!(inspected.code, Some(1), "{inspected:?}");
    assert_eq!(
        inspected.error_line(),
        "error: invalid token: bad signature"
    );
    assert_eq!(json["valid"], false);
    assert_eq!(json["error"], "bad signature");
    assert_eq!(json["kind"], "access");
    assert_eq!(json["claims"]["sub"], mallory.to_string());

    let table = run(inspect_cmd(&[&tampered])).await;
    assert_eq!(table.code, Some(1));
    assert!(table.stdout.contains("invalid: bad signature"), "{table:?}");
    assert!(table.stdout.contains(&mallory.to_string()), "{table:?}");
}

#[tokio::test]
async fn token_inspect_of_an_expired_token_says_expired_and_since_when() {
    let old = keys()
        .issue_at(
            TokenKind::Access,
            Uuid::new_v4(),
            Uuid::new_v4(),
            Utc::now() - chrono::Duration::hours(3),
        )
        .unwrap();
    let (inspected, json) = inspect_json(&old.token).await;
    assert_eq!(inspected.code, Some(1), "{inspected:?}");
    assert_eq!(inspected.error_line(), "error: invalid token: expired");
    assert_eq!(json["error"], "expired");
    assert_eq!(json["expires"], "expired 2h ago");
    assert_eq!(json["issued"], "issued 3h ago");
    assert_eq!(json["kind"], "access");

    let table = run(inspect_cmd(&[&old.token])).await;
    assert_eq!(table.code, Some(1));
    assert!(table.stdout.contains("expired 2h ago"), "{table:?}");
    assert!(table.stdout.contains("invalid: expired"), "{table:?}");
}

#[tokio::test]
async fn token_inspect_of_a_token_for_another_audience_says_wrong_audience() {
    let mut jwt = Settings::defaults().jwt;
    jwt.audience = "someone-else".into();
    let foreign = keys_for(&jwt)
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    let (inspected, json) = inspect_json(&foreign.token).await;
    assert_eq!(inspected.code, Some(1), "{inspected:?}");
    assert_eq!(json["error"], "wrong audience");
    assert_eq!(json["claims"]["aud"], "someone-else");
}

#[tokio::test]
async fn token_inspect_of_garbage_says_not_a_jwt() {
    for garbage in ["hello", "a.b.c", "eyJhbGciOiJIUzI1NiJ9"] {
        let (inspected, json) = inspect_json(garbage).await;
        assert_eq!(inspected.code, Some(1), "{inspected:?}");
        assert_eq!(
            inspected.error_line(),
            "error: invalid token: not a JWT",
            "{garbage}"
        );
        assert_eq!(json["valid"], false);
        assert_eq!(json["header"], Value::Null);
        assert_eq!(json["claims"], Value::Null);
        assert_eq!(json["kind"], Value::Null);
    }
}

#[tokio::test]
async fn token_inspect_without_a_database_or_a_jwks_exits_2() {
    let issued = keys()
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    let failed = run(authd_on(NO_DATABASE, &["token", "inspect", &issued.token])).await;
    assert_eq!(failed.code, Some(2), "{failed:?}");
    assert!(
        failed.error_line().contains("cannot read the signing keys"),
        "{failed:?}"
    );
}

#[tokio::test]
async fn token_inspect_with_jwks_dev_zero_stops_at_the_size_cap_with_one_line() {
    let issued = keys()
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    // Under a 2 GiB address-space limit: reading the whole endless file would die here (or
    // grow until the kernel kills it) instead of answering with one line.
    let authd = authd_process(&[
        "--database-url",
        NO_DATABASE,
        "token",
        "inspect",
        &issued.token,
        "--jwks",
        "/dev/zero",
    ]);
    let mut limited = std::process::Command::new("sh");
    limited
        .arg("-c")
        .arg("ulimit -v 2097152 && exec \"$@\"")
        .arg("sh")
        .arg(authd.get_program())
        .args(authd.get_args());
    for (key, value) in authd.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    let mut limited = Command::from_std(limited);
    limited.timeout(Duration::from_secs(60));
    let failed = run(limited).await;
    assert_eq!(failed.code, Some(1), "{failed:?}");
    let line = failed.error_line();
    assert!(line.contains("/dev/zero is over 1048576 bytes"), "{line}");
    assert!(failed.stdout.is_empty(), "{failed:?}");
}

/// A loopback HTTP server that answers every request with `response`; its port.
async fn answering(response: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn a_jwks_url_with_a_password_is_never_printed_with_it() {
    let issued = keys()
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    let not_found =
        answering("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let not_jwks = answering(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n[]",
    )
    .await;
    let closed = testkit::free_port().expect("a free loopback port");
    for port in [not_found, not_jwks, closed] {
        let url = format!("http://admin:s3cret-pw@127.0.0.1:{port}/jwks.json");
        let failed = run(authd_on(
            NO_DATABASE,
            &["token", "inspect", &issued.token, "--jwks", &url],
        ))
        .await;
        assert_eq!(failed.code, Some(1), "{failed:?}");
        let line = failed.error_line();
        assert!(
            line.contains(&format!("http://127.0.0.1:{port}/jwks.json")),
            "the URL is named: {line}"
        );
        for secret in ["s3cret-pw", "admin:"] {
            assert!(
                !failed.stderr.contains(secret) && !failed.stdout.contains(secret),
                "{secret} shown: {failed:?}"
            );
        }
    }
}
