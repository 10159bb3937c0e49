//! The key set one instance signs and verifies with: the stored signing keys by `kid` (the
//! current one able to sign when the key-encryption key opens it), the HS256 secret when there
//! is one, and the JWKS that publishes the public halves. Built from the `signing_keys` rows
//! (or from a JWKS, for `authd token inspect --jwks`), and replaced whole when they change.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::sealed::{KeyAlgorithm, KeyState, PrivateKey};
use crate::config::JwtAlgorithm;
use crate::store::SigningKeyRecord;

/// A key a token names by its `kid`.
pub(crate) struct NamedKey {
    pub(crate) algorithm: Algorithm,
    pub(crate) state: KeyState,
    pub(crate) key: DecodingKey,
}

/// What new tokens are signed with: the current key (with its `kid`), or the HS256 secret.
pub(crate) struct Signer {
    pub(crate) kid: Option<String>,
    pub(crate) algorithm: Algorithm,
    pub(crate) key: EncodingKey,
}

/// The HS256 secret as a verifier holds it.
pub(crate) struct Hs256Key {
    pub(crate) key: DecodingKey,
    /// With an asymmetric `jwt.algorithm`, authd issues no HS256 token any more: one is only
    /// accepted if it was issued before the first signing key was made (Unix seconds), and
    /// lives no longer than its kind does. None when HS256 is what authd signs with.
    pub(crate) issued_before: Option<i64>,
}

/// Everything one instance signs and verifies tokens with at one moment.
pub struct KeySet {
    pub(crate) signer: Option<Signer>,
    pub(crate) by_kid: HashMap<String, NamedKey>,
    pub(crate) hs256: Option<Hs256Key>,
    /// `{"keys":[...]}`: the public JWKs of the next, current and retired keys.
    jwks: Arc<str>,
    /// The algorithms of the published keys, each once.
    algorithms: Vec<&'static str>,
    /// Why this set cannot sign although its instance should (the current key does not open
    /// under the key-encryption key, or cannot sign, or there is none); it still verifies and
    /// publishes the other keys.
    unusable: Option<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field(
                "signs_with",
                &self.signer.as_ref().map(|s| (&s.kid, s.algorithm)),
            )
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field("hs256", &self.hs256.is_some())
            .finish()
    }
}

/// What a key set is made of besides the stored keys.
pub struct KeyMaterial<'a> {
    /// Opens the current key so the set can sign (the server); without it the set only
    /// verifies (the admin commands).
    pub kek: Option<&'a [u8; 32]>,
    /// The HS256 secret (configured, or the generated file), if there is one.
    pub hs256_secret: Option<&'a [u8]>,
    pub algorithm: JwtAlgorithm,
    /// A retired key is dropped this many seconds after it retired: by then every token it
    /// signed has expired.
    pub retired_horizon_secs: u64,
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::ES256 => "ES256",
        Algorithm::EdDSA => "EdDSA",
        _ => "HS256",
    }
}

impl KeySet {
    /// The set the stored keys make as of `now`.
    pub fn from_records(
        records: &[SigningKeyRecord],
        material: &KeyMaterial<'_>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<KeySet> {
        super::crypto::install();
        let horizon = chrono::Duration::seconds(
            i64::try_from(material.retired_horizon_secs).unwrap_or(i64::MAX / 2),
        );
        let mut by_kid = HashMap::new();
        let mut published = Vec::new();
        let mut signer = None;
        let mut unusable = None;
        for record in records {
            let Some(state) = KeyState::parse(&record.state) else {
                tracing::warn!(kid = %record.kid, state = %record.state, "signing key with an unknown state skipped");
                continue;
            };
            // Every token a retired key signed has expired: it is neither published nor accepted.
            if state == KeyState::Retired && record.retired_at.is_some_and(|at| at + horizon < now)
            {
                continue;
            }
            let (algorithm, jwk) = match parse_record(record) {
                Ok(parsed) => parsed,
                Err(err) => {
                    tracing::warn!(kid = %record.kid, error = %err, "unreadable signing key skipped");
                    continue;
                }
            };
            // A key that does not load is left out, whatever the others do: a revoked key
            // leaves the set at this read even when another key is unusable.
            let key = match DecodingKey::from_jwk(&jwk) {
                Ok(key) => key,
                Err(err) => {
                    tracing::warn!(kid = %record.kid, error = %err, "signing key with an unusable public half skipped");
                    continue;
                }
            };
            if state == KeyState::Current
                && material.algorithm != JwtAlgorithm::Hs256
                && let Some(kek) = material.kek
            {
                match open_signer(record, algorithm, kek, &key) {
                    Ok(opened) => signer = Some(opened),
                    Err(err) => unusable = Some(format!("{err:#}")),
                }
            }
            if state != KeyState::Revoked {
                published.push(jwk);
            }
            by_kid.insert(
                record.kid.clone(),
                NamedKey {
                    algorithm: algorithm.jwt(),
                    state,
                    key,
                },
            );
        }
        let hs256 = material.hs256_secret.map(|secret| Hs256Key {
            key: DecodingKey::from_secret(secret),
            issued_before: match material.algorithm {
                JwtAlgorithm::Hs256 => None,
                // The first key became current when authd stopped signing with HS256 (keys made
                // ahead by `authd keys rotate` signed nothing until then); with none activated
                // yet, nothing has been signed otherwise.
                _ => Some(
                    records
                        .iter()
                        .filter_map(|r| r.activated_at)
                        .map(|at| at.timestamp())
                        .min()
                        .unwrap_or(i64::MAX),
                ),
            },
        });
        if material.algorithm == JwtAlgorithm::Hs256
            && let Some(secret) = material.hs256_secret
        {
            signer = Some(Signer {
                kid: None,
                algorithm: Algorithm::HS256,
                key: EncodingKey::from_secret(secret),
            });
        }
        // A server (it has the KEK) on an asymmetric algorithm must be able to sign.
        if signer.is_none()
            && unusable.is_none()
            && material.kek.is_some()
            && material.algorithm != JwtAlgorithm::Hs256
        {
            unusable = Some("there is no current signing key".to_owned());
        }
        let mut set = KeySet::assemble(signer, by_kid, hs256, published);
        set.unusable = unusable;
        Ok(set)
    }

