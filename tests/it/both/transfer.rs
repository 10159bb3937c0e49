//! `authd user import` and `authd user export` against a running authd's database: the users
//! brought in log in with their old passwords (hashes made by the `bcrypt` crate, not authd's
//! own bcrypt), every refused row is reported and changes nothing, an import run twice changes
//! nothing the second time, `--update` overwrites, and an export imports back unchanged.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TempDir, TestApp, admin_output, problem};

/// A password the policy accepts, and its hash at cost 4 by the reference implementation.
pub(super) const OLD_PASSWORD: &str = "an old but decent passphrase";

pub(super) fn bcrypt_hash(password: &str, cost: u32, prefix: &str) -> String {
    let hash = bcrypt::hash(password, cost).unwrap();
    // Other systems write $2a$ or $2y$ for the same algorithm: only the prefix differs.
    format!("{prefix}{}", &hash[4..])
}

pub(super) fn write(dir: &TempDir, name: &str, contents: impl AsRef<[u8]>) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

pub(super) fn jsonl(rows: &[Value]) -> String {
    rows.iter().map(|row| format!("{row}\n")).collect()
}

pub(super) struct Ran {
    pub(super) code: Option<i32>,
    pub(super) stdout: String,
    pub(super) stderr: String,
}

pub(super) async fn authd(app: &TestApp, dir: &TempDir, args: &[&str], stdin: &str) -> Ran {
    let output = admin_output(&app.db_url, dir, args, stdin).await;
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every user as `authd user export --include-password-hashes` writes them.
pub(super) async fn exported(app: &TestApp, dir: &TempDir, format: &str) -> String {
    let ran = authd(
        app,
        dir,
        &[
            "user",
            "export",
            "--format",
            format,
            "--include-password-hashes",
        ],
        "",
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    ran.stdout
}

async fn login_status(app: &TestApp, email: &str, password: &str) -> StatusCode {
    app.login(email, password).await.status()
}

#[tokio::test]
async fn imported_users_log_in_at_once_with_their_old_bcrypt_passwords_from_jsonl_and_csv() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    let rows = [
        json!({"email": "Ada@Example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4, "$2b$"),
               "first_name": "Ada", "last_name": "Lovelace", "email_verified": true,
               "created_at": "2019-03-04T05:06:07Z"}),
        json!({"email": "grace@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 5, "$2a$"),
               "two_factor_enabled": true}),
        json!({"email": "linus@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 6, "$2y$")}),
        json!({"email": "plain@example.test", "password": OLD_PASSWORD}),
    ];
    let file = write(&dir, "users.jsonl", jsonl(&rows));
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("4 imported, 0 updated, 0 skipped (already there), 0 refused"),
        "{}",
        ran.stdout
    );
    let csv = format!(
        "email,password_hash,first_name,last_name,two_factor_enabled,email_verified,created_at\n\
         csv@example.test,{},Carla,,no,yes,2021-01-01T00:00:00+02:00\n",
        bcrypt_hash(OLD_PASSWORD, 4, "$2b$")
    );
    let file = write(&dir, "more.csv", &csv);
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);

    for email in [
        "ada@example.test",
        "linus@example.test",
        "plain@example.test",
        "csv@example.test",
    ] {
        assert_eq!(
            login_status(&app, email, OLD_PASSWORD).await,
            StatusCode::OK,
            "{email}"
        );
        problem(
            app.login(email, "not the old password").await,
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        )
        .await;
    }
    // Two steps on: the old password starts the second step.
    let body: Value = app
        .login("grace@example.test", OLD_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["otp_required"], true);

    let users: Vec<Value> = exported(&app, &dir, "jsonl")
        .await
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let ada = users
        .iter()
        .find(|u| u["email"] == "ada@example.test")
        .unwrap();
    assert_eq!(ada["first_name"], "Ada");
    assert_eq!(ada["last_name"], "Lovelace");
    assert_eq!(ada["email_verified"], true);
    assert_eq!(ada["created_at"], "2019-03-04T05:06:07.000000Z");
    let carla = users
        .iter()
        .find(|u| u["email"] == "csv@example.test")
        .unwrap();
    assert_eq!(carla["created_at"], "2020-12-31T22:00:00.000000Z");
    assert_eq!(carla["email_verified"], true);
    assert_eq!(carla["two_factor_enabled"], false);
    // The plain password was hashed with authd's bcrypt at the configured cost.
    let plain = users
        .iter()
        .find(|u| u["email"] == "plain@example.test")
        .unwrap();
    assert!(
        plain["password_hash"]
            .as_str()
            .unwrap()
            .starts_with(&format!("$2b${:02}$", app.settings.password.bcrypt_cost))
    );
    app.db.expect_events("users_imported", 2).await;
}

#[tokio::test]
async fn every_refused_row_is_reported_with_its_line_and_reason_and_nothing_else_changes() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    let hash = bcrypt_hash(OLD_PASSWORD, 4, "$2b$");
    let lines = [
        json!({"email": "good@example.test", "password_hash": hash}).to_string(),
        json!({"password_hash": hash}).to_string(),
        json!({"email": "not an address", "password_hash": hash}).to_string(),
        json!({"email": "name@example.test", "password_hash": hash, "first_name": "Ev\u{202e}e"})
            .to_string(),
        json!({"email": "both@example.test", "password_hash": hash, "password": OLD_PASSWORD})
            .to_string(),
        json!({"email": "neither@example.test"}).to_string(),
        json!({"email": "hash@example.test", "password_hash": "$2b$04$tooshort"}).to_string(),
        json!({"email": "short@example.test", "password": "short"}).to_string(),
        json!({"email": "common@example.test", "password": "password123"}).to_string(),
        json!({"email": "future@example.test", "password_hash": hash, "created_at": "2999-01-01T00:00:00Z"})
            .to_string(),
        json!({"email": "when@example.test", "password_hash": hash, "created_at": "yesterday"})
            .to_string(),
        json!({"email": "type@example.test", "password_hash": hash, "two_factor_enabled": 5})
            .to_string(),
        "{not json".to_owned(),
        "[1, 2]".to_owned(),
        json!({"email": "last@example.test", "password_hash": hash}).to_string(),
    ];
    let file = write(&dir, "users.jsonl", &(lines.join("\n") + "\n"));
    let errors = dir.path().join("errors.jsonl");
    let ran = authd(
        &app,
        &dir,
        &[
            "user",
            "import",
            &file,
            "--errors",
            errors.to_str().unwrap(),
        ],
        "",
    )
    .await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("15 rows in")
            && ran
                .stdout
                .contains("2 imported, 0 updated, 0 skipped (already there), 13 refused"),
        "{}",
        ran.stdout
    );
    let expected = [
        (2, "email: is required"),
        (3, "email: is not a valid email address"),
        (
            4,
            "first_name: must not contain invisible or text-reordering characters (U+202E)",
        ),
        (5, "give password_hash or password, not both"),
        (6, "password_hash or password is required"),
        (7, "password_hash:"),
        (8, "password: must be at least 8"),
        (9, "password:"),
        (10, "created_at: is in the future"),
        (11, "created_at: is not an RFC 3339 time"),
        (12, "a field has the wrong type"),
        (13, "the line is not JSON"),
        (14, "the line is not a JSON object"),
    ];
    let reported: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with("line "))
        .collect();
    assert_eq!(reported.len(), expected.len(), "{}", ran.stderr);
    for ((line, reason), said) in expected.iter().zip(&reported) {
        assert!(
            said.starts_with(&format!("line {line}: ")) && said.contains(reason),
            "{line} {reason}: {said}"
        );
    }
    assert!(
        ran.stderr.trim_end().ends_with(&format!(
            "error: 13 of 15 rows refused (each is listed above and in {})",
            errors.display()
        )),
        "{}",
        ran.stderr
    );
    // The errors file: each refused row with its line and reason, ready to fix and import.
    let written: Vec<Value> = std::fs::read_to_string(&errors)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(written.len(), 13);
    assert_eq!(written[0]["line"], 2);
    assert_eq!(written[0]["error"], "email: is required");
    assert_eq!(written[0]["password_hash"], hash);
    assert_eq!(written[1]["email"], "not an address");

    let users = exported(&app, &dir, "csv").await;
    let emails: Vec<&str> = users
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(emails, ["good@example.test", "last@example.test"]);

    // Fixed and imported again from the errors file: the rest comes in.
    let fixed = std::fs::read_to_string(&errors)
        .unwrap()
        .replace("\"not an address\"", "\"fixed@example.test\"");
    let fixed = write(&dir, "fixed.jsonl", &fixed);
    let ran = authd(&app, &dir, &["user", "import", &fixed], "").await;
    assert!(
        ran.stdout.contains("1 imported"),
        "{} {}",
        ran.stdout,
        ran.stderr
    );
    // With --skip-policy a common password is let in (its length is still checked).
    let common = write(
        &dir,
        "common.jsonl",
        jsonl(&[json!({"email": "common@example.test", "password": "password123"})]),
    );
    let ran = authd(
        &app,
        &dir,
        &["user", "import", &common, "--skip-policy"],
        "",
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(
        login_status(&app, "common@example.test", "password123").await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_import_run_twice_changes_nothing_the_second_time() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    let rows: Vec<Value> = (0..25)
        .map(|i| {
            json!({"email": format!("user{i}@example.test"),
                   "password_hash": bcrypt_hash(OLD_PASSWORD, 4, "$2b$"),
                   "first_name": format!("User {i}")})
        })
        .collect();
    // One address twice in the file: the first row wins, the second meets it.
    let mut rows = rows;
    rows.push(json!({"email": "USER3@example.test", "password_hash": bcrypt_hash("another passphrase here", 4, "$2b$")}));
    let file = write(&dir, "users.jsonl", jsonl(&rows));
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert!(
        ran.stdout
            .contains("25 imported, 0 updated, 1 skipped (already there), 0 refused"),
        "{}",
        ran.stdout
    );
    let before = exported(&app, &dir, "jsonl").await;
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout
            .contains("0 imported, 0 updated, 26 skipped (already there), 0 refused"),
        "{}",
        ran.stdout
    );
    assert_eq!(exported(&app, &dir, "jsonl").await, before);
    assert_eq!(
        login_status(&app, "user3@example.test", OLD_PASSWORD).await,
        StatusCode::OK
    );
    // With --update, a file of what is there already changes nothing either, run after run
    // (the file without its conflicting duplicate: with --update, a later row of an address
    // overwrites an earlier one).
    let same = write(&dir, "same.jsonl", jsonl(&rows[..25]));
    for _ in 0..2 {
        let ran = authd(&app, &dir, &["user", "import", &same, "--update"], "").await;
        assert!(
            ran.stdout
                .contains("0 imported, 0 updated, 25 skipped (already there), 0 refused"),
            "{}",
            ran.stdout
        );
    }
    assert_eq!(exported(&app, &dir, "jsonl").await, before);
    // A plain password the user already has keeps its hash (a new salt would be a change).
    let plain = write(
        &dir,
        "plain.jsonl",
        jsonl(&[json!({"email": "plain@example.test", "password": OLD_PASSWORD})]),
    );
    let first = authd(&app, &dir, &["user", "import", &plain, "--update"], "").await;
    assert!(first.stdout.contains("1 imported"), "{}", first.stdout);
    let with_plain = exported(&app, &dir, "jsonl").await;
    let second = authd(&app, &dir, &["user", "import", &plain, "--update"], "").await;
    assert!(
        second.stdout.contains("0 imported, 0 updated, 1 skipped"),
        "{}",
        second.stdout
    );
    assert_eq!(exported(&app, &dir, "jsonl").await, with_plain);
}

