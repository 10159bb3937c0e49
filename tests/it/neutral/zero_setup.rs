//! Zero-setup start: no configuration at all gives a SQLite database, a generated key and codes
//! in the log; production refuses those shortcuts.

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::json;

use crate::both::process::{Server, authd};
use crate::helpers::{PASSWORD, TempDir};

/// An empty directory that goes away when the test ends, passed or failed.
fn empty_dir() -> TempDir {
    TempDir::new("authd-zero")
}

/// The six-digit code from the last "log" transport message in a log (pretty or JSON lines).
fn code_from_log(log: &str) -> String {
    let phrase = "Your sign-in code is ";
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(phrase))
        .expect("the code email is in the log");
    let after = &line[line.find(phrase).unwrap() + phrase.len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6, "{line}");
    digits
}

#[tokio::test]
async fn serve_with_no_configuration_runs_the_whole_two_factor_flow_on_sqlite() {
    let guard = empty_dir();
    let dir = guard.path();
    let mut command = authd();
    command
        .current_dir(dir)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("RUST_LOG", "info");
    let server = Server::spawn(command).await;
    let client = crate::helpers::http_client();
    let url = |p: &str| format!("{}{p}", server.base);
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(url("/docs/")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let challenge =
        crate::helpers::register_and_start_challenge(&client, &server.base, "new@example.test")
            .await;

    // The code only reaches the log once the login answered; stop the server to read it all.
    let (status, log) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("DEVELOPMENT ONLY"), "{log}");
    assert!(log.contains("more than one instance"), "{log}");
    let code = code_from_log(&log);

    assert!(
        dir.join("data/authd.db").is_file(),
        "database created in data/"
    );
    // Signing keys live in the database; what is generated is the key that seals them.
    assert!(
        !dir.join("data/jwt-secret").exists(),
        "no HS256 secret is made"
    );
    let key = dir.join("data/key-encryption-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let key_before = std::fs::read(&key).unwrap();

    // A restart reuses the database and the key: the challenge issued before still works.
    let mut command = authd();
    command
        .current_dir(dir)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4");
    let server = Server::spawn(command).await;
    let response = client
        .post(format!("{}/login/otp", server.base))
        .bearer_auth(&challenge)
        .json(&json!({"otp": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, _) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
}

fn production_start_fails(extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let guard = empty_dir();
    let dir = guard.path();
    let mut command = authd();
    command
        .current_dir(dir)
        .arg("serve")
        .env("AUTHD_ENV", "production")
        .env("AUTHD_HTTP__ADDR", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    // A server that starts after all would never exit: give it a while, then stop it.
    let mut waited = 0;
    while child.try_wait().unwrap().is_none() && waited < 300 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        waited += 1;
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A production configuration that passes every check; each refusal test spoils one setting.
const SOUND_PRODUCTION: [(&str, &str); 3] = [
    ("AUTHD_MAIL__TRANSPORT", "smtp"),
    (
        "AUTHD_KEYS__ENCRYPTION_KEY",
        "3c9e1f07a2b84d6e5f10c3a7b9d2e8f4061a5c7e9b3d2f8a4c6e0b1d7f9a3c5e",
    ),
    ("AUTHD_PASSWORD__BCRYPT_COST", "10"),
];

/// Starts production with `spoil` on top of the sound configuration; returns the error line.
fn production_refusal(spoil: &[(&str, &str)]) -> String {
    let mut env = SOUND_PRODUCTION.to_vec();
    env.extend_from_slice(spoil);
    let (code, stderr) = production_start_fails(&env);
    assert_eq!(code, Some(2), "{spoil:?} was not refused: {stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(
        last.starts_with("error: refusing to start in production"),
        "{stderr}"
    );
    last
}

#[test]
fn production_refuses_the_public_development_key_from_docker_compose() {
    let compose = include_str!("../../../docker-compose.yml");
    let secret = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("AUTHD_KEYS__ENCRYPTION_KEY:"))
        .expect("docker-compose.yml sets a development key-encryption key")
        .trim();
    let line = production_refusal(&[("AUTHD_KEYS__ENCRYPTION_KEY", secret)]);
    assert!(line.contains("docker-compose.yml"), "{line}");
    assert!(!line.contains(secret), "the secret is not printed: {line}");
}

#[test]
fn production_refuses_a_secret_of_32_identical_characters() {
    let secret = "p".repeat(32);
    let line = production_refusal(&[("AUTHD_JWT__SECRET", &secret)]);
    assert!(line.contains("distinct characters"), "{line}");
    assert!(!line.contains(&secret), "the secret is not printed: {line}");
}

#[test]
fn production_refuses_rate_limits_switched_off() {
    let line = production_refusal(&[("AUTHD_RATE_LIMIT__ENABLED", "false")]);
    assert!(line.contains("rate_limit.enabled = false"), "{line}");
}

#[test]
fn production_refuses_a_bcrypt_cost_below_10() {
    let line = production_refusal(&[("AUTHD_PASSWORD__BCRYPT_COST", "9")]);
    assert!(line.contains("password.bcrypt_cost = 9"), "{line}");
}

#[test]
fn production_refuses_a_cleartext_smtp_password_to_a_relay_off_this_machine() {
    let relay = [
        ("AUTHD_MAIL__SMTP__HOST", "smtp.example.test"),
        ("AUTHD_MAIL__SMTP__USERNAME", "authd"),
        ("AUTHD_MAIL__SMTP__PASSWORD", "relay-password"),
        ("AUTHD_MAIL__SMTP__TLS", "none"),
    ];
    let line = production_refusal(&relay);
    assert!(line.contains("mail.smtp.tls"), "{line}");
    assert!(line.contains("smtp.example.test"), "{line}");
    assert!(!line.contains("relay-password"), "{line}");
}

#[tokio::test]
async fn production_allows_a_cleartext_relay_when_told_to_and_a_sound_configuration_serves() {
    for extra in [
        &[][..],
        &[
            ("AUTHD_MAIL__SMTP__HOST", "smtp.example.test"),
            ("AUTHD_MAIL__SMTP__PASSWORD", "relay-password"),
            ("AUTHD_MAIL__SMTP__ALLOW_CLEARTEXT", "true"),
        ][..],
    ] {
        let guard = empty_dir();
        let dir = guard.path();
        let mut command = authd();
        command.current_dir(dir).env("AUTHD_ENV", "production");
        for (k, v) in SOUND_PRODUCTION.iter().chain(extra) {
            command.env(k, v);
        }
        // Healthy on SQLite in the data directory: Server::spawn waits for /healthz 200.
        let server = Server::spawn(command).await;
        let (status, log) = server.terminate().await;
        assert_eq!(status.code(), Some(0), "{log}");
        assert!(dir.join("data/authd.db").is_file());
    }
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_0700_and_the_database_and_its_wal_and_shm_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let guard = empty_dir();
    let dir = guard.path();
    let mut command = authd();
    command
        .current_dir(dir)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4");
    let server = Server::spawn(command).await;
    let response = crate::helpers::http_client()
        .post(format!("{}/register", server.base))
        .json(&json!({"email": "modes@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // While the server runs the write-ahead log and its index exist beside the database.
    let mode = |name: &str| {
        let path = dir.join("data").join(name);
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        meta.permissions().mode() & 0o777
    };
    let modes = [
        ("data", mode("")),
        ("authd.db", mode("authd.db")),
        ("authd.db-wal", mode("authd.db-wal")),
        ("authd.db-shm", mode("authd.db-shm")),
        ("key-encryption-key", mode("key-encryption-key")),
    ];
    let (status, _) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        modes.map(|(name, mode)| format!("{name} {mode:o}")),
        [
            "data 700",
            "authd.db 600",
            "authd.db-wal 600",
            "authd.db-shm 600",
            "key-encryption-key 600",
        ]
    );
}

#[test]
fn production_refuses_the_log_and_file_mail_transports() {
    for transport in ["log", "file"] {
        let (code, stderr) = production_start_fails(&[
            ("AUTHD_MAIL__TRANSPORT", transport),
            ("AUTHD_JWT__SECRET", "p".repeat(40).as_str()),
        ]);
        assert_eq!(code, Some(2), "{stderr}");
        let last = stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "{stderr}");
        assert!(last.contains("development only"), "{last}");
    }
}

#[test]
fn production_refuses_a_generated_key() {
    let (code, stderr) = production_start_fails(&[("AUTHD_MAIL__TRANSPORT", "smtp")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("keys.encryption_key"), "{stderr}");
    // HS256 signs with jwt.secret: a generated one is refused too.
    let line = production_refusal(&[("AUTHD_JWT__ALGORITHM", "HS256")]);
    assert!(line.contains("jwt.secret"), "{line}");
}

/// `authd ARGS` in `dir` with no configuration at all and `stdin` as its input.
async fn admin_in(dir: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    let mut command = authd();
    command
        .current_dir(dir)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .args(args);
    crate::helpers::run_to_end(command, stdin.as_bytes()).await
}

#[tokio::test]
async fn admin_commands_leave_a_file_that_is_not_an_authd_database_as_it_is() {
    let guard = empty_dir();
    let dir = guard.path();
    std::fs::create_dir(dir.join("data")).unwrap();
    // Empty, as `touch` or a failed copy leaves it; then something else altogether.
    for content in [&b""[..], b"not a database at all\n"] {
        std::fs::write(dir.join("data/authd.db"), content).unwrap();
        for args in [&["user", "list"][..], &["keys", "list"], &["audit"]] {
            let output = admin_in(dir, args, "").await;
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
            assert!(
                stderr.contains("is not an authd database"),
                "{args:?}: {stderr}"
            );
            assert_eq!(
                std::fs::read(dir.join("data/authd.db")).unwrap(),
                content,
                "{args:?} wrote to the file"
            );
        }
    }
}

#[tokio::test]
async fn admin_commands_on_no_database_create_none_and_say_where_they_looked() {
    let guard = empty_dir();
    let dir = guard.path();
    let expected = format!(
        "no database at {}",
        dir.canonicalize().unwrap().join("data/authd.db").display()
    );
    let token = "eyJhbGciOiJIUzI1NiJ9.e30.c2ln";
    for args in [
        &["user", "list"][..],
        &["audit"],
        &["session", "list"],
        &["keys", "list"],
        &["token", "inspect", token],
        &["user", "disable", "ada@example.test"],
        &["session", "revoke", "--user", "ada@example.test"],
        &["prune"],
    ] {
        let output = admin_in(dir, args, "").await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        for part in [expected.as_str(), "--config", "AUTHD_DATABASE__URL"] {
            assert!(stderr.contains(part), "{args:?} lacks {part:?}: {stderr}");
        }
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
        assert!(
            !dir.join("data").exists(),
            "{args:?} created {}",
            dir.join("data").display()
        );
    }
    // A command that makes something may still make the zero-setup database, as serve does.
    let added = admin_in(
        dir,
        &[
            "user",
            "add",
            "--email",
            "ada@example.test",
            "--password-stdin",
        ],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(added.status.success(), "{added:?}");
    assert!(dir.join("data/authd.db").is_file());
    let listed = admin_in(dir, &["user", "list"], "").await;
    assert!(listed.status.success(), "{listed:?}");
    assert!(String::from_utf8_lossy(&listed.stdout).contains("ada@example.test"));
}

#[cfg(unix)]
#[tokio::test]
async fn a_key_encryption_key_file_other_users_can_read_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let guard = empty_dir();
    let dir = guard.path();
    let serve = || {
        let mut command = authd();
        command
            .current_dir(dir)
            .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
            .env("RUST_LOG", "info");
        command
    };
    let (status, private) = Server::spawn(serve()).await.terminate().await;
    assert_eq!(status.code(), Some(0), "{private}");
    assert!(!private.contains("readable by other users"), "{private}");

    let key = dir.join("data/key-encryption-key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (status, copied) = Server::spawn(serve()).await.terminate().await;
    assert_eq!(status.code(), Some(0), "{copied}");
    let warning = copied
        .lines()
        .find(|line| line.contains("readable by other users"))
        .unwrap_or_else(|| panic!("no warning: {copied}"));
    assert!(warning.contains("key-encryption-key"), "{warning}");
    assert!(warning.contains("chmod 600"), "{warning}");
}
