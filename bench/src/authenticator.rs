//! Authenticator apps for the second-factor phases: fresh logins, enrolment and confirmation
//! through authd's own routes, and the app's codes computed as an app computes them; and the
//! POST helpers of the phases' setups (the passkeys' too).

use anyhow::{Context, Result, ensure};
use authd::token::totp::{TOTP_STEP_SECS, TotpSecret};
use serde_json::{Value, json};

use crate::accounts::PASSWORD;

/// POST `path` with `body` (and a bearer token); the JSON answer, which must be a 200.
pub async fn post_ok(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: &Value,
) -> Result<Value> {
    post_expecting(client, url, bearer, body, reqwest::StatusCode::OK).await
}

/// POST `path` with `body` (and a bearer token); the JSON answer, which must have `expected`
/// status.
pub async fn post_expecting(
    client: &reqwest::Client,
    url: String,
    bearer: Option<&str>,
    body: &Value,
    expected: reqwest::StatusCode,
) -> Result<Value> {
    let mut request = client.post(&url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status();
    ensure!(
        status == expected,
        "POST {url} answered {status}: {}",
        response.text().await.unwrap_or_default()
    );
    response
        .json()
        .await
        .with_context(|| format!("POST {url}: the body"))
}

/// Logs in an account without a second step: a fresh login's access token.
pub async fn fresh_access_token(
    client: &reqwest::Client,
    base: &str,
    email: &str,
) -> Result<String> {
    let answer = post_ok(
        client,
        format!("{base}/login"),
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{email}: the login answered no access token: {answer}"))
}

/// Logs in an account with an app: the challenge token its code must come with.
pub async fn challenge_token(client: &reqwest::Client, base: &str, email: &str) -> Result<String> {
    let answer = post_ok(
        client,
        format!("{base}/login"),
        None,
        &json!({"email": email, "password": PASSWORD}),
    )
    .await?;
    ensure!(
        answer["second_factor"] == "totp",
        "{email}: the login does not ask for the app's code: {answer}"
    );
    answer["challenge_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("{email}: the login answered no challenge token"))
}

/// Turns an app on for an account without one, as a user does: a fresh login, enrolment, the
/// first code. Returns the app's secret.
pub async fn turn_on_app(client: &reqwest::Client, base: &str, email: &str) -> Result<TotpSecret> {
    let token = fresh_access_token(client, base, email).await?;
    let enrolment = post_ok(
        client,
        format!("{base}/mfa/totp/enroll"),
        Some(&token),
        &json!({}),
    )
    .await?;
    let secret = enrolment["secret"]
        .as_str()
        .and_then(secret_of_base32)
        .with_context(|| format!("{email}: the enrolment's secret is not base32"))?;
    let code = secret.code_at_step(unix_now() / TOTP_STEP_SECS);
    let confirmed = post_ok(
        client,
        format!("{base}/mfa/totp/confirm"),
        Some(&token),
        &json!({ "code": code }),
    )
    .await?;
    ensure!(
        confirmed["recovery_codes"].is_array(),
        "{email}: the confirmation answered no recovery codes"
    );
    Ok(secret)
}

/// A six-digit code the app does not show within two steps of now: wrong when authd checks
/// it (one step either side), whatever the clocks' drift within a step.
pub fn wrong_code(secret: &TotpSecret) -> String {
    loop {
        let code = format!("{:06}", rand::random::<u32>() % 1_000_000);
        let now = unix_now();
        let shown = [now - TOTP_STEP_SECS, now, now + TOTP_STEP_SECS]
            .iter()
            .any(|&t| secret.check(&code, t).is_some());
        if !shown {
            return code;
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The secret of its RFC 4648 base32 text (no padding), as an app reads it.
pub fn secret_of_base32(text: &str) -> Option<TotpSecret> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bytes, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)?;
        buffer = (buffer << 5) | value as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    TotpSecret::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_read_back_from_its_base32_gives_the_same_codes() {
        let secret = TotpSecret::generate();
        let read = secret_of_base32(&secret.to_base32()).expect("base32");
        assert_eq!(read.as_bytes(), secret.as_bytes());
        assert_eq!(read.code_at_step(1234), secret.code_at_step(1234));
    }

    #[test]
    fn a_wrong_code_is_not_accepted_now() {
        let secret = TotpSecret::generate();
        let code = wrong_code(&secret);
        assert_eq!(secret.check(&code, unix_now()), None);
    }
}