    /// A set that verifies with the keys of a JWKS (`{"keys":[...]}`), as a service holding
    /// only the published set would; it signs nothing.
    pub fn from_jwks(text: &str) -> anyhow::Result<KeySet> {
        super::crypto::install();
        let set: JwkSet = serde_json::from_str(text).context("not a JWK set")?;
        let mut by_kid = HashMap::new();
        let mut published = Vec::new();
        for jwk in set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            // Encryption keys never verify a signature.
            if jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            // The algorithm follows from the key itself (`alg` is optional, RFC 7517 §4.4); a
            // key whose `alg` says otherwise is not one to trust.
            let Some(algorithm) = algorithm_of(&jwk) else {
                continue;
            };
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            by_kid.insert(
                kid,
                NamedKey {
                    algorithm,
                    state: KeyState::Published,
                    key,
                },
            );
            published.push(jwk);
        }
        Ok(KeySet::assemble(None, by_kid, None, published))
    }

    /// A set of the HS256 secret alone, signing and verifying (a single service).
    pub fn hs256_only(secret: &[u8]) -> KeySet {
        KeySet::assemble(
            Some(Signer {
                kid: None,
                algorithm: Algorithm::HS256,
                key: EncodingKey::from_secret(secret),
            }),
            HashMap::new(),
            Some(Hs256Key {
                key: DecodingKey::from_secret(secret),
                issued_before: None,
            }),
            Vec::new(),
        )
    }

    fn assemble(
        signer: Option<Signer>,
        by_kid: HashMap<String, NamedKey>,
        hs256: Option<Hs256Key>,
        published: Vec<Jwk>,
    ) -> KeySet {
        let mut algorithms: Vec<&'static str> = Vec::new();
        for jwk in &published {
            let name = match jwk.common.key_algorithm.map(|a| a.to_string()).as_deref() {
                Some("EdDSA") => "EdDSA",
                _ => "ES256",
            };
            if !algorithms.contains(&name) {
                algorithms.push(name);
            }
        }
        // Serialized through jsonwebtoken's `Jwk`, which has no member for a private part.
        let jwks = serde_json::to_string(&JwkSet { keys: published })
            .unwrap_or_else(|_| r#"{"keys":[]}"#.to_owned());
        KeySet {
            signer,
            by_kid,
            hs256,
            jwks: jwks.into(),
            algorithms,
            unusable: None,
        }
    }

    /// The published JWK set, as JSON.
    pub fn jwks(&self) -> Arc<str> {
        self.jwks.clone()
    }

    /// The algorithms of the published keys.
    pub fn published_algorithms(&self) -> &[&'static str] {
        &self.algorithms
    }

    /// Why the set cannot sign although its instance should; None when it can (or is a
    /// verifier's set).
    pub fn unusable(&self) -> Option<&str> {
        self.unusable.as_deref()
    }

    /// The `kid` new tokens carry, if they carry one (not with HS256).
    pub fn signing_kid(&self) -> Option<&str> {
        self.signer.as_ref().and_then(|s| s.kid.as_deref())
    }

    /// The algorithm new tokens are signed with, if the set can sign.
    pub fn signing_algorithm(&self) -> Option<&'static str> {
        self.signer.as_ref().map(|s| algorithm_name(s.algorithm))
    }

    /// The state of the key `kid`, if the set has it.
    pub fn state_of(&self, kid: &str) -> Option<KeyState> {
        self.by_kid.get(kid).map(|k| k.state)
    }

    /// Whether a token verified by the old set may no longer verify by this one: a key gone or
    /// revoked, or the HS256 secret gone.
    pub(crate) fn withdraws_from(&self, old: &KeySet) -> bool {
        let accepted = |set: &KeySet, kid: &str| {
            set.by_kid
                .get(kid)
                .is_some_and(|k| k.state != KeyState::Revoked)
        };
        old.by_kid
            .keys()
            .any(|kid| accepted(old, kid) && !accepted(self, kid))
            || (old.hs256.is_some() && self.hs256.is_none())
    }
}

