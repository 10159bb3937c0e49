//! The browser harness (testkit::browser) tells the truth: against a tiny site served by a real
//! HTTP server on loopback, what it says the page did (requests, posts, problems, text) is what
//! the server and the page saw. Each test starts one headless Chromium; without Chromium they
//! fail and say how to install it (`apt-get install chromium`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use testkit::browser::{Browser, Page, VirtualAuthenticator};
use tokio::sync::watch;
use tokio::time::{Instant, timeout_at};

/// Long enough on a loaded machine for anything a page does here.
const PATIENCE: Duration = Duration::from_secs(10);

/// A form's fields as posted, in order: (name, value).
type Fields = Vec<(String, String)>;

/// What the test site's server saw: every request as (method, path), every form body posted.
#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<(String, String)>>>,
    posted: Arc<Mutex<Vec<Fields>>>,
    /// Told of every request, for a test waiting on one.
    arrived: Arc<watch::Sender<()>>,
}

impl Seen {
    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }
    fn posted(&self) -> Vec<Fields> {
        self.posted.lock().unwrap().clone()
    }
}

/// A form that posts what is typed, with a hidden field the page's own script sets to whether
/// the button's click event came from a person (`isTrusted`): `element.click()` from a script
/// posts `false`.
const FORM_PAGE: &str = r#"<!doctype html>
<html><head><title>Form</title><link rel="stylesheet" href="/style.css"></head>
<body>
<h1>Say something</h1>
<form method="post" action="/submit">
  <input id="field" name="field" autocomplete="off">
  <input id="trusted" name="trusted" type="hidden" value="unset">
  <button id="send" type="submit">Send</button>
</form>
<script>
  document.getElementById("send").addEventListener("click", (event) => {
    document.getElementById("trusted").value = String(event.isTrusted);
  });
</script>
</body></html>"#;

/// A page whose CSP forbids the inline script it carries: the script must not run, and the
/// browser reports the violation.
const CSP_PAGE: &str = r#"<!doctype html>
<html><head><title>Strict</title></head>
<body><p id="state">script did not run</p>
<script>document.getElementById("state").textContent = "script ran";</script>
</body></html>"#;

/// A page that adds its text only a moment after it loaded.
const LATE_PAGE: &str = r#"<!doctype html>
<html><head><title>Late</title></head>
<body><p>Waiting</p>
<script>
  setTimeout(() => document.body.insertAdjacentHTML("beforeend", "<p>Here at last</p>"), 300);
</script>
</body></html>"#;

/// A page that registers a passkey (`navigator.credentials.create`, a random challenge, a
/// resident key and user verification required) and signs in with it as a discoverable
/// credential (`navigator.credentials.get` with no `allowCredentials`), each on a button, and
/// writes what happened into `#result`.
const PASSKEY_PAGE: &str = r#"<!doctype html>
<html><head><title>Passkey</title></head>
<body>
<button id="register">Register</button>
<button id="signin">Sign in</button>
<p id="result">nothing yet</p>
<script>
  const result = document.getElementById("result");
  const random = (n) => crypto.getRandomValues(new Uint8Array(n));
  const hex = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, "0")).join("");
  let userId = random(16);
  document.getElementById("register").addEventListener("click", async () => {
    try {
      const credential = await navigator.credentials.create({ publicKey: {
        rp: { name: "test" },
        user: { id: userId, name: "ada@example.com", displayName: "Ada" },
        challenge: random(32),
        pubKeyCredParams: [{ type: "public-key", alg: -7 }],
        authenticatorSelection: { residentKey: "required", userVerification: "required" },
        extensions: { credProps: true },
      } });
      const client = JSON.parse(new TextDecoder().decode(credential.response.clientDataJSON));
      const rk = credential.getClientExtensionResults().credProps?.rk;
      result.textContent = `registered ${client.type} ${client.origin} rk=${rk}`;
    } catch (error) {
      result.textContent = `failed ${error.name}: ${error.message}`;
    }
  });
  document.getElementById("signin").addEventListener("click", async () => {
    try {
      const assertion = await navigator.credentials.get({ publicKey: {
        challenge: random(32),
        userVerification: "required",
      } });
      const client = JSON.parse(new TextDecoder().decode(assertion.response.clientDataJSON));
      const same = hex(assertion.response.userHandle) === hex(userId);
      result.textContent = `signed in ${client.type} as the registered user: ${same}`;
    } catch (error) {
      result.textContent = `failed ${error.name}: ${error.message}`;
    }
  });