#[tokio::test]
async fn update_overwrites_the_profile_and_hash_and_ends_the_sessions_of_a_new_hash() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    app.register("ada@example.test", false).await;
    app.register("bob@example.test", false).await;
    let ada_session = app.access_token("ada@example.test").await;
    let bob_session = app.access_token("bob@example.test").await;
    // Bob's row as it is, with a new name only: his hash stays, and so does his session.
    let bob: Value = exported(&app, &dir, "jsonl")
        .await
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|u| u["email"] == "bob@example.test")
        .unwrap();
    let mut bob = bob;
    bob["first_name"] = json!("Bob");
    let rows = [
        json!({"email": "ada@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4, "$2b$"),
               "first_name": "Ada"}),
        bob,
    ];
    let file = write(&dir, "users.jsonl", jsonl(&rows));
    // Without --update: skipped, nothing changes.
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert!(ran.stdout.contains("2 skipped"), "{}", ran.stdout);
    assert_eq!(
        login_status(&app, "ada@example.test", crate::helpers::PASSWORD).await,
        StatusCode::OK
    );
    let ran = authd(&app, &dir, &["user", "import", &file, "--update"], "").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("0 imported, 2 updated"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("1 updated users had a new password hash"),
        "{}",
        ran.stdout
    );
    assert_eq!(
        login_status(&app, "ada@example.test", OLD_PASSWORD).await,
        StatusCode::OK
    );
    assert_eq!(
        login_status(&app, "ada@example.test", crate::helpers::PASSWORD).await,
        StatusCode::UNAUTHORIZED
    );
    problem(
        app.get_with_token("/users/me", &ada_session).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let me: Value = app
        .get_with_token("/users/me", &bob_session)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["first_name"], "Bob", "Bob's session lives on");
}