/// The algorithm a published key verifies with: ES256 for a P-256 EC key, EdDSA for an
/// Ed25519 OKP key, and only if its `alg`, when present, says the same.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    use base64::Engine;
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    let decode = |text: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()
    };
    // The point must be one on the curve: a key that cannot verify anything is left out, not
    // listed and then blamed on the token's signature.
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            let mut point = vec![4u8];
            point.extend(decode(&ec.x)?);
            point.extend(decode(&ec.y)?);
            p256::PublicKey::from_sec1_bytes(&point).ok()?;
            Algorithm::ES256
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            let bytes: [u8; 32] = decode(&okp.x)?.try_into().ok()?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm.map(|a| a.to_string()) {
        None => Some(algorithm),
        Some(named) if named == algorithm_name(algorithm) => Some(algorithm),
        Some(_) => None,
    }
}

/// The current key's private half, opened under `kek` and signed with once, so a key the
/// signing library cannot use is found when the set is made, not at the first login.
fn open_signer(
    record: &SigningKeyRecord,
    algorithm: KeyAlgorithm,
    kek: &[u8; 32],
    public: &DecodingKey,
) -> anyhow::Result<Signer> {
    let private = PrivateKey::unseal(&record.sealed_private, kek, &record.kid, algorithm)
        .with_context(|| {
            format!(
                "the current signing key {} does not open under keys.encryption_key: is it the key-encryption key it was made with?",
                record.kid
            )
        })?;
    let key = private.encoding_key();
    let signature = jsonwebtoken::crypto::sign(b"authd key check", &key, algorithm.jwt())
        .with_context(|| format!("the current signing key {} cannot sign", record.kid))?;
    // And what it signs verifies with the public half the JWKS publishes for it: a row whose
    // halves do not belong together would sign tokens that nobody accepts.
    let verifies =
        jsonwebtoken::crypto::verify(&signature, b"authd key check", public, algorithm.jwt())
            .unwrap_or(false);
    anyhow::ensure!(
        verifies,
        "the current signing key {}'s public half does not verify what its private half signs",
        record.kid
    );
    Ok(Signer {
        kid: Some(record.kid.clone()),
        algorithm: algorithm.jwt(),
        key,
    })
}

/// A stored row's algorithm and public JWK.
fn parse_record(record: &SigningKeyRecord) -> anyhow::Result<(KeyAlgorithm, Jwk)> {
    let algorithm: KeyAlgorithm = record
        .algorithm
        .parse()
        .map_err(|_| anyhow!("unknown algorithm {:?}", record.algorithm))?;
    let jwk: Jwk = serde_json::from_str(&record.public_jwk).context("public_jwk is not a JWK")?;
    if jwk.common.key_id.as_deref() != Some(record.kid.as_str()) {
        return Err(anyhow!("public_jwk names another kid"));
    }
    Ok((algorithm, jwk))
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::keys::new_signing_key;

    const KEK: [u8; 32] = [3; 32];

    /// A current key, and a key retired at `retired_at`.
    fn current_and_retired(retired_at: DateTime<Utc>) -> (Vec<SigningKeyRecord>, String) {
        let made = retired_at - Duration::days(1);
        let current = SigningKeyRecord::from(
            new_signing_key(&KEK, KeyAlgorithm::Es256, KeyState::Current, made).unwrap(),
        );
        let mut retired = SigningKeyRecord::from(
            new_signing_key(&KEK, KeyAlgorithm::Es256, KeyState::Current, made).unwrap(),
        );
        retired.state = KeyState::Retired.as_str().to_owned();
        retired.retired_at = Some(retired_at);
        let kid = retired.kid.clone();
        (vec![current, retired], kid)
    }

    fn set_at(records: &[SigningKeyRecord], horizon: u64, now: DateTime<Utc>) -> KeySet {
        let material = KeyMaterial {
            kek: Some(&KEK),
            hs256_secret: None,
            algorithm: JwtAlgorithm::Es256,
            retired_horizon_secs: horizon,
        };
        KeySet::from_records(records, &material, now).unwrap()
    }

    #[test]
    fn a_retired_key_is_accepted_and_published_up_to_its_horizon_and_dropped_just_after() {
        let retired_at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let (records, kid) = current_and_retired(retired_at);
        let horizon = 900 + 300 + 60;
        let at_horizon = retired_at + Duration::seconds(horizon);
        let inside = set_at(&records, horizon as u64, at_horizon);
        assert_eq!(inside.state_of(&kid), Some(KeyState::Retired));
        assert!(inside.jwks().contains(&kid), "published until its horizon");
        let outside = set_at(&records, horizon as u64, at_horizon + Duration::seconds(1));
        assert_eq!(outside.state_of(&kid), None, "dropped a second later");
        assert!(!outside.jwks().contains(&kid), "no longer published");
        assert!(outside.withdraws_from(&inside));
        // The current key is never dropped, however long ago it was made.
        assert!(outside.signing_kid().is_some());
        assert_eq!(outside.by_kid.len(), 1);
    }
}
