//! The real `authd serve` process: signals, exit status and what it writes to its log.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, SECRET, fresh_database, run_to_end};

use crate::smtp_sink::{Behaviour, MailSink, extract_code};

pub struct Server {
    child: std::process::Child,
    pub base: String,
    /// Everything the server wrote to stderr so far, read by a thread while it runs (a full
    /// pipe would block the server's logging, and with it the server).
    log: Arc<Mutex<String>>,
    drain: Option<std::thread::JoinHandle<()>>,
}

/// How long a stopping server may take to exit. On SIGTERM authd finishes in-flight requests
/// (bounded by `mail.smtp.timeout_secs`, 10 s by default) and then gives the audit writer up to
/// 8 s to flush its queue (README, "Audit trail"): 30 s is well past both together, so only a
/// server that hangs fails here.
pub const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    testkit::free_port().expect("a free loopback port")
}

/// `authd` with a clean environment: no inherited AUTHD_* or DATABASE_URL.
pub fn authd() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("AUTHD_") || key == "DATABASE_URL" {
            command.env_remove(key);
        }
    }
    command
}

/// Waits for `child` to exit, at most `deadline`; kills it and panics past that. Async, so the
/// test's own servers (the mail sink) keep running meanwhile.
pub async fn wait_with_deadline(
    child: &mut std::process::Child,
    deadline: Duration,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("authd did not exit within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Server {
    /// Starts the binary on a free port against `db_url` and the mail sink, waits for /healthz.
    async fn start(db_url: &str, smtp_port: u16, log_level: &str) -> Server {
        Server::start_with(db_url, smtp_port, log_level, &[]).await
    }

    /// The same with extra environment variables.
    async fn start_with(
        db_url: &str,
        smtp_port: u16,
        log_level: &str,
        extra: &[(&str, &str)],
    ) -> Server {
        let mut command = authd();
        command
            .env("AUTHD_DATABASE__URL", db_url)
            .env("AUTHD_JWT__SECRET", SECRET)
            .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
            .env("AUTHD_MAIL__TRANSPORT", "smtp")
            .env("AUTHD_MAIL__SMTP__HOST", "127.0.0.1")
            .env("AUTHD_MAIL__SMTP__PORT", smtp_port.to_string())
            .env("RUST_LOG", log_level);
        for (key, value) in extra {
            command.env(key, value);
        }
        Server::spawn(command).await
    }

    /// Runs `command serve` on a free port and waits until /healthz answers 200.
    pub async fn spawn(mut command: Command) -> Server {
        let port = free_port();
        let mut child = command
            .arg("serve")
            .env("AUTHD_HTTP__ADDR", format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("authd starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let drain = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            drain: Some(drain),
        };
        let client = crate::helpers::http_client();
        // 200 polls 50 ms apart: 10 s for a start that takes milliseconds (README, "Start-up").
        for _ in 0..200 {
            let healthy = client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
            if healthy {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = server.finish_log();
                panic!("authd serve exited with {status}: {log}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("authd serve did not become healthy");
    }

    /// The whole log, once the process has exited (the drain thread ends at EOF).
    fn finish_log(&mut self) -> String {
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        self.log.lock().unwrap().clone()
    }

    fn send_sigterm(&self) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(killed.success());
    }

    /// SIGTERM, then the exit status (within [`EXIT_DEADLINE`]) and everything it logged.
    pub async fn terminate(self) -> (std::process::ExitStatus, String) {
        self.send_sigterm();
        self.terminate_signalled().await
    }

    /// The exit status (within [`EXIT_DEADLINE`]) and the log of a server already sent SIGTERM.
    pub async fn terminate_signalled(mut self) -> (std::process::ExitStatus, String) {
        let status = wait_with_deadline(&mut self.child, EXIT_DEADLINE).await;
        (status, self.finish_log())
    }
}

impl Drop for Server {
    /// A test that panics before `terminate` leaves no server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn sigterm_stops_the_server_with_exit_status_zero() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let server = Server::start(&db_url, mail.port, "info").await;
    let (status, log) = server.terminate().await;
    assert_eq!(status.code(), Some(0), "log: {log}");
    assert!(log.contains("stopped"), "log: {log}");
}

#[tokio::test]
async fn sigterm_during_a_login_waiting_on_the_mail_relay_still_answers_it_then_exits_zero() {
    let db_url = fresh_database().await;
    // The relay greets only after 2 s: the login holds its connection that long, well inside
    // authd's default `mail.smtp.timeout_secs` (10 s), so SIGTERM finds it in flight.
    let mail = MailSink::start(Behaviour::Delay(Duration::from_secs(2)))
        .await
        .unwrap();
    let server = Server::start(&db_url, mail.port, "info").await;
    let client = crate::helpers::http_client();
    let response = client
        .post(format!("{}/register", server.base))
        .json(&json!({"email": "inflight@example.test", "password": PASSWORD, "two_factor_enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    // The registration's verification email goes first, in the background.
    mail.wait_for("inflight@example.test", 1).await;
    mail.forget("inflight@example.test");
    let before = mail.connections();

    let login = tokio::spawn(
        client
            .post(format!("{}/login", server.base))
            .json(&json!({"email": "inflight@example.test", "password": PASSWORD}))
            .send(),
    );
    // In flight for sure: authd is talking to the relay, which has not greeted yet.
    mail.wait_for_connections(before + 1).await;
    assert!(mail.messages().is_empty());
    server.send_sigterm();

    let response = login
        .await
        .unwrap()
        .expect("the in-flight login is answered");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["otp_required"], true, "{body}");
    assert!(body["challenge_token"].is_string(), "{body}");
    assert_eq!(mail.messages_to("inflight@example.test").len(), 1);
    let (status, log) = server.terminate_signalled().await;
    assert_eq!(status.code(), Some(0), "log: {log}");
}

#[tokio::test]
async fn debug_logs_of_a_whole_two_factor_flow_hold_no_password_code_token_or_secret() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let server = Server::start(&db_url, mail.port, "debug").await;
    let client = crate::helpers::http_client();
    let url = |p: &str| format!("{}{p}", server.base);
    let challenge =
        crate::helpers::register_and_start_challenge(&client, &server.base, "quiet@example.test")
            .await;
    // The registration's verification email and the login's code, in either order.
    mail.wait_for("quiet@example.test", 2).await;
    let messages = mail.messages_to("quiet@example.test");
    let of = |subject: &str| {
        messages
            .iter()
            .find(|m| m.subject().contains(subject))
            .unwrap_or_else(|| panic!("no message about {subject}"))
    };
    let code = extract_code(of("sign-in code"));
    let verification = of("Confirm your email");
    let verification_code = extract_code(verification);
    let link_token = verification.token().unwrap();
    let body: Value = client
        .post(url("/login/otp"))
        .bearer_auth(&challenge)
        .json(&json!({"otp": code}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = body["access_token"].as_str().unwrap().to_string();
    let me = client
        .get(url("/users/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let (_, log) = server.terminate().await;
    assert!(
        log.contains("login code sent"),
        "the log is being written: {log}"
    );
    for (what, secret) in [
        ("password", PASSWORD),
        ("code", code.as_str()),
        ("verification code", verification_code.as_str()),
        ("verification link's token", link_token.as_str()),
        ("challenge token", challenge.as_str()),
        ("access token", access.as_str()),
        ("jwt secret", SECRET),
    ] {
        assert!(!log.contains(secret), "the log contains the {what}");
    }
}

#[tokio::test]
async fn healthcheck_exits_0_against_a_running_server_and_1_once_it_is_gone() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let server = Server::start(&db_url, mail.port, "warn").await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let check = || {
        let mut command = authd();
        command.args(["healthcheck", "--addr", &addr]);
        run_to_end(command, b"")
    };
    let up = check().await;
    assert_eq!(up.status.code(), Some(0), "{up:?}");
    let (status, _) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    let down = check().await;
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot connect"), "{stderr}");
}

#[tokio::test]
async fn audit_command_reads_the_trail_newest_first_filtered_by_user() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let server = Server::start(&db_url, mail.port, "warn").await;
    let client = crate::helpers::http_client();
    for email in ["one@example.test", "two@example.test"] {
        let response = client
            .post(format!("{}/register", server.base))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // The verification emails went out (and into the trail) before the login below.
    let metrics = format!("{}/metrics", server.base);
    let sent = r#"authd_account_mails_total{kind="verify_email",outcome="sent"} 2"#;
    assert!(
        crate::helpers::wait_until(crate::helpers::HTTP_TIMEOUT, async || {
            let text = client
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines().any(|line| line == sent)
        })
        .await,
        "both verification emails were sent"
    );
    let response = client
        .post(format!("{}/login", server.base))
        .json(&json!({"email": "ONE@example.test", "password": "wrong password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Stopping the server flushes the audit queue.
    let (status, _) = server.terminate().await;
    assert_eq!(status.code(), Some(0));

    let audit = |args: &[&str]| {
        let mut command = authd();
        command
            .arg("audit")
            .args(args)
            .args(["--database-url", &db_url]);
        run_to_end(command, b"")
    };
    let output = audit(&["--user", "One@Example.test", "--format", "json"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let events: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["login_failed", "email_verification_sent", "user_registered"]
    );
    assert_eq!(events[0]["outcome"], "failure");
    assert_eq!(events[0]["client_ip"], "127.0.0.1");
    assert!(events.iter().all(|e| e["email"] == "one@example.test"));

    let table = audit(&["--limit", "1"]).await;
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("login_failed") && !text.contains("user_registered"),
        "{text}"
    );

    let bad = audit(&["--user", "not-an-email"]).await;
    assert_eq!(bad.status.code(), Some(1));
}

#[tokio::test]
async fn user_add_refuses_a_common_password_like_the_api() {
    let db_url = fresh_database().await;
    let mut add = authd();
    add.args([
        "user",
        "add",
        "--email",
        "weak@example.test",
        "--password-stdin",
        "--database-url",
        &db_url,
    ])
    .env("AUTHD_PASSWORD__BCRYPT_COST", "4");
    let output = run_to_end(add, b"password1\n").await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("common passwords"), "{stderr}");
}

#[tokio::test]
async fn serve_on_an_empty_database_migrates_sqlite_and_says_to_migrate_postgres() {
    let db_url = crate::helpers::create_empty_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let server = Server::start(&db_url, mail.port, "info").await;
    let postgres = crate::helpers::backend() == authd::store::Backend::Postgres;
    // The advice may come from a task that runs after /healthz answers: wait for its line.
    let said = if postgres {
        "run `authd migrate`"
    } else {
        "applied migration"
    };
    crate::helpers::wait_until(Duration::from_secs(10), async || {
        server.log.lock().unwrap().contains(said)
    })
    .await;
    let (status, log) = server.terminate().await;
    assert_eq!(status.code(), Some(0));
    if postgres {
        assert!(log.contains("run `authd migrate`"), "{log}");
    } else {
        assert!(log.contains("applied migration"), "{log}");
        assert!(!log.contains("authd migrate"), "{log}");
    }
}
