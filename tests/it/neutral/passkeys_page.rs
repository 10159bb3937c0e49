//! authd's passkeys page (`GET /ui/passkeys`) in headless Chromium with a virtual authenticator,
//! against authd's real passkey routes: a person signs in with the password, adds a passkey,
//! signs out, signs in with the passkey alone, and removes it; a two-factor account's second
//! step takes the passkey instead of the code. The page keeps its tokens in memory only, loads
//! nothing from anywhere, and runs nothing but its own script.
//!
//! WebAuthn refuses an IP address as the relying party, so the page is opened at
//! `http://localhost:PORT` (authd listens on 127.0.0.1; its relying party is `localhost` for a
//! loopback `http.public_url`).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use testkit::browser::{Browser, Page, VirtualAuthenticator};

use crate::helpers::{PASSWORD, TestApp};
use crate::smtp_sink::{Behaviour, extract_code};

/// Long enough on a loaded machine for anything the page does here.
const PATIENCE: Duration = Duration::from_secs(10);

async fn spawn() -> TestApp {
    TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
    })
    .await
}

/// The page's URL on `localhost` (a domain WebAuthn accepts), at authd's port.
fn page_url(app: &TestApp) -> String {
    let port = app.base.rsplit(':').next().unwrap();
    format!("http://localhost:{port}/ui/passkeys")
}

/// Opens the page in a new browser with a passkey authenticator; returns the browser (the page
/// lives as long as it), the page and the authenticator's id.
async fn open(app: &TestApp) -> (Browser, Page, String) {
    let browser = Browser::launch()
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    let page = browser.open(&page_url(app)).await.unwrap();
    let authenticator = page
        .add_virtual_authenticator(VirtualAuthenticator::PASSKEY)
        .await
        .unwrap();
    (browser, page, authenticator)
}

async fn wait_for(page: &Page, text: &str) {
    page.wait_for_text(text, PATIENCE)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
}

/// The names in the page's list of passkeys, in its order.
async fn listed(page: &Page) -> Vec<String> {
    let names = page
        .eval("[...document.querySelectorAll('#passkey-list li.passkey strong')].map(e => e.textContent)")
        .await
        .unwrap();
    serde_json::from_value(names).unwrap()
}

/// The user's passkeys as authd stores them (through the API, with a token of the test's own).
async fn stored(app: &TestApp, access: &str) -> Vec<Value> {
    let response = app.get_with_token("/passkeys", access).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["passkeys"].as_array().unwrap().clone()
}

/// Nothing the page keeps outlives the tab: no web storage, no cookie.
async fn assert_nothing_stored(page: &Page) {
    let kept = page
        .eval("localStorage.length + sessionStorage.length + document.cookie.length")
        .await
        .unwrap();
    assert_eq!(kept, 0, "the page stored something");
}

/// Every request went to authd at the page's origin, and the page reported nothing wrong (no
/// console error, no exception, no policy violation, no failed request) but the refusals in
/// `refused`, (status, path) in order: the browser reports every error status, and those are
/// answers the page expects and shows, not breakage.
fn assert_clean(app: &TestApp, page: &Page, refused: &[(&str, &str)]) {
    let origin = page_url(app).replace("/ui/passkeys", "");
    let requests = page.requests();
    assert!(!requests.is_empty());
    for (_, url) in &requests {
        assert!(
            url.starts_with(&format!("{origin}/")),
            "a request elsewhere: {url}"
        );
    }
    let expected: Vec<String> = refused
        .iter()
        .map(|(status, path)| {
            format!(
                "network: Failed to load resource: the server responded with a status of \
                 {status} ({origin}{path})"
            )
        })
        .collect();
    assert_eq!(page.problems(), expected);
}

async fn sign_in_with_the_password(page: &Page, email: &str) {
    let kept = page
        .eval("document.getElementById('email').value")
        .await
        .unwrap();
    if kept != "" {
        assert_eq!(kept, email);
    } else {
        page.type_into("#email", email).await.unwrap();
    }
    page.type_into("#password", PASSWORD).await.unwrap();
    page.click("#login").await.unwrap();
}

async fn add_passkey(page: &Page, name: &str) {
    page.type_into("#passkey-name", name).await.unwrap();
    page.click("#register-passkey").await.unwrap();
    wait_for(page, &format!("Added {name}.")).await;
}

#[tokio::test]
async fn a_person_adds_a_passkey_on_the_page_signs_in_with_it_alone_and_removes_it() {
    let app = spawn().await;
    app.register("ada@example.test", false).await;
    let (_browser, page, authenticator) = open(&app).await;

    sign_in_with_the_password(&page, "ada@example.test").await;
    wait_for(&page, "Signed in as ada@example.test.").await;
    wait_for(&page, "No passkeys yet.").await;

    add_passkey(&page, "Test laptop").await;
    assert_eq!(listed(&page).await, ["Test laptop"]);
    let credentials = page.virtual_credentials(&authenticator).await.unwrap();
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    assert_eq!(credentials[0]["isResidentCredential"], true);
    let access = app.access_token("ada@example.test").await;
    let passkeys = stored(&app, &access).await;
    assert_eq!(passkeys.len(), 1, "{passkeys:?}");
    assert_eq!(passkeys[0]["name"], "Test laptop");

    page.click("#sign-out").await.unwrap();
    wait_for(&page, "Signed out.").await;
    let text = page.text().await.unwrap();
    assert!(!text.contains("Signed in as"), "{text}");
    assert!(!text.contains("Test laptop"), "{text}");
    // The page ended its session at authd, not just forgot it: the test's own is the one left.
    let sessions: Value = app
        .get_with_token("/sessions", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        sessions["sessions"].as_array().unwrap().len(),
        1,
        "{sessions}"
    );

    // No email, no password: the authenticator offers the passkey it holds for localhost.
    page.click("#passkey-signin").await.unwrap();
    wait_for(&page, "Signed in with a passkey.").await;
    wait_for(&page, "Signed in as ada@example.test.").await;
    assert_eq!(listed(&page).await, ["Test laptop"]);
    let passkeys = stored(&app, &access).await;
    assert!(passkeys[0]["last_used_at"].is_string(), "{passkeys:?}");

    // Removing the passkey this session signed in with ends the session: the page says so.
    page.click("#passkey-list li.passkey button.remove")
        .await
        .unwrap();
    wait_for(&page, "Removed Test laptop. You had signed in with it").await;
    assert_eq!(stored(&app, &access).await, Vec::<Value>::new());
    let text = page.text().await.unwrap();
    assert!(!text.contains("Signed in as"), "{text}");

    sign_in_with_the_password(&page, "ada@example.test").await;
    wait_for(&page, "Signed in with your password.").await;
    wait_for(&page, "No passkeys yet.").await;
    assert_eq!(listed(&page).await, Vec::<String>::new());

    assert_nothing_stored(&page).await;
    // The one refusal: the list asked for with the ended session's token, which told the page.
    assert_clean(&app, &page, &[("401 (Unauthorized)", "/passkeys")]);
}

