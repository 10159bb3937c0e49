//! authd's own pages for the emailed links, in headless Chromium (Debian's `chromium`, over
//! the DevTools protocol): opening a link changes nothing; a person's click on the page's button
//! does the change; the pages load nothing from anywhere and break no rule of their policy.
//! (The page routes call the same use cases as the API, tested on both backends; the browser
//! runs once, in the PostgreSQL pass.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::browser::{Browser, Page};

use crate::helpers::{PASSWORD, TestApp};
use crate::smtp_sink::Behaviour;

const PATIENCE: Duration = Duration::from_secs(10);
const NEW_PASSWORD: &str = "a brand new passphrase";

async fn spawn() -> TestApp {
    TestApp::spawn_with(Behaviour::Accept, |s| {
        s.rate_limit.requests_per_ip_per_minute = 100_000;
        s.verification.resend_interval_secs = 0;
    })
    .await
}

/// Every request the page made went to authd itself, and the page broke no rule of its policy
/// and threw nothing. (The browser also reports each page answered with an error status, a
/// refused link or password, as a "problem": those are the pages' own answers, not breakage.)
fn only_to(app: &TestApp, page: &Page) {
    let requests = page.requests();
    assert!(!requests.is_empty());
    for (_, url) in &requests {
        assert!(url.starts_with(&app.base), "a request elsewhere: {url}");
    }
    let status_of_a_page = |problem: &String| {
        problem.starts_with(
            "network: Failed to load resource: the server responded with a status of 4",
        ) && (problem.ends_with("/verify-email)") || problem.ends_with("/reset-password)"))
    };
    let problems: Vec<String> = page
        .problems()
        .into_iter()
        .filter(|p| !status_of_a_page(p))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
}

async fn verified(app: &TestApp, email: &str) -> bool {
    let response = app.login(email, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap();
    let me: Value = app
        .get_with_token("/users/me", access)
        .await
        .json()
        .await
        .unwrap();
    me["email_verified"].as_bool().unwrap()
}

#[tokio::test]
async fn the_verification_link_verifies_only_when_the_person_presses_the_button() {
    let app = spawn().await;
    app.post_json(
        "/register",
        &json!({"email": "page@example.test", "password": PASSWORD}),
    )
    .await;
    let link = app
        .mail
        .wait_for("page@example.test", 1)
        .await
        .link()
        .expect("the email has a link");
    assert!(link.starts_with(&format!("{}/verify-email?token=", app.base)));
    let browser = Browser::launch().await.unwrap();
    let page = browser.open(&link).await.unwrap();
    page.wait_for_text("Verify my email address", PATIENCE)
        .await
        .unwrap();
    // Opening it (as a mail scanner would) changed nothing.
    assert!(!verified(&app, "page@example.test").await);
    // A plain GET of the link, twice, changes nothing either.
    for _ in 0..2 {
        assert_eq!(
            app.client.get(&link).send().await.unwrap().status(),
            StatusCode::OK
        );
    }
    assert!(!verified(&app, "page@example.test").await);
    page.click_and_wait_for_navigation("#submit").await.unwrap();
    page.wait_for_text("page@example.test is verified", PATIENCE)
        .await
        .unwrap();
    assert!(verified(&app, "page@example.test").await);
    only_to(&app, &page);
    let posts: Vec<_> = page
        .requests()
        .into_iter()
        .filter(|(method, _)| method == "POST")
        .collect();
    assert_eq!(posts.len(), 1, "{posts:?}");
    // The link is used: opening and pressing again says so and changes nothing.
    let again = browser.open(&link).await.unwrap();
    again
        .click_and_wait_for_navigation("#submit")
        .await
        .unwrap();
    again.wait_for_text("already used", PATIENCE).await.unwrap();
    only_to(&app, &again);
}

#[tokio::test]
async fn the_reset_link_sets_the_password_typed_twice_into_its_form() {
    let app = spawn().await;
    app.register("forgetful@example.test", false).await;
    app.post_json(
        "/password/forgot",
        &json!({"email": "forgetful@example.test"}),
    )
    .await;
    let link = app
        .mail
        .wait_for("forgetful@example.test", 1)
        .await
        .link()
        .expect("the email has a link");
    assert!(link.starts_with(&format!("{}/reset-password?token=", app.base)));
    let browser = Browser::launch().await.unwrap();
    let page = browser.open(&link).await.unwrap();
    page.wait_for_text("Choose a new password", PATIENCE)
        .await
        .unwrap();
    // Two different passwords: the form comes back saying so, nothing changed.
    page.type_into("#new_password", NEW_PASSWORD).await.unwrap();
    page.type_into("#confirm_password", "something else entirely")
        .await
        .unwrap();
    page.click_and_wait_for_navigation("#submit").await.unwrap();
    page.wait_for_text("The two passwords differ", PATIENCE)
        .await
        .unwrap();
    // A common password: refused with the policy's reason, the link still works.
    page.type_into("#new_password", "password123")
        .await
        .unwrap();
    page.type_into("#confirm_password", "password123")
        .await
        .unwrap();
    page.click_and_wait_for_navigation("#submit").await.unwrap();
    page.wait_for_text("The password", PATIENCE).await.unwrap();
    assert_eq!(
        app.login("forgetful@example.test", PASSWORD).await.status(),
        StatusCode::OK
    );
    page.type_into("#new_password", NEW_PASSWORD).await.unwrap();
    page.type_into("#confirm_password", NEW_PASSWORD)
        .await
        .unwrap();
    page.click_and_wait_for_navigation("#submit").await.unwrap();
    page.wait_for_text("Your password is changed", PATIENCE)
        .await
        .unwrap();
    assert_eq!(
        app.login("forgetful@example.test", NEW_PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("forgetful@example.test", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    only_to(&app, &page);
}

#[tokio::test]
async fn the_pages_carry_a_strict_policy_and_a_link_without_its_token_says_so() {
    let app = spawn().await;
    for path in ["/verify-email?token=abc", "/reset-password?token=abc"] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; style-src 'sha256-"),
            "{csp}"
        );
        assert!(csp.contains("form-action 'self'"), "{csp}");
        assert!(!csp.contains("script-src"), "{csp}");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["cache-control"], "no-store");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html"),
        );
        let body = response.text().await.unwrap();
        assert!(!body.contains("<script"), "{body}");
        assert!(
            !body.contains("http"),
            "no absolute URL in the page: {body}"
        );
    }
    let response = app.get("/verify-email").await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(response.text().await.unwrap().contains("incomplete"));
    // A token made up by hand, posted as the form would: refused, on a page.
    let response = app
        .client
        .post(app.url("/verify-email"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("token=made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    // Markup in the token is text, never markup.
    let browser = Browser::launch().await.unwrap();
    let page = browser
        .open(&app.url("/verify-email?token=%22%3E%3Cb%20id%3Dx%3Ebold%3C%2Fb%3E"))
        .await
        .unwrap();
    assert_eq!(
        page.eval("document.getElementById('x') === null")
            .await
            .unwrap(),
        Value::Bool(true)
    );
    only_to(&app, &page);
}
