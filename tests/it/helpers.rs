//! Test harness: a fresh database per test, a mail sink, and authd served on a free port.

use authd::app::App;
use authd::config::{MailTransport, Settings, SmtpTls};
use authd::store::{Backend, Store};
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::smtp_sink::{Behaviour, MailSink, extract_code};

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The key-encryption key of every test server and command: 64 hex characters.
pub const KEK: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";
pub const PASSWORD: &str = "correct horse battery";

/// The longest any one HTTP exchange of a test may take before the test fails instead of
/// hanging CI. The slowest answer a test waits for on purpose is a login held up by the mail
/// relay (`mail.smtp.timeout_secs`, 2 s in `test_settings`, 10 s by default) or by a database
/// outage (`database.acquire_timeout_secs`, 2 s here), plus bcrypt on a busy 2-core machine:
/// 30 s is three times the largest of those defaults.
pub const HTTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// An HTTP client whose every request fails after [`HTTP_TIMEOUT`] rather than hanging.
pub fn http_client() -> reqwest::Client {
    authd::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("an HTTP client builds")
}

/// How long a one-shot `authd` command (migrate, user ..., prune, healthcheck) may run. They
/// take well under a second; the most any waits for is the database's acquire timeout
/// (`database.acquire_timeout_secs`, 5 s by default), so 60 s only fails one that hangs.
pub const COMMAND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `command` to its end with `stdin` as its input (closed after), off the async workers
/// (a server in the same test needs them), killing it and failing past [`COMMAND_DEADLINE`].
pub async fn run_to_end(command: std::process::Command, stdin: &[u8]) -> std::process::Output {
    let mut command = assert_cmd::Command::from_std(command);
    command
        .write_stdin(stdin.to_vec())
        .timeout(COMMAND_DEADLINE);
    tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("authd ran to its end within the deadline")
}

/// A directory under the system temp dir that is removed when the guard drops, so a failing
/// (panicking) test leaves nothing behind either.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server the tests may create databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL must point at a PostgreSQL server where the tests may create databases \
         (`make test` or `bash .ci/run` sets it up)",
    )
}

/// The backend this run of the suite targets: `AUTHD_TEST_BACKEND=sqlite` or PostgreSQL (default).
pub fn backend() -> Backend {
    match std::env::var("AUTHD_TEST_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        Ok("postgres") | Err(_) => Backend::Postgres,
        Ok(other) => panic!("AUTHD_TEST_BACKEND must be postgres or sqlite, not {other:?}"),
    }
}

/// Creates an empty database with a unique name, applies the migrations, and returns its URL.
pub async fn fresh_database() -> String {
    let url = create_empty_database().await;
    let mut settings = Settings::defaults();
    settings.database.url = url.clone().into();
    Store::connect_lazy(&settings)
        .unwrap()
        .migrate()
        .await
        .expect("migrations apply to a fresh database");
    url
}

