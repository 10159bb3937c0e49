//! The signing-key use cases: keeping the server's key set in step with the `signing_keys`
//! table, and the admin commands that rotate and revoke keys.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use super::{Actor, Auth};
use crate::audit::{EventKind, SecurityEvent};
use crate::config::{JwtAlgorithm, Settings};
use crate::error::{Error, Result};
use crate::keyring::{KeyAlgorithm, KeyState, PrivateKey, new_signing_key};
use crate::keyset::{KeyMaterial, KeySet};
use crate::store::{RevokedKey, SigningKeyRecord};
use crate::token::{Subject, TokenError, TokenKeys, TokenKind, Verified};

/// A token naming a `kid` this instance does not know makes it read the keys again at most
/// this often: a key made a moment ago on another instance is found, and made-up `kid`s cannot
/// turn every request into a database read.
const ON_DEMAND_RELOAD_EVERY: Duration = Duration::from_secs(1);

/// How often, at most, a refresh first looks up whether the signing key was revoked (by an admin
/// command or another instance): a revoked key signs refreshed tokens for at most this long,
/// not until the next `keys.refresh_secs` reload. (Logins look every time.)
const SIGNER_CHECK_EVERY_MS: i64 = 1_000;

/// What the server's key set is made from.
#[derive(Clone)]
pub(super) struct KeyRing {
    kek: Arc<[u8; 32]>,
    hs256_secret: Option<SecretString>,
    algorithm: JwtAlgorithm,
    horizon_secs: u64,
    last_on_demand: Arc<Mutex<Option<Instant>>>,
    /// When the signing key was last looked up for a revocation, in Unix milliseconds.
    signer_checked_at: Arc<AtomicI64>,
    /// Whether the keys were read at least once (not yet when the database was down at start).
    loaded: Arc<AtomicBool>,
    /// One read-and-install at a time: a slow read cannot put an older set back in place.
    reloading: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("algorithm", &self.algorithm)
            .field("hs256", &self.hs256_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    pub(super) fn new(
        settings: &Settings,
        kek: [u8; 32],
        hs256_secret: Option<SecretString>,
    ) -> KeyRing {
        KeyRing {
            kek: Arc::new(kek),
            hs256_secret,
            algorithm: settings.jwt.algorithm,
            horizon_secs: TokenKeys::retired_horizon_secs(settings),
            last_on_demand: Arc::new(Mutex::new(None)),
            signer_checked_at: Arc::new(AtomicI64::new(0)),
            loaded: Arc::new(AtomicBool::new(false)),
            reloading: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    pub(super) fn kek(&self) -> &[u8; 32] {
        &self.kek
    }

    fn material(&self) -> KeyMaterial<'_> {
        KeyMaterial {
            kek: Some(&self.kek),
            hs256_secret: self
                .hs256_secret
                .as_ref()
                .map(|s| s.expose_secret().as_bytes()),
            algorithm: self.algorithm,
            retired_horizon_secs: self.horizon_secs,
        }
    }

    /// Whether an on-demand reload may run now (and, if so, counts it as run).
    fn may_reload_now(&self) -> bool {
        let mut last = self
            .last_on_demand
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < ON_DEMAND_RELOAD_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// Whether `key`'s private half opens under `kek`.
fn opens_under(key: &SigningKeyRecord, kek: &[u8; 32]) -> bool {
    key.algorithm
        .parse::<KeyAlgorithm>()
        .is_ok_and(|algorithm| {
            PrivateKey::unseal(&key.sealed_private, kek, &key.kid, algorithm).is_ok()
        })
}

/// The algorithm of a key made under `jwt.algorithm` (an HS256 server makes ES256 keys, ready
/// for a switch).
pub fn key_algorithm(algorithm: JwtAlgorithm) -> KeyAlgorithm {
    match algorithm {
        JwtAlgorithm::EdDsa => KeyAlgorithm::EdDsa,
        JwtAlgorithm::Es256 | JwtAlgorithm::Hs256 => KeyAlgorithm::Es256,
    }
}

fn internal(err: impl std::fmt::Display) -> Error {
    Error::Internal(anyhow::anyhow!("signing key: {err}"))
}

/// A key made to activate, or to take over from a revoked current key.
pub struct Activated {
    pub kid: String,
    /// The key that was current until now, retired.
    pub retired: Option<String>,
}

impl Auth {
    /// Reads the signing keys again and puts the set they make in use. On an asymmetric
    /// `jwt.algorithm`, first makes a current key when there is none (the first start; two
    /// instances starting at once make one between them, the database's unique index sees to
    /// it).
    pub async fn reload_keys(&self) -> Result<()> {
        self.reload_keys_for("periodic").await
    }

    /// [`Auth::reload_keys`], counted in `authd_key_reloads_total` under `reason`.
    async fn reload_keys_for(&self, reason: &'static str) -> Result<()> {
        let _one_at_a_time = self.sign_in()?.ring.reloading.lock().await;
        self.metrics.key_reload(reason);
        let records = self.key_records().await?;
        self.install_keys(&records)
    }

    /// The stored keys, after making a current one if there is none (see [`Auth::reload_keys`]).
    pub(super) async fn key_records(&self) -> Result<Vec<SigningKeyRecord>> {
        let sign_in = self.sign_in()?;
        let ring = &sign_in.ring;
        let mut records = self.store.list_signing_keys().await?;
        let needs_current =
            ring.algorithm != JwtAlgorithm::Hs256 && !records.iter().any(|r| r.state == "current");
        // A key published ahead (`authd keys rotate` while on HS256) takes over first, the
        // verifiers already have it; but only one this KEK opens (a command run with another
        // KEK may have made it), else a new key is made and that one stays `next`.
        let oldest_next = records.iter().find(|r| r.state == "next");
        if needs_current && let Some(next) = oldest_next.filter(|k| !opens_under(k, ring.kek())) {
            tracing::error!(kid = %next.kid, "the next signing key does not open under keys.encryption_key: not activating it (revoke it with authd keys revoke)");
        }
        if needs_current && oldest_next.is_some_and(|k| opens_under(k, ring.kek())) {
            if let Some(kid) = self.store.activate_next_key(Utc::now()).await? {
                tracing::info!(kid = %kid, "activated the next signing key: there was no current one");
                self.audit
                    .record(SecurityEvent::new(EventKind::KeyActivated).detail(format!(
                        "{}: {kid} current, none retired",
                        Actor::Server.as_str()
                    )));
            }
            records = self.store.list_signing_keys().await?;
        } else if needs_current {
            let key = new_signing_key(
                ring.kek(),
                key_algorithm(ring.algorithm),
                KeyState::Current,
                Utc::now(),
            )
            .map_err(internal)?;
            match self.store.insert_signing_key(&key).await {
                Ok(()) => {
                    tracing::info!(kid = %key.kid, algorithm = %key.algorithm, "made the first signing key");
                    self.audit
                        .record(SecurityEvent::new(EventKind::KeyCreated).detail(format!(
                            "{}: {} ({}) as current",
                            Actor::Server.as_str(),
                            key.kid,
                            key.algorithm
                        )));
                }
                // Another instance made one first.
                Err(err) => tracing::debug!(error = %err, "no first signing key made here"),
            }
            records = self.store.list_signing_keys().await?;
        }
        Ok(records)
    }

    /// Puts the set `records` make in use; an error when the current key does not open under
    /// the key-encryption key.
    pub(super) fn install_keys(&self, records: &[SigningKeyRecord]) -> Result<()> {
        let sign_in = self.sign_in()?;
        let ring = &sign_in.ring;
        let set = KeySet::from_records(records, &ring.material(), Utc::now())?;
        sign_in.tokens.install(set);
        ring.loaded.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the keys were read at least once: until then the key refresher retries every
    /// second, and token operations answer 503 instead of refusing tokens they cannot judge.
    pub fn keys_loaded(&self) -> bool {
        self.sign_in
            .as_ref()
            .is_some_and(|s| s.ring.loaded.load(Ordering::Relaxed))
    }

    /// The answer while the keys could not be read yet (the database was down at start).
    fn keys_not_loaded(&self) -> Result<()> {
        if self.keys_loaded() {
            Ok(())
        } else {
            Err(Error::Unavailable("database"))
        }
    }

    /// The key set in use (the JWKS route reads it); 503 until the keys were read once.
    pub fn key_set(&self) -> Result<Arc<KeySet>> {
        self.keys_not_loaded()?;
        Ok(self.sign_in()?.tokens.key_set())
    }

    /// Verifies a token of `kind`; a `kid` this instance does not know makes it read the keys
    /// again first (at most once a second), so a key made elsewhere a moment ago is accepted.
    pub(super) async fn verified(&self, kind: TokenKind, token: &str) -> Result<Verified> {
        let sign_in = self.sign_in()?;
        match sign_in.tokens.verify_keyed(kind, token) {
            Err(TokenError::UnknownKey) if self.reload_on_demand("unknown_kid").await? => {
                Ok(sign_in.tokens.verify_keyed(kind, token)?)
            }
            Err(TokenError::UnknownKey) => {
                self.keys_not_loaded()?;
                Err(TokenError::UnknownKey.into())
            }
            verified => Ok(verified?),
        }
    }

    /// [`TokenKeys::access_subject`], with the reload of [`Auth::verified`].
    pub(super) async fn access_subject(&self, token: &str) -> Result<Subject> {
        let sign_in = self.sign_in()?;
        match sign_in.tokens.access_subject(token) {
            Err(TokenError::UnknownKey) if self.reload_on_demand("unknown_kid").await? => {
                Ok(sign_in.tokens.access_subject(token)?)
            }
            Err(TokenError::UnknownKey) => {
                self.keys_not_loaded()?;
                Err(TokenError::UnknownKey.into())
            }
            subject => Ok(subject?),
        }
    }

    /// Before a token is issued: whether the key about to sign it was revoked meanwhile (by an
    /// admin command or another instance); if so the keys are read again, and the new current
    /// key signs. `always` for logins, whose bcrypt dwarfs the lookup; refreshes look at most
    /// once a second.
    pub(super) async fn check_signer(&self, always: bool) -> Result<()> {
        let sign_in = self.sign_in()?;
        if !self.keys_loaded() {
            // Nothing to sign with yet: try now, and answer 503 if the database is still away.
            if self.reload_on_demand("not_loaded").await? && self.keys_loaded() {
                return Ok(());
            }
            return self.keys_not_loaded();
        }
        let now = Utc::now().timestamp_millis();
        let last = sign_in.ring.signer_checked_at.load(Ordering::Relaxed);
        if !always
            && (now.saturating_sub(last) < SIGNER_CHECK_EVERY_MS
                || sign_in
                    .ring
                    .signer_checked_at
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err())
        {
            return Ok(());
        }
        let Some(kid) = sign_in.tokens.key_set().signing_kid().map(str::to_owned) else {
            return Ok(());
        };
        let state = self.store.signing_key_state(&kid).await?;
        if state.as_deref() != Some("current") {
            tracing::info!(kid, state = ?state, "the signing key is no longer current: reading the keys again");
            self.reload_keys_for("signer_changed").await?;
        }
        Ok(())
    }

    /// Reads the keys again unless that was done less than a second ago; whether it did. A
    /// database that does not answer is an error (503), anything else is logged and counts as
    /// not done.
    async fn reload_on_demand(&self, reason: &'static str) -> Result<bool> {
        let sign_in = self.sign_in()?;
        if !sign_in.ring.may_reload_now() {
            return Ok(false);
        }
        match self.reload_keys_for(reason).await {
            Ok(()) => Ok(true),
            Err(err @ Error::Unavailable(_)) => Err(err),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the signing keys");
                Ok(false)
            }
        }
    }

    /// Every stored signing key, oldest first (`authd keys list`).
    pub async fn list_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.store.list_signing_keys().await
    }

    /// Refuses a key-encryption key that does not open every key that signs or may sign
    /// (`current` and `next`): a key sealed or activated under another one could not be opened
    /// by the servers (the admin command ran with other settings).
    async fn check_kek(&self, kek: &[u8; 32]) -> Result<()> {
        let keys = self.store.list_signing_keys().await?;
        match keys
            .iter()
            .filter(|k| k.state == "current" || k.state == "next")
            .find(|k| !opens_under(k, kek))
        {
            None => Ok(()),
            Some(key) => Err(Error::validation(
                "keys.encryption_key",
                format!(
                    "it does not open the {} signing key {}: run this command with the server's keys.encryption_key (AUTHD_KEYS__ENCRYPTION_KEY)",
                    key.state, key.kid
                ),
            )),
        }
    }

    /// Makes a `next` key (`authd keys rotate`): published from now on, signing nothing yet.
    pub async fn create_next_key(
        &self,
        kek: &[u8; 32],
        algorithm: KeyAlgorithm,
        actor: Actor,
    ) -> Result<String> {
        self.check_kek(kek).await?;
        let key = new_signing_key(kek, algorithm, KeyState::Next, Utc::now()).map_err(internal)?;
        self.store.insert_signing_key(&key).await?;
        tracing::info!(kid = %key.kid, algorithm = %key.algorithm, "made a next signing key");
        self.record_admin_change(SecurityEvent::new(EventKind::KeyCreated).detail(format!(
            "{}: {} ({}) as next",
            actor.as_str(),
            key.kid,
            key.algorithm
        )))
        .await?;
        Ok(key.kid)
    }

    /// Promotes the oldest `next` key to `current` and retires the current one (`authd keys
    /// rotate --activate`); None when there is no `next` key.
    pub async fn activate_next_key(
        &self,
        kek: &[u8; 32],
        actor: Actor,
    ) -> Result<Option<Activated>> {
        self.check_kek(kek).await?;
        let before = self.store.list_signing_keys().await?;
        let Some(kid) = self.store.activate_next_key(Utc::now()).await? else {
            return Ok(None);
        };
        let retired = before
            .into_iter()
            .find(|k| k.state == "current")
            .map(|k| k.kid);
        tracing::info!(kid = %kid, retired = ?retired, "activated a signing key");
        self.record_admin_change(SecurityEvent::new(EventKind::KeyActivated).detail(format!(
            "{}: {kid} current, {} retired",
            actor.as_str(),
            retired.as_deref().unwrap_or("none")
        )))
        .await?;
        Ok(Some(Activated { kid, retired }))
    }

    /// Revokes a key (`authd keys revoke`): never accepted again, here at once (every request
    /// reads the key's state with its session) and by other services once their JWKS copy is
    /// renewed. A revoked current key is followed, in the same transaction, by the oldest
    /// `next` key, else by a new key made with `kek` (without one, that revocation is refused),
    /// so logins go on. Any other key is revoked without the KEK. None: no such key.
    pub async fn revoke_key(
        &self,
        kid: &str,
        kek: Option<&[u8; 32]>,
        algorithm: KeyAlgorithm,
        actor: Actor,
    ) -> Result<Option<RevokedKey>> {
        // A KEK only matters when a new key must take over: the current key with no next key.
        let keys = self.store.list_signing_keys().await?;
        let needs_successor = keys.iter().any(|k| k.kid == kid && k.state == "current")
            && !keys.iter().any(|k| k.state == "next");
        let replacement = match kek.filter(|_| needs_successor) {
            Some(kek) => {
                // The key being revoked was opened by the servers: the KEK must open it too.
                self.check_kek(kek).await?;
                Some(
                    new_signing_key(kek, algorithm, KeyState::Current, Utc::now())
                        .map_err(internal)?,
                )
            }
            None => None,
        };
        let Some(revoked) = self
            .store
            .revoke_signing_key(kid, Utc::now(), replacement.as_ref())
            .await?
        else {
            return Ok(None);
        };
        if revoked.previous_state != "revoked" {
            tracing::warn!(kid, successor = ?revoked.successor, "revoked a signing key");
            let successor = revoked
                .successor
                .as_deref()
                .map(|s| format!(", {s} current"))
                .unwrap_or_default();
            self.record_admin_change(SecurityEvent::new(EventKind::KeyRevoked).detail(format!(
                "{}: {kid} (was {}){successor}",
                actor.as_str(),
                revoked.previous_state
            )))
            .await?;
        }
        Ok(Some(revoked))
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};

    use super::*;
    use crate::keyring::new_signing_key;

    /// A key the server retired at `retired_at`, and the key that took over.
    fn retired_key(kek: &[u8; 32], retired_at: DateTime<Utc>) -> Vec<SigningKeyRecord> {
        let made = retired_at - Duration::days(1);
        let current = new_signing_key(kek, KeyAlgorithm::Es256, KeyState::Current, made).unwrap();
        let mut retired = SigningKeyRecord::from(
            new_signing_key(kek, KeyAlgorithm::Es256, KeyState::Current, made).unwrap(),
        );
        retired.state = "retired".into();
        retired.retired_at = Some(retired_at);
        vec![SigningKeyRecord::from(current), retired]
    }

    #[test]
    fn the_server_keeps_a_retired_key_for_the_longest_token_life_plus_one_reload_and_the_skew() {
        let kek = [5; 32];
        let retired_at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let records = retired_key(&kek, retired_at);
        let kid = records[1].kid.clone();
        let mut settings = Settings::defaults();
        settings.jwt.algorithm = JwtAlgorithm::Es256;
        settings.keys.refresh_secs = 300;
        // Once with the access token living longest, once with the challenge token.
        for (access, challenge, longest) in [(900, 300, 900), (600, 1_800, 1_800)] {
            settings.jwt.access_ttl_secs = access;
            settings.jwt.challenge_ttl_secs = challenge;
            let ring = KeyRing::new(&settings, kek, None);
            // max(ttl) + keys.refresh_secs + 60 s of iat skew.
            let horizon = retired_at + Duration::seconds(longest + 300 + 60);
            let kept = KeySet::from_records(&records, &ring.material(), horizon).unwrap();
            assert_eq!(kept.state_of(&kid), Some(KeyState::Retired), "{longest}");
            let later = horizon + Duration::seconds(1);
            let dropped = KeySet::from_records(&records, &ring.material(), later).unwrap();
            assert_eq!(dropped.state_of(&kid), None, "{longest}");
        }
    }
}