</script>
</body></html>"#;

async fn submit(State(seen): State<Seen>, Form(fields): Form<Fields>) -> Html<String> {
    let field = fields
        .iter()
        .find_map(|(name, value)| (name == "field").then(|| value.replace('<', "&lt;")))
        .unwrap_or_default();
    seen.posted.lock().unwrap().push(fields);
    Html(format!(
        "<!doctype html><title>Done</title><p>Received: {field}</p>"
    ))
}

async fn record(State(seen): State<Seen>, request: Request, next: Next) -> Response {
    seen.requests.lock().unwrap().push((
        request.method().to_string(),
        request.uri().path().to_owned(),
    ));
    seen.arrived.send_replace(());
    next.run(request).await
}

/// Serves the test site on 127.0.0.1:0; its base URL and what it sees.
async fn serve_site() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/form", get(|| async { Html(FORM_PAGE) }))
        .route("/submit", axum::routing::post(submit))
        .route(
            "/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], "h1 { color: navy; }") }),
        )
        .route(
            "/csp",
            get(|| async {
                (
                    [(
                        header::CONTENT_SECURITY_POLICY,
                        "default-src 'none'; script-src 'none'",
                    )],
                    Html(CSP_PAGE),
                )
                    .into_response()
            }),
        )
        .route("/late", get(|| async { Html(LATE_PAGE) }))
        .route("/passkey", get(|| async { Html(PASSKEY_PAGE) }))
        .layer(middleware::from_fn_with_state(seen.clone(), record))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

async fn launch() -> Browser {
    Browser::launch()
        .await
        .unwrap_or_else(|error| panic!("{error:#}"))
}

/// The page's problems once `predicate` holds for them, or as they are after PATIENCE: every
/// read follows a round trip to the page, so events sent before it have been seen.
async fn problems_once(page: &Page, predicate: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        page.eval("0").await.unwrap();
        let problems = page.problems();
        if predicate(&problems) || Instant::now() >= deadline {
            return problems;
        }
    }
}

/// Waits until the site's server has been asked for `path`, at most PATIENCE.
async fn server_sees(seen: &Seen, path: &str) {
    let deadline = Instant::now() + PATIENCE;
    let mut arrived = seen.arrived.subscribe();
    while !seen.requests().iter().any(|(_, p)| p == path) {
        if timeout_at(deadline, arrived.changed()).await.is_err() {
            panic!("the server never saw {path}");
        }
    }
}

