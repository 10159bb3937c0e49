//! The bench accounts: their password, their registration and their logins.

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::http::Http;

/// The password of every bench account: strong enough for any password policy, under 72 bytes.
pub const PASSWORD: &str = "Tangerine-Quasar-81-Lattice-vow";

pub async fn register(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    two_factor: bool,
) -> Result<()> {
    let response = client
        .post(format!("{base}/register"))
        .json(&json!({"email": email, "password": PASSWORD, "two_factor_enabled": two_factor}))
        .send()
        .await
        .context("POST /register")?;
    let status = response.status();
    ensure!(
        status == reqwest::StatusCode::CREATED,
        "POST /register {email} answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    Ok(())
}

/// Logs in and returns one string field of the answer (`access_token`, `refresh_token`).
pub async fn token_field(
    client: &reqwest::Client,
    login: &reqwest::Url,
    body: &Value,
    field: &str,
) -> Option<String> {
    let response = client.post(login.clone()).json(body).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let answer: Value = response.json().await.ok()?;
    answer[field].as_str().map(str::to_owned)
}

/// Logs in the /users/me account; returns its access token and its `/users/me` body.
pub async fn login_for_token(http: &Http, base: &str, email: &str) -> Result<(String, Vec<u8>)> {
    let response = http
        .client
        .post(format!("{base}/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await
        .context("POST /login")?;
    ensure!(
        response.status().is_success(),
        "POST /login answered {}",
        response.status()
    );
    let body: Value = response.json().await?;
    let token = body["access_token"]
        .as_str()
        .context("no access_token in the login answer")?
        .to_owned();
    let me = http.get_me(base, &token).await?;
    Ok((token, me))
}