thread_local! {
    static SQLITE_DIRS: std::cell::RefCell<Vec<TempDir>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Creates an empty database (no tables) of the suite's backend and returns its URL.
pub async fn create_empty_database() -> String {
    if backend() == Backend::Sqlite {
        let dir = TempDir::new("authd-test");
        let url = format!("sqlite://{}", dir.path().join("authd.db").display());
        // Kept until the thread that asked for it ends: the test's own thread (libtest runs
        // each test on one, and `#[tokio::test]` runs its body there too), so the directory
        // goes when the test does, passed or failed. (Dropping a TestApp removes it earlier.)
        SQLITE_DIRS.with(|dirs| dirs.borrow_mut().push(dir));
        return url;
    }
    let name = format!("authd_test_{}", uuid::Uuid::new_v4().simple());
    testkit::postgres::create_database(&admin_url(), &name)
        .await
        .expect("the test PostgreSQL server lets the tests create databases")
}

/// Settings for a test: its database, the mail sink's port, cheap bcrypt, port 0.
pub fn test_settings(db_url: &str, smtp_port: u16) -> Settings {
    let mut settings = Settings::defaults();
    settings.http.addr = "127.0.0.1:0".into();
    settings.database.url = db_url.to_string().into();
    settings.database.acquire_timeout_secs = 2;
    settings.jwt.secret = Some(SECRET.into());
    settings.keys.encryption_key = Some(KEK.into());
    settings.password.bcrypt_cost = 4;
    settings.mail.transport = MailTransport::Smtp;
    settings.mail.smtp.host = "127.0.0.1".into();
    settings.mail.smtp.port = smtp_port;
    settings.mail.smtp.tls = SmtpTls::None;
    settings.mail.smtp.timeout_secs = 2;
    settings
}

/// Keys that sign as the server of `settings` does now: with the database's current key (read
/// afresh), for tests that need a token the server did not issue (expired, forged claims).
pub async fn server_keys(settings: &Settings) -> authd::token::TokenKeys {
    let store = authd::store::Store::connect_lazy(settings).unwrap();
    let records = store.list_signing_keys().await.unwrap();
    let kek = authd::keys::load_key_encryption_key(settings, false).unwrap();
    let set = authd::keys::KeySet::from_records(
        &records,
        &authd::keys::KeyMaterial {
            kek: Some(&kek),
            hs256_secret: None,
            algorithm: settings.jwt.algorithm,
            retired_horizon_secs: authd::token::TokenKeys::retired_horizon_secs(settings),
        },
        chrono::Utc::now(),
    )
    .unwrap();
    authd::token::TokenKeys::with_set(set, &settings.jwt)
}

/// The current key of the server of `settings`, opened: its `kid`, algorithm and private half,
/// for tests that sign tokens with headers of their own making.
pub async fn server_signer(
    settings: &Settings,
) -> (String, jsonwebtoken::Algorithm, jsonwebtoken::EncodingKey) {
    let store = authd::store::Store::connect_lazy(settings).unwrap();
    let records = store.list_signing_keys().await.unwrap();
    let current = records.iter().find(|k| k.state == "current").unwrap();
    let kek = authd::keys::load_key_encryption_key(settings, false).unwrap();
    let algorithm: authd::keys::KeyAlgorithm = current.algorithm.parse().unwrap();
    let key =
        authd::keys::PrivateKey::unseal(&current.sealed_private, &kek, &current.kid, algorithm)
            .unwrap();
    (current.kid.clone(), algorithm.jwt(), key.encoding_key())
}

/// authd running on a free port against its own database and mail sink.
pub struct TestApp {
    pub base: String,
    /// Base URL of the separate metrics listener, when `metrics.addr` is set.
    pub metrics_base: Option<String>,
    pub client: reqwest::Client,
    pub mail: MailSink,
    pub db_url: String,
    pub db: AppDb,
    pub settings: Settings,
    stop: Option<oneshot::Sender<()>>,
    pub server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(Behaviour::Accept, |_| {}).await
    }

    pub async fn spawn_with(behaviour: Behaviour, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let db_url = fresh_database().await;
        let mail = MailSink::start(behaviour).await.unwrap();
        let mut settings = test_settings(&db_url, mail.port);
        tweak(&mut settings);
        TestApp::spawn_on(settings, mail, db_url).await
    }

    /// Starts authd with exactly these settings (the database must already be migrated).
    pub async fn spawn_on(settings: Settings, mail: MailSink, db_url: String) -> TestApp {
        let app = App::build(&settings).await.expect("authd builds");
        let base = format!("http://{}", app.local_addr());
        let metrics_base = app.metrics_addr().map(|a| format!("http://{a}"));
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let client = http_client();
        let db = AppDb {
            db: TestDb::connect(&db_url),
            metrics_url: format!("{}/metrics", metrics_base.as_deref().unwrap_or(&base)),
            client: client.clone(),
        };
        TestApp {
            base,
            metrics_base,
            client,
            mail,
            db_url,
            db,
            settings,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Asks the server to stop gracefully; returns its join handle.
    pub fn stop(&mut self) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.take().expect("server still running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_json_with_token(&self, path: &str, token: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Registers a user and returns the User body, once the verification email registration
    /// sends in the background is done with (delivered, or failed on a relay that misbehaves);
    /// the sink then forgets it, so what a test counts next is its own.
    pub async fn register(&self, email: &str, two_factor: bool) -> Value {
        let response = self
            .post_json(
                "/register",
                &json!({"email": email, "password": PASSWORD, "two_factor_enabled": two_factor}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let user = response.json().await.unwrap();
        self.wait_for_background_mail().await;
        self.mail.forget(email);
        user
    }

    /// Waits (bounded) until the server has no account email in the background: every one a
    /// request started (counted before the request answers) is delivered or given up.
    pub async fn wait_for_background_mail(&self) {
        let series = "authd_account_mails_in_flight";
        let mut in_flight = None;
        let settled = wait_until(HTTP_TIMEOUT, async || {
            let text = self
                .client
                .get(&self.db.metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            in_flight = text
                .lines()
                .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
                .map(|value| value.trim().parse::<i64>().unwrap());
            in_flight == Some(0)
        })
        .await;
        assert!(settled, "{series}: {in_flight:?}");
    }

    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post_json("/login", &json!({"email": email, "password": password}))
            .await
    }

    /// Logs a two-factor user in and returns the challenge token and the emailed code.
    pub async fn start_challenge(&self, email: &str) -> (String, String) {
        let before = self.mail.messages_to(email).len();
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["otp_required"], true);
        let token = body["challenge_token"].as_str().unwrap().to_string();
        let message = self.mail.wait_for(email, before + 1).await;
        (token, extract_code(&message))
    }

    pub async fn submit_code(&self, challenge_token: &str, code: &str) -> Response {
        self.post_json_with_token("/login/otp", challenge_token, &json!({"otp": code}))
            .await
    }

    /// Logs a user without two-factor in and returns the access token.
    pub async fn access_token(&self, email: &str) -> String {
        let response = self.login(email, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let sqlite_dir = self
            .db_url
            .strip_prefix("sqlite://")
            .and_then(|path| std::path::Path::new(path).parent());
        if let Some(dir) = sqlite_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Direct access to a test's database, for asserting what is stored. Queries must be plain
/// SQL both backends understand (use `CAST(x AS BIGINT)` for integers).
pub enum TestDb {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl TestDb {
    pub fn connect(url: &str) -> TestDb {
        if url.starts_with("sqlite:") {
            TestDb::Sqlite(sqlx::SqlitePool::connect_lazy(url).unwrap())
        } else {
            TestDb::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect_lazy(url)
                    .unwrap(),
            )
        }
    }

    pub async fn int(&self, sql: &'static str) -> i64 {
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            TestDb::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    pub async fn text(&self, sql: &'static str) -> String {
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            TestDb::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    pub async fn bytes(&self, sql: &'static str) -> Vec<u8> {
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            TestDb::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }

    /// Runs statements (several, separated by `;`, run as one script), in the spelling of
    /// whichever backend this is.
    pub async fn exec(&self, postgres: &'static str, sqlite: &'static str) {
        match self {
            TestDb::Postgres(p) => {
                sqlx::raw_sql(postgres).execute(p).await.unwrap();
            }
            TestDb::Sqlite(p) => {
                sqlx::raw_sql(sqlite).execute(p).await.unwrap();
            }
        }
    }

    /// How many security events of `kind` are stored.
    pub async fn count_events(&self, kind: &str) -> i64 {
        match self {
            TestDb::Postgres(p) => sqlx::query_scalar(
                "SELECT CAST(count(*) AS BIGINT) FROM security_events WHERE kind = $1",
            )
            .bind(kind)
            .fetch_one(p)
            .await
            .unwrap(),
            TestDb::Sqlite(p) => sqlx::query_scalar(
                "SELECT CAST(count(*) AS BIGINT) FROM security_events WHERE kind = ?1",
            )
            .bind(kind)
            .fetch_one(p)
            .await
            .unwrap(),
        }
    }

    /// The `user_id` of every stored event of `kind` (None where the event names no user).
    pub async fn event_user_ids(&self, kind: &str) -> Vec<Option<uuid::Uuid>> {
        match self {
            TestDb::Postgres(p) => {
                sqlx::query_scalar("SELECT user_id FROM security_events WHERE kind = $1")
                    .bind(kind)
                    .fetch_all(p)
                    .await
                    .unwrap()
            }
            TestDb::Sqlite(p) => {
                sqlx::query_scalar("SELECT user_id FROM security_events WHERE kind = ?1")
                    .bind(kind)
                    .fetch_all(p)
                    .await
                    .unwrap()
            }
        }
    }

    /// Moves the end of every lock and code-email window an hour into the past, as if the test
    /// had waited that long: the counts stay, so what follows sees what a patient client sees.
    pub async fn end_locks(&self) {
        self.exec(
            "UPDATE throttles SET locked_until = locked_until - interval '1 hour' \
             WHERE locked_until IS NOT NULL",
            "UPDATE throttles SET locked_until = locked_until - 3600000000 \
             WHERE locked_until IS NOT NULL",
        )
        .await;
    }

    /// Moves every challenge's expiry into the past.
    pub async fn expire_challenges(&self) {
        match self {
            TestDb::Postgres(p) => {
                sqlx::query("UPDATE otp_challenges SET expires_at = now() - interval '1 second'")
                    .execute(p)
                    .await
                    .unwrap();
            }
            TestDb::Sqlite(p) => {
                sqlx::query("UPDATE otp_challenges SET expires_at = expires_at - 3600000000")
                    .execute(p)
                    .await
                    .unwrap();
            }
        }
    }
}

/// How long a test waits for the audit trail to show what it expects: the writer takes the
/// events within milliseconds; 10 s only fails a test whose events never come.
pub const EVENTS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a bounded wait looks again.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Looks at `done` every [`POLL`] until it holds or `deadline` has passed; whether it held.
/// The one place a test waits on a condition.
pub async fn wait_until(
    deadline: std::time::Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> bool {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if done().await {
            return true;
        }
        if tokio::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The database of a running test server: [`TestDb`], and the server's own count of security
/// events recorded but not yet written (`authd_audit_events_pending` on its `/metrics`), which
/// says when its audit trail holds everything recorded so far.
pub struct AppDb {
    db: TestDb,
    metrics_url: String,
    client: reqwest::Client,
}

impl std::ops::Deref for AppDb {
    type Target = TestDb;

    fn deref(&self) -> &TestDb {
        &self.db
    }
}

impl AppDb {
    /// The server's `authd_audit_events_pending`; None when it serves no `/metrics` (switched
    /// off, or the server has stopped, and so written its trail out).
    pub async fn audit_pending(&self) -> Option<i64> {
        let response = self.client.get(&self.metrics_url).send().await.ok()?;
        if response.status() != reqwest::StatusCode::OK {
            return None;
        }
        let text = response.text().await.ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("authd_audit_events_pending "))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Waits (bounded) until `count` events of `kind` are stored and the server has written
    /// every event recorded so far, then fails on more or fewer: an extra event recorded by the
    /// requests the test made is in the trail by then, so "exactly" holds without a pause.
    pub async fn expect_events(&self, kind: &str, count: i64) {
        let mut seen = 0;
        wait_until(EVENTS_DEADLINE, async || {
            let settled = matches!(self.audit_pending().await, Some(0) | None);
            seen = self.count_events(kind).await;
            seen >= count && settled
        })
        .await;
        assert_eq!(seen, count, "{kind} events");
    }
}

/// Registers `email` with two-factor login on the authd at `base` and starts a login: the
/// challenge token (for tests that run authd as a process rather than a [`TestApp`]).
pub async fn register_and_start_challenge(
    client: &reqwest::Client,
    base: &str,
    email: &str,
) -> String {
    let response = client
        .post(format!("{base}/register"))
        .json(&json!({"email": email, "password": PASSWORD, "two_factor_enabled": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = client
        .post(format!("{base}/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["challenge_token"].as_str().unwrap().to_string()
}

/// The value of the series `series` (its name with its labels, as `/metrics` prints it) on the
/// API port; None when the series is not there.
pub async fn metric_value(app: &TestApp, series: &str) -> Option<i64> {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

/// Verifications bcrypt has run, from `/metrics`; fails when the series is not there (a
/// missing series would read as no verification at all).
pub async fn bcrypt_verifications(app: &TestApp) -> u64 {
    let series = r#"authd_bcrypt_duration_seconds_count{operation="verify"}"#;
    let count = metric_value(app, series)
        .await
        .unwrap_or_else(|| panic!("no {series} in /metrics"));
    u64::try_from(count).unwrap()
}

/// Reads a problem+json body and checks its shape; returns it.
pub async fn problem(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status, "unexpected status");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "body: {body}");
    assert_eq!(body["status"], status.as_u16());
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "problem lacks {key}: {body}");
    }
    body
}

/// Runs the admin command line against `db_url` (beside a running server, if any) and returns
/// what it did; it is killed and the test fails past [`COMMAND_DEADLINE`].
pub async fn admin_output(
    db_url: &str,
    data_dir: &TempDir,
    args: &[&str],
    stdin: &str,
) -> std::process::Output {
    admin_output_with(db_url, data_dir, args, stdin, &[]).await
}

/// [`admin_output`] with these environment variables set on top.
pub async fn admin_output_with(
    db_url: &str,
    data_dir: &TempDir,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = admin_command(db_url, data_dir, args);
    for (key, value) in env {
        cmd.env(key, value);
    }
    run_to_end(cmd, stdin.as_bytes()).await
}

/// The admin command line against `db_url`, with the tests' secrets and nothing of the
/// environment's `AUTHD_*`.
fn admin_command(db_url: &str, data_dir: &TempDir, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTHD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("DATABASE_URL")
        .env("AUTHD_JWT__SECRET", SECRET)
        .env("AUTHD_KEYS__ENCRYPTION_KEY", KEK)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("AUTHD_DATA_DIR", data_dir.path())
        // On SQLite a server beside the command may hold the write lock for a moment.
        .env("AUTHD_DATABASE__ACQUIRE_TIMEOUT_SECS", "20")
        .args(["--database-url", db_url])
        .args(args);
    cmd
}

/// `authd keys list --format json`: every signing key, oldest first.
pub async fn signing_keys(db_url: &str, data_dir: &TempDir) -> Vec<Value> {
    let listed = admin(db_url, data_dir, &["keys", "list", "--format", "json"], "").await;
    serde_json::from_str(&listed).unwrap()
}

/// The `kid` of the (first) signing key in `state`.
pub async fn kid_in_state(db_url: &str, data_dir: &TempDir, state: &str) -> String {
    signing_keys(db_url, data_dir)
        .await
        .into_iter()
        .find(|k| k["state"] == state)
        .unwrap_or_else(|| panic!("no {state} key"))["kid"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// `authd keys rotate`, then `authd keys rotate --activate --force`: a new current key at
/// once, the old one retired. The new key's `kid`.
pub async fn rotate_now(db_url: &str, data_dir: &TempDir) -> String {
    admin(db_url, data_dir, &["keys", "rotate"], "").await;
    admin(
        db_url,
        data_dir,
        &["keys", "rotate", "--activate", "--force"],
        "",
    )
    .await;
    kid_in_state(db_url, data_dir, "current").await
}

/// The one stderr line of a command refused with exit code 1 (`what` names it in a failure).
pub fn refused_line(output: std::process::Output, what: &str) -> String {
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{what}: {stderr}");
    stderr
}

/// [`admin_output`] that must exit 0; returns its stdout.
pub async fn admin(db_url: &str, data_dir: &TempDir, args: &[&str], stdin: &str) -> String {
    let output = admin_output(db_url, data_dir, args, stdin).await;
    assert!(output.status.success(), "authd {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}
