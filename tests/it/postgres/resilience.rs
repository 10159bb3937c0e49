//! Failure handling: database down, mail relay refusing, failing or silent, graceful shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TestApp, fresh_database, metric_value, problem, test_settings, wait_until,
};
use crate::smtp_sink::{Behaviour, MailSink};

async fn count_challenges(app: &TestApp) -> i64 {
    app.db
        .int("SELECT CAST(count(*) AS BIGINT) FROM otp_challenges")
        .await
}

/// How long a request may take to fail on a dead dependency whose timeout the test sets to
/// `configured_secs` (1 s here). Ten times that leaves a slow CI machine plenty of room, and
/// stays far below what the libraries do without authd's setting (lettre waits 60 s for a
/// silent relay; sqlx's pool waits 30 s to acquire a connection), so a request that answers
/// only because a library default ran out fails the test. A deadline, not a speed measurement.
fn deadline_for(configured_secs: u64) -> Duration {
    Duration::from_secs(configured_secs * 10)
}

async fn login_with_broken_mail_answers_503_and_leaves_no_challenge(behaviour: Behaviour) {
    let app = TestApp::spawn_with(behaviour, |s| s.mail.smtp.timeout_secs = 1).await;
    app.register("mailless@example.test", true).await;
    let deadline = deadline_for(app.settings.mail.smtp.timeout_secs);
    let response = tokio::time::timeout(deadline, app.login("mailless@example.test", PASSWORD))
        .await
        .unwrap_or_else(|_| {
            panic!("no answer within {deadline:?} with mail.smtp.timeout_secs = 1")
        });
    assert!(response.headers().get("retry-after").is_some());
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        !body.to_string().contains("451"),
        "no relay text leaks: {body}"
    );
    assert_eq!(count_challenges(&app).await, 0);
    // Other requests are unaffected.
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    app.register("other@example.test", false).await;
    assert_eq!(
        app.login("other@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_refusing_mail_relay_gives_503_and_no_usable_challenge() {
    login_with_broken_mail_answers_503_and_leaves_no_challenge(Behaviour::Refuse).await;
}

#[tokio::test]
async fn a_failing_mail_relay_gives_503_and_no_usable_challenge() {
    login_with_broken_mail_answers_503_and_leaves_no_challenge(Behaviour::FailData).await;
}

#[tokio::test]
async fn a_silent_mail_relay_gives_503_within_the_timeout() {
    login_with_broken_mail_answers_503_and_leaves_no_challenge(Behaviour::Silent).await;
}

#[tokio::test]
async fn a_failed_mail_keeps_the_earlier_challenge_alive() {
    // The first login succeeds; the relay then dies; the earlier code must still work.
    let db_url = fresh_database().await;
    let good = MailSink::start(Behaviour::Accept).await.unwrap();
    let app = TestApp::spawn_on(test_settings(&db_url, good.port), good, db_url.clone()).await;
    app.register("keep@example.test", true).await;
    let (challenge, code) = app.start_challenge("keep@example.test").await;
    drop(app);

    let bad = MailSink::start(Behaviour::Refuse).await.unwrap();
    let app = TestApp::spawn_on(test_settings(&db_url, bad.port), bad, db_url).await;
    let response = app.login("keep@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.submit_code(&challenge, &code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn with_the_database_down_requests_get_503_with_retry_after_and_readyz_fails() {
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    // Nothing listens on port 1: every connection attempt is refused.
    let mut settings = test_settings("postgres://postgres@127.0.0.1:1/authd", mail.port);
    settings.database.acquire_timeout_secs = 1;
    let app = TestApp::spawn_on(
        settings,
        mail,
        "postgres://postgres@127.0.0.1:1/authd".into(),
    )
    .await;

    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    let ready = app.get("/readyz").await;
    problem(ready, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let response = app.login("a@example.test", PASSWORD).await;
    assert_eq!(response.headers()["retry-after"], "5");
    let body = problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(
        !body.to_string().to_lowercase().contains("refused"),
        "{body}"
    );
    let response = app
        .post_json(
            "/register",
            &json!({"email": "a@example.test", "password": PASSWORD}),
        )
        .await;
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
}

/// A TCP port that accepts connections and never says a word: a database that hangs.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

/// `request`'s answer, or a failure once `deadline` has passed.
async fn bounded<T>(deadline: Duration, what: &str, request: impl Future<Output = T>) -> T {
    tokio::time::timeout(deadline, request)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {deadline:?}"))
}

#[tokio::test]
async fn with_a_database_that_never_answers_requests_get_503_within_the_acquire_timeout() {
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/authd",
        silent_listener().await
    );
    let mut settings = test_settings(&url, mail.port);
    settings.database.acquire_timeout_secs = 1;
    let deadline = deadline_for(settings.database.acquire_timeout_secs);
    let app = tokio::time::timeout(deadline, TestApp::spawn_on(settings, mail, url))
        .await
        .expect("authd starts while the database hangs");
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    let response = bounded(deadline, "login", app.login("a@example.test", PASSWORD)).await;
    assert!(response.headers().contains_key("retry-after"));
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let response = bounded(
        deadline,
        "register",
        app.post_json(
            "/register",
            &json!({"email": "a@example.test", "password": PASSWORD}),
        ),
    )
    .await;
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    let response = bounded(deadline, "readyz", app.get("/readyz")).await;
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    // The keys were never read: no empty key set is published for caches to keep.
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
    ] {
        let response = bounded(deadline, path, app.get(path)).await;
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
        problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    }
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    // The relay greets after 1 s, inside `mail.smtp.timeout_secs` (2 s in test_settings): a
    // two-factor login is really in flight while the server is asked to stop.
    let mut app = TestApp::spawn_with(Behaviour::Delay(Duration::from_secs(1)), |_| {}).await;
    app.register("slow@example.test", true).await;
    // The registration's verification email took one connection already.
    let before = app.mail.connections();
    let client = app.client.clone();
    let url = app.url("/login");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"email": "slow@example.test", "password": PASSWORD}))
            .send()
            .await
    });
    app.mail.wait_for_connections(before + 1).await;
    assert!(app.mail.messages().is_empty(), "the login is still waiting");
    let server = app.stop();
    let response = in_flight
        .await
        .unwrap()
        .expect("in-flight request completed");
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["otp_required"], true, "{body}");
    assert!(body["challenge_token"].is_string(), "{body}");
    tokio::time::timeout(crate::helpers::HTTP_TIMEOUT, server)
        .await
        .expect("the server stops")
        .unwrap()
        .expect("server stopped cleanly");
    assert!(app.client.get(app.url("/healthz")).send().await.is_err());
}