#[tokio::test]
async fn opening_a_page_with_a_form_only_gets_it_and_posts_nothing() {
    let (base, seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/form")).await.unwrap();

    assert!(page.text().await.unwrap().contains("Say something"));
    assert_eq!(page.url().await.unwrap(), format!("{base}/form"));
    // Chromium asks for /favicon.ico on its own, after the load: once the server has answered
    // it (a 404), the harness must still list only what the page asked for, and no problem.
    server_sees(&seen, "/favicon.ico").await;
    page.eval("0").await.unwrap();
    assert_eq!(
        page.requests(),
        vec![
            ("GET".to_owned(), format!("{base}/form")),
            ("GET".to_owned(), format!("{base}/style.css")),
        ]
    );
    assert_eq!(page.problems(), Vec::<String>::new());
    assert!(seen.posted().is_empty());
    assert!(
        seen.requests().iter().all(|(method, _)| method == "GET"),
        "{:?}",
        seen.requests()
    );
}

#[tokio::test]
async fn a_click_on_the_forms_button_posts_what_was_typed_as_a_person_would() {
    let (base, seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/form")).await.unwrap();

    page.type_into("#field", "hello wörld").await.unwrap();
    page.click_and_wait_for_navigation("#send").await.unwrap();

    assert_eq!(
        seen.posted(),
        vec![vec![
            ("field".to_owned(), "hello wörld".to_owned()),
            ("trusted".to_owned(), "true".to_owned()),
        ]],
        "one post, with the typed text and a click the page saw as a person's"
    );
    assert_eq!(page.url().await.unwrap(), format!("{base}/submit"));
    assert!(
        page.text().await.unwrap().contains("Received: hello wörld"),
        "the new document is the one the harness reads"
    );
    assert!(
        page.requests()
            .contains(&("POST".to_owned(), format!("{base}/submit"))),
        "{:?}",
        page.requests()
    );
}

#[tokio::test]
async fn requests_lists_the_stylesheet_the_page_loaded() {
    let (base, seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/form")).await.unwrap();

    assert!(
        page.requests()
            .contains(&("GET".to_owned(), format!("{base}/style.css"))),
        "{:?}",
        page.requests()
    );
    assert!(
        seen.requests()
            .contains(&("GET".to_owned(), "/style.css".to_owned()))
    );
}

#[tokio::test]
async fn problems_report_an_inline_script_the_pages_csp_forbids() {
    let (base, _seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/csp")).await.unwrap();

    let problems = problems_once(&page, |p| {
        p.iter().any(|p| p.contains("Content Security Policy"))
    })
    .await;
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Content Security Policy") && p.contains("script-src 'none'")),
        "{problems:?}"
    );
    assert_eq!(page.text().await.unwrap(), "script did not run");
}

#[tokio::test]
async fn wait_for_text_waits_for_text_the_page_adds_after_it_loaded() {
    let (base, _seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/late")).await.unwrap();

    page.wait_for_text("Here at last", PATIENCE).await.unwrap();
}

#[tokio::test]
async fn wait_for_text_gives_up_with_an_error_showing_the_text_it_saw() {
    let (base, _seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/form")).await.unwrap();

    let error = page
        .wait_for_text("Never on this page", Duration::from_millis(300))
        .await
        .expect_err("the text is not there");
    let message = format!("{error:#}");
    assert!(message.contains("\"Never on this page\""), "{message}");
    assert!(message.contains("Say something"), "{message}");
}

#[tokio::test]
async fn a_dropped_browser_leaves_no_process_and_no_file_behind() {
    let (base, _seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/form")).await.unwrap();
    let pid = browser.pid();
    let dir = browser.temp_dir().to_owned();
    assert!(
        dir.join("profile").join("Default").is_dir(),
        "Chromium's profile is in it"
    );

    drop(page);
    drop(browser);

    // Drop reaps the main process, so its /proc entry is gone, not a zombie's.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!dir.exists());
}

#[tokio::test]
async fn a_page_on_localhost_registers_a_passkey_and_signs_in_with_it_on_a_virtual_authenticator() {
    let (base, _seen) = serve_site().await;
    let port = base.rsplit(':').next().unwrap();
    let origin = format!("http://localhost:{port}");
    let browser = launch().await;
    let page = browser.open(&format!("{origin}/passkey")).await.unwrap();
    let authenticator = page
        .add_virtual_authenticator(VirtualAuthenticator::PASSKEY)
        .await
        .unwrap();

    page.click("#register").await.unwrap();
    page.wait_for_text(
        &format!("registered webauthn.create {origin} rk=true"),
        PATIENCE,
    )
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
    let credentials = page.virtual_credentials(&authenticator).await.unwrap();
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    assert_eq!(credentials[0]["isResidentCredential"], true);
    assert_eq!(credentials[0]["rpId"], "localhost");

    page.click("#signin").await.unwrap();
    page.wait_for_text(
        "signed in webauthn.get as the registered user: true",
        PATIENCE,
    )
    .await
    .unwrap_or_else(|error| panic!("{error:#}"));
    let credentials = page.virtual_credentials(&authenticator).await.unwrap();
    assert!(
        credentials[0]["signCount"].as_u64().unwrap() >= 1,
        "{credentials:?}"
    );
    assert_eq!(page.problems(), Vec::<String>::new());
}

#[tokio::test]
async fn a_page_on_127_0_0_1_cannot_register_a_passkey_because_an_ip_address_is_no_rp_id() {
    let (base, _seen) = serve_site().await;
    let browser = launch().await;
    let page = browser.open(&format!("{base}/passkey")).await.unwrap();
    let authenticator = page
        .add_virtual_authenticator(VirtualAuthenticator::PASSKEY)
        .await
        .unwrap();

    page.click("#register").await.unwrap();
    page.wait_for_text("failed SecurityError", PATIENCE)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    assert!(
        page.virtual_credentials(&authenticator)
            .await
            .unwrap()
            .is_empty()
    );
}