#[tokio::test]
async fn the_pages_second_step_takes_a_passkey_instead_of_the_emailed_code() {
    let app = spawn().await;
    let email = "grace@example.test";
    app.register(email, true).await;
    let (_browser, page, _) = open(&app).await;

    // The first time, with the emailed code, to add the passkey.
    sign_in_with_the_password(&page, email).await;
    wait_for(&page, "Enter the code we emailed you").await;
    let code = extract_code(&app.mail.wait_for(email, 1).await);
    page.type_into("#otp", &code).await.unwrap();
    page.click("#otp-submit").await.unwrap();
    wait_for(&page, "Signed in with your code.").await;
    // A name is text, whatever it looks like: the page never parses what authd sends as HTML.
    add_passkey(&page, "Phone <b>2</b>").await;
    page.click("#sign-out").await.unwrap();
    wait_for(&page, "Signed out.").await;

    // Now the second step offers the passkey, and takes it.
    sign_in_with_the_password(&page, email).await;
    wait_for(&page, "Enter the code we emailed you, or use a passkey.").await;
    page.click("#second-step-passkey").await.unwrap();
    wait_for(&page, "Signed in with a passkey.").await;
    wait_for(&page, &format!("Signed in as {email}.")).await;
    assert_eq!(listed(&page).await, ["Phone <b>2</b>"]);

    assert_nothing_stored(&page).await;
    assert_clean(&app, &page, &[]);
}

#[tokio::test]
async fn the_page_signs_the_person_out_when_adding_a_passkey_needs_a_recent_login() {
    let app = spawn().await;
    app.register("old@example.test", false).await;
    let (_browser, page, authenticator) = open(&app).await;
    sign_in_with_the_password(&page, "old@example.test").await;
    wait_for(&page, "Signed in as old@example.test.").await;
    // The page's login, an hour ago: older than `session.fresh_login_secs`.
    app.db
        .exec(
            "UPDATE sessions SET created_at = created_at - interval '1 hour'",
            "UPDATE sessions SET created_at = created_at - 3600000000",
        )
        .await;
    page.type_into("#passkey-name", "Too late").await.unwrap();
    page.click("#register-passkey").await.unwrap();
    // authd's own words, and the way back: the sign-in form.
    wait_for(&page, "this needs a recent login: log in again, then retry").await;
    let text = page.text().await.unwrap();
    assert!(!text.contains("Signed in as"), "{text}");
    assert!(text.contains("Password"), "{text}");
    assert!(
        page.virtual_credentials(&authenticator)
            .await
            .unwrap()
            .is_empty()
    );
    assert_clean(
        &app,
        &page,
        &[("403 (Forbidden)", "/passkeys/register/options")],
    );
}

#[tokio::test]
async fn the_passkeys_page_runs_only_its_own_script_and_calls_only_authd() {
    let app = spawn().await;
    let response = app.get("/ui/passkeys").await;
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    let csp = headers["content-security-policy"].to_str().unwrap();
    let directives: Vec<&str> = csp.split("; ").collect();
    assert_eq!(directives[0], "default-src 'none'", "{csp}");
    for directive in [
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(directives.contains(&directive), "{directive}: {csp}");
    }
    // One script, named by its hash: nothing inline but it, nothing from anywhere.
    let scripts: Vec<&str> = directives
        .iter()
        .filter_map(|d| d.strip_prefix("script-src "))
        .collect();
    assert_eq!(scripts.len(), 1, "{csp}");
    assert!(
        scripts[0].starts_with("'sha256-") && !scripts[0].contains(' '),
        "{csp}"
    );
    assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );

    let (_browser, page, _) = open(&app).await;
    wait_for(&page, "Sign in with a passkey").await;
    // The page's own script ran (it enables the buttons it drives) and broke no rule.
    let ready = page
        .eval("!document.getElementById('login').disabled && !document.getElementById('passkey-signin').disabled")
        .await
        .unwrap();
    assert_eq!(ready, true, "the page's script did not run");
    assert_clean(&app, &page, &[]);
    // Any other script is refused: one injected into the page does not run.
    let ran = page
        .eval(
            "(() => { const s = document.createElement('script'); \
             s.textContent = 'window.injected = true'; document.body.append(s); \
             return window.injected === true; })()",
        )
        .await
        .unwrap();
    assert_eq!(ran, false, "an injected script ran");
    let problems = page.problems();
    assert!(
        problems.len() == 1 && problems[0].contains("Content Security Policy"),
        "{problems:?}"
    );
}