#[tokio::test]
async fn an_export_imports_back_into_an_empty_database_unchanged() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-export");
    let rows = [
        json!({"email": "ada@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4, "$2b$"),
               "first_name": "Ada", "last_name": "Byron, née \"Lovelace\"", "email_verified": true,
               "two_factor_enabled": true, "created_at": "2019-03-04T05:06:07.123456Z"}),
        json!({"email": "émile@xn--bcher-kva.example", "password_hash": bcrypt_hash(OLD_PASSWORD, 5, "$2a$")}),
    ];
    let file = write(&dir, "users.jsonl", jsonl(&rows));
    assert_eq!(
        authd(&app, &dir, &["user", "import", &file], "").await.code,
        Some(0)
    );
    for format in ["jsonl", "csv"] {
        let out = dir.path().join(format!("export.{format}"));
        let ran = authd(
            &app,
            &dir,
            &[
                "user",
                "export",
                "--format",
                format,
                "--include-password-hashes",
                "--output",
                out.to_str().unwrap(),
            ],
            "",
        )
        .await;
        assert_eq!(ran.code, Some(0), "{}", ran.stderr);
        assert!(
            ran.stderr.contains("holds password hashes"),
            "{}",
            ran.stderr
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a file with hashes is the owner's alone");
        }
        // An existing file is never overwritten.
        let again = authd(
            &app,
            &dir,
            &["user", "export", "--output", out.to_str().unwrap()],
            "",
        )
        .await;
        assert_eq!(again.code, Some(1));
        assert!(
            again.stderr.contains("never overwritten"),
            "{}",
            again.stderr
        );

        let empty = TestApp::spawn().await;
        let ran = authd(&empty, &dir, &["user", "import", out.to_str().unwrap()], "").await;
        assert_eq!(ran.code, Some(0), "{format}: {}", ran.stderr);
        assert_eq!(
            exported(&empty, &dir, format).await,
            std::fs::read_to_string(&out).unwrap(),
            "{format}"
        );
        assert_eq!(
            login_status(&empty, "émile@xn--bcher-kva.example", OLD_PASSWORD).await,
            StatusCode::OK
        );
    }
    // Without the flag there is no hash in it.
    let ran = authd(&app, &dir, &["user", "export"], "").await;
    assert!(!ran.stdout.contains("password_hash"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("$2b$"));
    app.db.expect_events("users_exported", 3).await;
}

