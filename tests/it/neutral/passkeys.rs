//! Passkeys between headless Chromium and authd's relying party (`authd::auth::passkeys`): a
//! page on `http://localhost` asks a tiny server for options, hands them to
//! `navigator.credentials` (a virtual authenticator answers) and posts the browser's JSON back,
//! which the relying party verifies. What the page test of issue 24 will stand on: the options'
//! JSON is what `PublicKeyCredential.parse*OptionsFromJSON` takes, and the credential's
//! `toJSON()` is what the relying party reads.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use testkit::browser::{Browser, VirtualAuthenticator};
use uuid::Uuid;
use webauthn_rs::prelude::{Passkey, PublicKeyCredential, RegisterPublicKeyCredential};

use authd::auth::RelyingParty;

/// Long enough on a loaded machine for anything the page does here.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Registers a passkey and signs in with it, each on a button, through the server's options;
/// writes what the server answered (or what failed) into `#result`.
const PAGE: &str = r#"<!doctype html>
<html><head><title>Passkeys</title></head>
<body>
<button id="register">Register</button>
<button id="signin">Sign in</button>
<p id="result">nothing yet</p>
<script>
  const result = document.getElementById("result");
  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body ?? {}),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${path} answered ${response.status}: ${text}`);
    return JSON.parse(text);
  }
  async function register() {
    const options = await post("/register/options");
    const credential = await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey),
    });
    const answer = await post("/register", credential.toJSON());
    return `registered for ${answer.user}`;
  }
  async function signIn() {
    const options = await post("/login/options");
    const credential = await navigator.credentials.get({
      publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey),
    });
    const answer = await post("/login", credential.toJSON());
    return `signed in as ${answer.user} with counter ${answer.counter}`;
  }
  for (const [id, run] of [["register", register], ["signin", signIn]]) {
    document.getElementById(id).addEventListener("click", async () => {
      try {
        result.textContent = await run();
      } catch (error) {
        result.textContent = `failed ${error.name}: ${error.message}`;
      }
    });
  }
</script>
</body></html>"#;

/// The relying party's side: one user, the state of the ceremony under way, the passkey.
struct Site {
    rp: RelyingParty,
    user: Uuid,
    ceremony: Mutex<Option<Vec<u8>>>,
    passkey: Mutex<Option<Passkey>>,
}

type Answer = Result<Json<Value>, (StatusCode, String)>;

fn refused(error: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, error.to_string())
}

/// The ceremony's state, used once.
fn take_ceremony(site: &Site) -> Result<Vec<u8>, (StatusCode, String)> {
    site.ceremony
        .lock()
        .unwrap()
        .take()
        .ok_or_else(|| refused("no ceremony under way"))
}

async fn register_options(State(site): State<Arc<Site>>) -> Answer {
    let started = site
        .rp
        .start_registration(site.user, "ada@example.com", Vec::new())
        .map_err(refused)?;
    *site.ceremony.lock().unwrap() = Some(started.state);
    Ok(Json(started.options))
}

async fn register(
    State(site): State<Arc<Site>>,
    Json(credential): Json<RegisterPublicKeyCredential>,
) -> Answer {
    let state = take_ceremony(&site)?;
    let passkey = site
        .rp
        .finish_registration(&credential, &state)
        .map_err(refused)?;
    *site.passkey.lock().unwrap() = Some(passkey);
    Ok(Json(json!({ "user": site.user })))
}

async fn login_options(State(site): State<Arc<Site>>) -> Answer {
    let started = site.rp.start_discoverable_login().map_err(refused)?;
    *site.ceremony.lock().unwrap() = Some(started.state);
    Ok(Json(started.options))
}

async fn login(
    State(site): State<Arc<Site>>,
    Json(credential): Json<PublicKeyCredential>,
) -> Answer {
    let state = take_ceremony(&site)?;
    let (user, credential_id) = site.rp.identify(&credential).map_err(refused)?;
    let mut stored = site.passkey.lock().unwrap().clone();
    let passkey = stored
        .as_mut()
        .filter(|passkey| user == site.user && *passkey.cred_id() == credential_id)
        .ok_or_else(|| refused("no such passkey"))?;
    let result = site
        .rp
        .finish_discoverable_login(&credential, &state, passkey)
        .map_err(refused)?;
    if !result.user_verified() {
        return Err(refused("the user was not verified"));
    }
    passkey.update_credential(&result);
    Ok(Json(json!({ "user": user, "counter": result.counter() })))
}

/// Serves the page and the ceremonies on 127.0.0.1:0, for `http://localhost:PORT`; that URL.
async fn serve_site() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let site = Arc::new(Site {
        rp: RelyingParty::for_origin(&origin).unwrap(),
        user: Uuid::new_v4(),
        ceremony: Mutex::new(None),
        passkey: Mutex::new(None),
    });
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/register/options", post(register_options))
        .route("/register", post(register))
        .route("/login/options", post(login_options))
        .route("/login", post(login))
        .with_state(site);
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

#[tokio::test]
async fn chromium_registers_a_passkey_and_signs_in_with_it_through_the_relying_party() {
    let origin = serve_site().await;
    let browser = Browser::launch()
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    let page = browser.open(&format!("{origin}/")).await.unwrap();
    let authenticator = page
        .add_virtual_authenticator(VirtualAuthenticator::PASSKEY)
        .await
        .unwrap();

    page.click("#register").await.unwrap();
    page.wait_for_text("registered for", PATIENCE)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    let credentials = page.virtual_credentials(&authenticator).await.unwrap();
    assert_eq!(credentials.len(), 1, "{credentials:?}");
    assert_eq!(
        credentials[0]["isResidentCredential"], true,
        "the options asked for a discoverable credential"
    );

    page.click("#signin").await.unwrap();
    page.wait_for_text("signed in as", PATIENCE)
        .await
        .unwrap_or_else(|error| panic!("{error:#}"));
    // The relying party read the counter the authenticator signed (Chromium's virtual
    // authenticator counts the registration too).
    let credentials = page.virtual_credentials(&authenticator).await.unwrap();
    let count = credentials[0]["signCount"].as_u64().unwrap();
    let text = page.text().await.unwrap();
    assert!(text.contains(&format!("with counter {count}")), "{text}");
    assert_eq!(page.problems(), Vec::<String>::new());
}
