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
