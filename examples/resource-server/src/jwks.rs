//! authd's public keys as a resource server keeps them: fetched from the JWKS URL again each
//! time the `max-age` authd sends has passed, and at once when a token names a `kid` not seen yet.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use reqwest::header::{CACHE_CONTROL, HeaderMap};
use tokio::sync::Mutex;

/// How long a set is kept when authd's answer carries no `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// The shortest time between two fetches made for an unknown `kid` or after a failure. Anyone can
/// send tokens with made-up `kid`s, and authd may be down: either way authd gets one request per
/// this interval, not one per request that reaches us.
const MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
/// A set that could not be renewed for this many of its `max-age`s is dropped, and every token
/// refused until authd answers again: whoever can block our fetches must not keep a key authd
/// has revoked in use here.
const STALE_AFTER_MAX_AGES: u32 = 3;

/// A public key from the set, with the one algorithm it verifies.
#[derive(Clone)]
pub struct VerifyingKey {
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

pub struct Jwks {
    client: reqwest::Client,
    url: String,
    /// The keys by `kid`. Requests only read it, so a slow or hanging authd never delays a
    /// token signed by a key we already have.
    keys: RwLock<HashMap<String, VerifyingKey>>,
    /// When the set in `keys` is too old to trust (see `STALE_AFTER_MAX_AGES`).
    stale_at: RwLock<Option<Instant>>,
    /// Held for the whole of a fetch, so there is one at a time: when it was last tried.
    last_fetch: Mutex<Option<Instant>>,
}

impl Jwks {
    /// Fetches the set now, and again each time its `max-age` has passed, for as long as the
    /// process runs.
    pub fn start(url: String) -> anyhow::Result<Arc<Self>> {
        // No redirects: the keys come from the URL we were given or not at all.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let jwks = Arc::new(Self {
            client,
            url,
            keys: RwLock::default(),
            stale_at: RwLock::default(),
            last_fetch: Mutex::default(),
        });
        let refresher = Arc::clone(&jwks);
        tokio::spawn(async move {
            loop {
                let next = refresher.refetch().await;
                tokio::time::sleep(next).await;
            }
        });
        Ok(jwks)
    }

    /// The key authd publishes under `kid`, if any. authd takes a revoked key out of the set,
    /// so it stops working here within one `max-age`.
    pub async fn find(&self, kid: &str) -> Option<VerifyingKey> {
        if let Some(key) = self.known(kid) {
            return Some(key);
        }
        // A `kid` we do not know may be a key authd has just added: fetch at once, but not
        // more often than MIN_REFETCH_INTERVAL.
        let mut last_fetch = self.last_fetch.lock().await;
        // A fetch that ended while we waited for the lock may have brought it.
        if let Some(key) = self.known(kid) {
            return Some(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < MIN_REFETCH_INTERVAL) {
            return None;
        }
        self.fetch_locked(&mut last_fetch).await;
        self.known(kid)
    }

    fn known(&self, kid: &str) -> Option<VerifyingKey> {
        let stale_at = *self.stale_at.read().expect("never poisoned: only assigned");
        if stale_at.is_none_or(|at| Instant::now() >= at) {
            return None;
        }
        self.keys
            .read()
            .expect("never poisoned: only assigned")
            .get(kid)
            .cloned()
    }

    /// Fetches the set; returns how long to wait before the next fetch.
    async fn refetch(&self) -> Duration {
        let mut last_fetch = self.last_fetch.lock().await;
        self.fetch_locked(&mut last_fetch).await
    }

    async fn fetch_locked(&self, last_fetch: &mut Option<Instant>) -> Duration {
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok((keys, max_age)) => {
                *self.keys.write().expect("never poisoned: only assigned") = keys;
                *self
                    .stale_at
                    .write()
                    .expect("never poisoned: only assigned") =
                    Some(Instant::now() + max_age * STALE_AFTER_MAX_AGES);
                max_age
            }
            // Keep the keys we have for a while: an authd that is briefly unreachable should not
            // make every token fail (`known` stops trusting them once they are stale). Try
            // again soon, but not on every request.
            Err(error) => {
                eprintln!("warning: keeping the old key set: {error:#}");
                MIN_REFETCH_INTERVAL
            }
        }
    }

    async fn fetch(&self) -> anyhow::Result<(HashMap<String, VerifyingKey>, Duration)> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?;
        // A shared cache between us and authd may hand out a copy that is already `Age` old.
        let max_age = max_age(response.headers())
            .unwrap_or(DEFAULT_MAX_AGE)
            .saturating_sub(age(response.headers()))
            .max(Duration::from_secs(1));
        let set: JwkSet = response
            .json()
            .await
            .context("the answer is not a JWK set")?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, verifying_key(jwk)?)))
            .collect();
        Ok((keys, max_age))
    }
}

/// The key of a JWK that says it signs with ES256 (on P-256) or EdDSA (on Ed25519); `None` for
/// anything else. The algorithm is taken from the key, never from a token: a token cannot pick
/// HS256 (with the public key as its secret) or `none`. A key without `alg` is skipped.
fn verifying_key(jwk: &Jwk) -> Option<VerifyingKey> {
    if !matches!(
        jwk.common.public_key_use,
        None | Some(PublicKeyUse::Signature)
    ) {
        return None;
    }
    let algorithm = match (jwk.common.key_algorithm?, &jwk.algorithm) {
        (KeyAlgorithm::ES256, AlgorithmParameters::EllipticCurve(ec))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (KeyAlgorithm::EdDSA, AlgorithmParameters::OctetKeyPair(okp))
            if okp.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    Some(VerifyingKey {
        algorithm,
        key: DecodingKey::from_jwk(jwk).ok()?,
    })
}

/// The `Age` header: how long a cache has held this answer already.
fn age(headers: &HeaderMap) -> Duration {
    headers
        .get(reqwest::header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs)
}

/// The `max-age` of a `Cache-Control` header, at least a second (so `max-age=0` cannot make us
/// fetch on every request) and at most a day.
fn max_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(CACHE_CONTROL)?.to_str().ok()?;
    let seconds: u64 = value
        .split(',')
        .find_map(|directive| directive.trim().strip_prefix("max-age=")?.parse().ok())?;
    Some(Duration::from_secs(seconds.clamp(1, 86_400)))
}
