//! The HTTP clients of the bench: one keep-alive connection per worker, and the setup's client.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

/// Longest any single request may take before the bench counts it as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One keep-alive connection per worker, no proxy from the environment, bounded waits.
pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(1)
        .build()
        .context("cannot build an HTTP client")
}

/// The client the setup uses.
pub struct Http {
    pub client: reqwest::Client,
}

impl Http {
    pub fn new() -> Result<Http> {
        Ok(Http { client: client()? })
    }

    /// The id of the session an access token belongs to, from `GET /sessions`.
    pub async fn current_session(&self, base: &str, token: &str) -> Result<String> {
        let response = self
            .client
            .get(format!("{base}/sessions"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {base}/sessions"))?;
        ensure!(
            response.status().is_success(),
            "GET {base}/sessions answered {}",
            response.status()
        );
        let body: Value = response.json().await?;
        body["sessions"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["current"] == true))
            .and_then(|s| s["id"].as_str())
            .map(str::to_owned)
            .context("GET /sessions lists no current session")
    }

    pub async fn get_me(&self, base: &str, token: &str) -> Result<Vec<u8>> {
        let response = self
            .client
            .get(format!("{base}/users/me"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {base}/users/me"))?;
        ensure!(
            response.status().is_success(),
            "GET {base}/users/me answered {}",
            response.status()
        );
        Ok(response.bytes().await?.to_vec())
    }
}

/// authd's `authd_account_mails_total` counters of one kind of account email (`reset_password`,
/// `verify_email`, ...), by outcome, from `GET /metrics`: what the background work behind
/// `POST /password/forgot` did with each request.
pub async fn account_mails(
    client: &reqwest::Client,
    base: &str,
    kind: &str,
) -> Result<std::collections::BTreeMap<String, u64>> {
    let response = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .with_context(|| format!("GET {base}/metrics"))?;
    ensure!(
        response.status().is_success(),
        "GET {base}/metrics answered {}",
        response.status()
    );
    let text = response.text().await?;
    let kind_label = format!("kind=\"{kind}\"");
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("authd_account_mails_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        if !labels.split(',').any(|l| l == kind_label) {
            continue;
        }
        let outcome = labels
            .split(',')
            .find_map(|l| l.strip_prefix("outcome=\""))
            .and_then(|o| o.strip_suffix('"'));
        if let (Some(outcome), Ok(value)) = (outcome, value.trim().parse::<f64>()) {
            counts.insert(outcome.to_owned(), value as u64);
        }
    }
    Ok(counts)
}