#[tokio::test]
async fn standard_input_is_read_with_a_format_and_refused_without_one() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    let row = jsonl(&[
        json!({"email": "ada@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4, "$2b$")}),
    ]);
    let ran = authd(&app, &dir, &["user", "import", "-"], &row).await;
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("needs --format"), "{}", ran.stderr);
    let ran = authd(
        &app,
        &dir,
        &["user", "import", "-", "--format", "jsonl"],
        &row,
    )
    .await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    // A file of no known extension, a missing file, a CSV without an email column.
    for (name, text, said) in [
        ("users.txt", "x", "cannot tell the format"),
        ("users.csv", "mail,password\nx,y\n", "no `email` column"),
    ] {
        let file = write(&dir, name, text);
        let ran = authd(&app, &dir, &["user", "import", &file], "").await;
        assert_eq!(ran.code, Some(1), "{name}");
        assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
        assert!(ran.stderr.contains(said), "{name}: {}", ran.stderr);
    }
    let ran = authd(
        &app,
        &dir,
        &["user", "import", "/nonexistent/users.jsonl"],
        "",
    )
    .await;
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("cannot open"), "{}", ran.stderr);
}

/// Hashes made by Python's bcrypt, argon2-cffi and Django (tests/fixtures/hashes.json, written
/// by scripts/make-hash-fixtures.py), brought in by `authd user import`: each user logs in with
/// the password it was made from, a wrong one fails, and the first login leaves a bcrypt at the
/// configured cost behind.
#[tokio::test]
async fn hashes_made_by_python_bcrypt_argon2_cffi_and_django_import_and_log_in() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-import");
    let fixtures: Value = serde_json::from_str(include_str!("../../fixtures/hashes.json")).unwrap();
    // The cheap ones (a login verifies each on the test's time): every scheme and prefix.
    let chosen: Vec<&Value> = fixtures["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["password"] == "correct horse battery")
        .filter(|h| match h["scheme"].as_str().unwrap() {
            "bcrypt" => h["cost"].as_u64().unwrap() <= 5,
            "argon2id" => h["params"] != "argon2-cffi defaults",
            _ => h["params"] != "Django default",
        })
        .collect();
    assert!(chosen.len() >= 8, "{}", chosen.len());
    let rows: Vec<Value> = chosen
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"email": format!("user{i}@example.test"), "password_hash": h["hash"]}))
        .collect();
    let file = write(&dir, "python.jsonl", jsonl(&rows));
    let ran = authd(&app, &dir, &["user", "import", &file], "").await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    for (i, fixture) in chosen.iter().enumerate() {
        let email = format!("user{i}@example.test");
        let scheme = fixture["scheme"].as_str().unwrap();
        assert_eq!(
            login_status(&app, &email, "not the password at all").await,
            StatusCode::UNAUTHORIZED,
            "{scheme}"
        );
        assert_eq!(
            login_status(&app, &email, "correct horse battery").await,
            StatusCode::OK,
            "{scheme} {}",
            fixture["hash"]
        );
    }
    // Re-hashed in the background after the first login: every hash is now a bcrypt at the
    // configured cost (a $2a$ or $2y$ one at that cost already was: the same algorithm).
    let cost = format!("${:02}$", app.settings.password.bcrypt_cost);
    let settled = crate::helpers::wait_until(std::time::Duration::from_secs(20), async || {
        exported(&app, &dir, "jsonl").await.lines().all(|line| {
            let user: Value = serde_json::from_str(line).unwrap();
            let hash = user["password_hash"].as_str().unwrap();
            hash.starts_with("$2") && hash[3..].starts_with(&cost)
        })
    })
    .await;
    assert!(settled, "{}", exported(&app, &dir, "jsonl").await);
    for i in 0..chosen.len() {
        assert_eq!(
            login_status(
                &app,
                &format!("user{i}@example.test"),
                "correct horse battery"
            )
            .await,
            StatusCode::OK
        );
    }
}