/// A TCP forwarder to PostgreSQL that can be cut and restored, to simulate a database outage.
struct Cuttable {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Cuttable {
    async fn start(target: String) -> Cuttable {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = std::sync::Arc::new(generation);
        let (flag, gen_tx) = (down.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if flag.load(Ordering::SeqCst) {
                    continue; // dropping the socket closes it at once
                }
                let target = target.clone();
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {},
                        _ = cut.changed() => {},
                    }
                });
            }
        });
        Cuttable {
            port,
            down,
            generation,
        }
    }

    fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn after_a_database_outage_authd_recovers_by_itself() {
    let (app, proxy) = spawn_behind_cuttable().await;
    app.register("back@example.test", false).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);

    proxy.cut();
    let response = app.login("back@example.test", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);

    proxy.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if app.get("/readyz").await.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "readyz never came back");
    assert_eq!(
        app.login("back@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn with_password_max_queue_0_logins_beyond_the_hashing_threads_get_503_at_once() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| {
        s.password.max_queue = 0;
        // Slow enough that the simultaneous logins below overlap on the hashing threads.
        s.password.bcrypt_cost = 10;
    })
    .await;
    app.register("queue@example.test", false).await;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let attempts = threads + 4;
    let responses =
        futures::future::join_all((0..attempts).map(|_| app.login("queue@example.test", PASSWORD)))
            .await;
    let (mut answered, mut refused) = (0, 0);
    for response in responses {
        match response.status() {
            StatusCode::OK => answered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // At most one login per thread was admitted while the others were hashing.
    assert!(answered >= 1, "{answered} answered, {refused} refused");
    assert!(
        refused >= attempts - threads,
        "{answered} answered, {refused} refused"
    );
    // Refusals are not failed logins: the account is not locked and the password still works.
    assert_eq!(
        app.login("queue@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// A forwarder in front of the server of `db_url`, and the URL that goes through it.
async fn cuttable_in_front_of(db_url: &str) -> (Cuttable, String) {
    let target = {
        let rest = db_url.split_once('@').map_or(db_url, |(_, r)| r);
        rest.split('/').next().unwrap().to_string()
    };
    let proxy = Cuttable::start(target.clone()).await;
    let proxied_url = db_url.replacen(&target, &format!("127.0.0.1:{}", proxy.port), 1);
    (proxy, proxied_url)
}

/// authd on PostgreSQL through a cuttable forwarder: (app, forwarder).
async fn spawn_behind_cuttable() -> (TestApp, Cuttable) {
    spawn_behind_cuttable_with(|_| {}).await
}

/// [`spawn_behind_cuttable`] with settings of the test's own.
async fn spawn_behind_cuttable_with(
    tweak: impl FnOnce(&mut authd::config::Settings),
) -> (TestApp, Cuttable) {
    let db_url = fresh_database().await;
    let (proxy, proxied_url) = cuttable_in_front_of(&db_url).await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&proxied_url, mail.port);
    settings.database.acquire_timeout_secs = 1;
    tweak(&mut settings);
    (TestApp::spawn_on(settings, mail, db_url).await, proxy)
}

/// A login with an address that is not one: refused without the database, yet audited.
async fn audited_without_the_database(app: &TestApp) {
    let response = app.login("not an address", "whatever it is").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn security_events_survive_a_database_outage_of_many_retries_and_are_written_once_it_ends() {
    // The writer waits at most 1 s between tries: an outage of five of those is many failed
    // writes, each waiting as long as the writer ever does, without a minute of test time.
    let (app, proxy) = spawn_behind_cuttable_with(|s| s.audit.retry_max_secs = 1).await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    // What the start recorded (its first key) is written before the cut.
    app.db.expect_events("key_created", 1).await;
    proxy.cut();
    for _ in 0..3 {
        audited_without_the_database(&app).await;
    }
    assert_eq!(app.db.audit_pending().await, Some(3));
    // The outage lasts until the writer has failed five times, the last ones each after the
    // longest wait it ever takes (1 s): many retries, counted, not a length of time guessed.
    let failures = async || {
        metric_value(&app, "authd_audit_write_failures_total")
            .await
            .unwrap()
    };
    let before = failures().await;
    assert!(
        wait_until(Duration::from_secs(30), async || failures().await
            >= before + 5)
        .await,
        "the writer did not keep trying"
    );
    // Still held, none written (the test reads the database directly, not through the cut).
    assert_eq!(app.db.audit_pending().await, Some(3));
    assert_eq!(app.db.count_events("login_failed").await, 0);
    proxy.restore();
    app.db.expect_events("login_failed", 3).await;
    assert_eq!(app.db.audit_pending().await, Some(0));
}

#[tokio::test]
async fn security_events_queued_during_an_outage_are_written_at_shutdown_once_it_ends() {
    let (mut app, proxy) = spawn_behind_cuttable().await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    proxy.cut();
    for _ in 0..3 {
        audited_without_the_database(&app).await;
    }
    let server = app.stop();
    // The database comes back while the server is stopping: the queue is still written.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops within the shutdown grace")
        .unwrap()
        .unwrap();
    app.db.expect_events("login_failed", 3).await;
}

#[tokio::test]
async fn a_server_told_its_kek_is_not_the_databases_only_once_the_database_answers_stays_not_ready()
{
    // A first instance records the database's KEK and hands out a refresh token.
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let first = TestApp::spawn_on(test_settings(&db_url, mail.port), mail, db_url.clone()).await;
    first.register("ada@example.test", false).await;
    let login: Value = first
        .login("ada@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let refresh_token = login["refresh_token"].as_str().unwrap().to_owned();
    // A second one, with another KEK, starts while its database is away...
    let (proxy, proxied_url) = cuttable_in_front_of(&db_url).await;
    proxy.cut();
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&proxied_url, mail.port);
    settings.database.acquire_timeout_secs = 1;
    settings.keys.encryption_key = Some("cd".repeat(32).into());
    settings.keys.refresh_secs = 1;
    let second = TestApp::spawn_on(settings, mail, db_url).await;
    // ...and reads the keys (more than once) once it answers.
    proxy.restore();
    let reads = async || {
        metric_value(&second, r#"authd_key_reloads_total{reason="periodic"}"#)
            .await
            .unwrap_or(0)
    };
    let before = reads().await;
    assert!(
        wait_until(Duration::from_secs(30), async || reads().await
            >= before + 2)
        .await,
        "the keys were never read again"
    );
    // Told its KEK is not the database's, it stays not ready and answers 503, never 401: the
    // refresh token it cannot check is not called unknown, and nothing is used up.
    assert_eq!(
        second.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    problem(
        second
            .post_json("/token/refresh", &json!({ "refresh_token": refresh_token }))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    problem(
        second.login("ada@example.test", PASSWORD).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
    let refreshed = first
        .post_json("/token/refresh", &json!({ "refresh_token": refresh_token }))
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
}
