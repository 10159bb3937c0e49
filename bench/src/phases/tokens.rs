//! The `tokens` phase: what signing and fully verifying one access token costs authd on one
//! core, for each signing algorithm.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::figures::{TOKEN_ALGORITHMS, TokenCost};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("tokens") {
        return Ok(());
    }
    // Two seconds per algorithm and operation is thousands of tokens: plenty.
    let length = Duration::from_secs(w.options.secs).min(Duration::from_secs(2));
    run.figures.token_costs = tokio::task::spawn_blocking(move || token_costs(length))
        .await
        .context("the tokens phase failed")??;
    Ok(())
}

/// Signing and full verification (the verified-token cache bypassed) of access tokens with
/// authd's own `TokenKeys`, for `length` per algorithm and operation on this thread: the
/// cryptographic cost per token a login, a refresh or a first request pays.
fn token_costs(length: Duration) -> Result<[TokenCost; 3]> {
    use authd::keys::{KeyAlgorithm, KeyMaterial, KeySet, KeyState, new_signing_key};
    use authd::token::{TokenKeys, TokenKind};

    let jwt = authd::config::Settings::defaults().jwt;
    let kek = [9u8; 32];
    let keys_for = |algorithm: &str| -> Result<TokenKeys> {
        let asymmetric = match algorithm {
            "ES256" => KeyAlgorithm::Es256,
            "EdDSA" => KeyAlgorithm::EdDsa,
            _ => return Ok(TokenKeys::new(&[7u8; 32], &jwt)),
        };
        let key = new_signing_key(&kek, asymmetric, KeyState::Current, chrono::Utc::now())?;
        let record = authd::store::SigningKeyRecord::from(key);
        let material = KeyMaterial {
            kek: Some(&kek),
            hs256_secret: None,
            algorithm: match asymmetric {
                KeyAlgorithm::Es256 => authd::config::JwtAlgorithm::Es256,
                KeyAlgorithm::EdDsa => authd::config::JwtAlgorithm::EdDsa,
            },
            retired_horizon_secs: 3_600,
        };
        let set = KeySet::from_records(&[record], &material, chrono::Utc::now())?;
        Ok(TokenKeys::with_set(set, &jwt))
    };
    let mut costs = [TokenCost::default(); 3];
    for (cost, algorithm) in costs.iter_mut().zip(TOKEN_ALGORITHMS) {
        let keys = keys_for(algorithm)?;
        let (user, session) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        let mut tokens = Vec::new();
        let began = Instant::now();
        while began.elapsed() < length && tokens.len() < 200_000 {
            tokens.push(keys.issue_access(user, session)?.token);
        }
        cost.sign_us = began.elapsed().as_secs_f64() * 1e6 / tokens.len() as f64;
        let began = Instant::now();
        let mut verified = 0usize;
        for token in tokens.iter().cycle() {
            ensure!(
                keys.verify(TokenKind::Access, token).is_ok(),
                "{algorithm}: a token was refused"
            );
            verified += 1;
            if verified.is_multiple_of(64) && began.elapsed() >= length {
                break;
            }
        }
        cost.verify_us = began.elapsed().as_secs_f64() * 1e6 / verified as f64;
    }
    Ok(costs)
}
