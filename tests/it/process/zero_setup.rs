//! Zero-setup start: no configuration at all gives a SQLite database, a generated key and codes
//! in the log; production refuses those shortcuts.

use std::process::Stdio;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Server, authd};
use crate::helpers::PASSWORD;

fn empty_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("authd-zero-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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
    let dir = empty_dir();
    let mut command = authd();
    command
        .current_dir(&dir)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("RUST_LOG", "info");
    let server = Server::spawn(command).await;
    let client = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.base);
    assert_eq!(
        client.get(url("/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        client.get(url("/docs/")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let response = client
        .post(url("/register"))
        .json(
            &json!({"email": "new@example.test", "password": PASSWORD, "two_factor_enabled": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = client
        .post(url("/login"))
        .json(&json!({"email": "new@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let challenge = body["challenge_token"].as_str().unwrap().to_string();

    // The code only reaches the log once the login answered; stop the server to read it all.
    let (status, log) = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(log.contains("DEVELOPMENT ONLY"), "{log}");
    assert!(log.contains("more than one instance"), "{log}");
    let code = code_from_log(&log);

    assert!(
        dir.join("data/authd.db").is_file(),
        "database created in data/"
    );
    let key = dir.join("data/jwt-secret");
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
        .current_dir(&dir)
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
    let (status, _) = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn production_start_fails(extra: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = empty_dir();
    let mut command = authd();
    command
        .current_dir(&dir)
        .arg("serve")
        .env("AUTHD_ENV", "production")
        .env("AUTHD_HTTP__ADDR", "127.0.0.1:0")
        .stdin(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
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
    assert!(stderr.contains("jwt.secret"), "{stderr}");
}
