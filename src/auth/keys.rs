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
use crate::keys::{
    KeyAlgorithm, KeyMaterial, KeySet, KeyState, PrivateKey, kek_check_value, new_signing_key,
};
use crate::store::{NewSigningKey, Revocation, RevokedKey, SigningKeyRecord, Store, Successor};
use crate::token::{Subject, TokenError, TokenKeys, TokenKind, Verified};

/// A token naming a `kid` this instance does not know makes it read the keys again at most
/// this often: a key made a moment ago on another instance is found, and made-up `kid`s cannot
/// turn every request into a database read.
const ON_DEMAND_RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What the server's key set is made from.
#[derive(Clone)]
pub(super) struct KeyRing {
    kek: Arc<[u8; 32]>,
    hs256_secret: Option<SecretString>,
    algorithm: JwtAlgorithm,
    horizon_secs: u64,
    last_on_demand: Arc<Mutex<Option<Instant>>>,
    /// Whether the KEK was compared with the database's check value (once per process).
    kek_checked: Arc<AtomicBool>,
    /// When the keys were last read and installed, in Unix milliseconds; 0 until the first
    /// read (the database was down at start).
    last_read_ms: Arc<AtomicI64>,
    /// `keys.refresh_secs`: reads older than two of these make the instance not ready.
    refresh_secs: u64,
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
            kek_checked: Arc::new(AtomicBool::new(false)),
            last_read_ms: Arc::new(AtomicI64::new(0)),
            refresh_secs: settings.keys.refresh_secs,
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

/// What `authd keys rotate --activate` did.
pub enum Activation {
    Done(Activated),
    /// No `next` key that the KEK opens.
    NoNextKey,
    /// The key to activate was published less than the wait ago: nothing changed.
    TooSoon {
        kid: String,
        left_secs: i64,
    },
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
        self.install_keys(&records).map(drop)
    }

    /// The stored keys, after making a current one if there is none (see [`Auth::reload_keys`]).
    /// The first read of a process compares the KEK with the database's check value (and
    /// records it when there is none): a wrong KEK is an error here, before anything is sealed.
    pub(super) async fn key_records(&self) -> Result<Vec<SigningKeyRecord>> {
        let sign_in = self.sign_in()?;
        let ring = &sign_in.ring;
        if !ring.kek_checked.load(Ordering::Relaxed) {
            settle_kek(&self.store, ring.kek(), KekWitness::Server).await?;
            ring.kek_checked.store(true, Ordering::Relaxed);
        }
        let mut records = self.store.list_signing_keys().await?;
        let needs_current =
            ring.algorithm != JwtAlgorithm::Hs256 && !records.iter().any(|r| r.state == "current");
        if !needs_current {
            return Ok(records);
        }
        // A key published ahead (`authd keys rotate` while on HS256) takes over first, the
        // verifiers already have it; but only one this KEK opens, else a new key is made.
        for stray in records
            .iter()
            .filter(|k| k.state == "next" && !opens_under(k, ring.kek()))
        {
            tracing::error!(kid = %stray.kid, "a next signing key does not open under keys.encryption_key: it is never activated (revoke it with authd keys revoke)");
        }
        match openable_next(&records, ring.kek()) {
            Some(next) => {
                let kid = next.kid.clone();
                if self.store.activate_signing_key(&kid, Utc::now()).await? {
                    tracing::info!(kid = %kid, "activated the next signing key: there was no current one");
                    self.audit
                        .record(SecurityEvent::new(EventKind::KeyActivated).detail(format!(
                            "{}: {kid} current, none retired",
                            Actor::Server.as_str()
                        )));
                }
            }
            None => {
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
            }
        }
        records = self.store.list_signing_keys().await?;
        Ok(records)
    }

    /// Puts the set `records` make in use, whatever else is wrong with it: a revoked key leaves
    /// verification and the JWKS at this read even when the current key cannot sign. A set
    /// that cannot sign makes the instance not ready (`/readyz` 503, the metric
    /// `authd_signing_key_usable` 0, an error in the log) and logins answer 503, never a 200
    /// beside 500s; the reason is returned.
    pub(super) fn install_keys(&self, records: &[SigningKeyRecord]) -> Result<Option<String>> {
        let sign_in = self.sign_in()?;
        let ring = &sign_in.ring;
        let set = KeySet::from_records(records, &ring.material(), Utc::now())?;
        let unusable = set.unusable().map(str::to_owned);
        match &unusable {
            Some(reason) => {
                tracing::error!(reason = %reason, "this instance cannot sign tokens: not ready until the signing keys are fixed");
            }
            None if !self.metrics.signing_is_usable() && self.keys_loaded() => {
                tracing::info!("the signing keys are usable again");
            }
            None => {}
        }
        self.metrics.signing_usable(unusable.is_none());
        sign_in.tokens.install(set);
        ring.last_read_ms
            .store(Utc::now().timestamp_millis(), Ordering::Relaxed);
        Ok(unusable)
    }

    /// Whether the keys in use were read longer ago than two `keys.refresh_secs` (every read
    /// since failed, while the database may still answer): the set may hold a key revoked
    /// meanwhile, so the instance is not ready (it still refuses such tokens itself, since
    /// every request reads its key's state).
    pub(super) fn keys_stale(&self) -> bool {
        let Some(sign_in) = self.sign_in.as_ref() else {
            return false;
        };
        let ring = &sign_in.ring;
        let limit = i64::try_from(ring.refresh_secs.saturating_mul(2_000)).unwrap_or(i64::MAX);
        self.keys_loaded()
            && Utc::now()
                .timestamp_millis()
                .saturating_sub(ring.last_read_ms.load(Ordering::Relaxed))
                > limit.saturating_add(1_000)
    }

    /// Why this instance cannot sign now; None when it can.
    pub fn signing_problem(&self) -> Option<String> {
        let sign_in = self.sign_in.as_ref()?;
        if !self.keys_loaded() {
            return None;
        }
        sign_in.tokens.key_set().unusable().map(str::to_owned)
    }

    /// Whether the keys were read at least once: until then the key refresher retries every
    /// second, and token operations answer 503 instead of refusing tokens they cannot judge.
    pub fn keys_loaded(&self) -> bool {
        self.sign_in
            .as_ref()
            .is_some_and(|s| s.ring.last_read_ms.load(Ordering::Relaxed) > 0)
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

    /// Before anything a token is issued for changes state (a login's bcrypt and counters, a
    /// code's attempt, a refresh's rotation): the keys were read (else they are read now, and
    /// 503 while the database is away) and this instance can sign with them, else 503 and
    /// nothing is counted, used up or rotated.
    pub(super) async fn ensure_can_sign(&self) -> Result<()> {
        if !self.keys_loaded() && !self.reload_on_demand("not_loaded").await? {
            return Err(Error::Unavailable("database"));
        }
        self.keys_not_loaded()?;
        match self.signing_problem() {
            None => Ok(()),
            Some(_) => Err(Error::Unavailable("signing key")),
        }
    }

    /// The `kid` this instance signs with now (None with HS256).
    pub(super) fn signer_kid(&self) -> Result<Option<String>> {
        Ok(self
            .sign_in()?
            .tokens
            .key_set()
            .signing_kid()
            .map(str::to_owned))
    }

    /// The key this instance signs with is no longer current (revoked or retired by an admin
    /// command or another instance): reads the keys again, so the new current key signs.
    pub(super) async fn signer_changed(&self, kid: &str, state: Option<&str>) -> Result<()> {
        tracing::info!(kid, state = ?state, "the signing key is no longer current: reading the keys again");
        self.reload_keys_for("signer_changed").await
    }

    /// Before a login's token is issued: whether the key about to sign it was revoked
    /// meanwhile; if so the new current key signs. (Refreshes read the same in the statement
    /// that reads their session.)
    pub(super) async fn check_signer(&self) -> Result<()> {
        self.ensure_can_sign().await?;
        let Some(kid) = self.signer_kid()? else {
            return Ok(());
        };
        let state = self.store.signing_key_state(&kid).await?;
        if state.as_deref() != Some("current") {
            self.signer_changed(&kid, state.as_deref()).await?;
            // The key that took over may be one this instance cannot sign with.
            self.ensure_can_sign().await?;
        }
        Ok(())
    }

    /// Reads the keys again unless that was done less than a second ago; whether it did. A
    /// database that does not answer is an error (503), anything else is logged and counts as
    /// not done.
    pub(super) async fn reload_on_demand(&self, reason: &'static str) -> Result<bool> {
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

    /// Refuses a key-encryption key that is not the servers' (see [`settle_kek`]).
    pub(super) async fn check_kek(&self, kek: &[u8; 32]) -> Result<()> {
        settle_kek(&self.store, kek, KekWitness::Command).await
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

    /// Promotes the oldest `next` key that `kek` opens to `current` and retires the current one
    /// (`authd keys rotate --activate`). A `next` key the KEK does not open is never promoted:
    /// the servers could not sign with it. With `wait`, a key published less than that long
    /// ago is not promoted yet (verifiers may not have fetched it).
    pub async fn activate_next_key(
        &self,
        kek: &[u8; 32],
        wait: Option<chrono::Duration>,
        actor: Actor,
    ) -> Result<Activation> {
        self.check_kek(kek).await?;
        for _ in 0..CHANGED_RETRIES {
            let before = self.store.list_signing_keys().await?;
            let Some(next) = openable_next(&before, kek) else {
                return Ok(Activation::NoNextKey);
            };
            let now = Utc::now();
            if let Some(wait) = wait
                && next.created_at + wait > now
            {
                return Ok(Activation::TooSoon {
                    kid: next.kid.clone(),
                    left_secs: (next.created_at + wait - now).num_seconds().max(1),
                });
            }
            let kid = next.kid.clone();
            if !self.store.activate_signing_key(&kid, now).await? {
                continue;
            }
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
            return Ok(Activation::Done(Activated { kid, retired }));
        }
        Err(kept_changing())
    }

    /// Revokes a key (`authd keys revoke`): never accepted again, here at once (every request
    /// reads the key's state with its session) and by other services once their JWKS copy is
    /// renewed. A revoked current key is followed, in the same transaction, by the oldest
    /// `next` key that `kek` opens, else by a new key sealed under `kek`: so revoking the
    /// current key needs the servers' KEK, and refuses (changing nothing) without it. Any other
    /// key is revoked without the KEK. None: no such key.
    pub async fn revoke_key(
        &self,
        kid: &str,
        kek: Option<&[u8; 32]>,
        algorithm: KeyAlgorithm,
        actor: Actor,
    ) -> Result<Option<RevokedKey>> {
        let mut checked = false;
        let mut fresh: Option<NewSigningKey> = None;
        for _ in 0..CHANGED_RETRIES {
            let keys = self.store.list_signing_keys().await?;
            let is_current = keys.iter().any(|k| k.kid == kid && k.state == "current");
            let successor = if is_current {
                let kek = kek.ok_or_else(|| {
                    Error::validation(
                        "keys.encryption_key",
                        "revoking the current key needs keys.encryption_key (AUTHD_KEYS__ENCRYPTION_KEY), the servers' key-encryption key: a key it opens must take over",
                    )
                })?;
                if !checked {
                    self.check_kek(kek).await?;
                    checked = true;
                }
                match openable_next(&keys, kek) {
                    Some(next) => Some(Successor::Next(&next.kid)),
                    None => {
                        if fresh.is_none() {
                            fresh = Some(
                                new_signing_key(kek, algorithm, KeyState::Current, Utc::now())
                                    .map_err(internal)?,
                            );
                        }
                        fresh.as_ref().map(Successor::New)
                    }
                }
            } else {
                None
            };
            let revoked = match self
                .store
                .revoke_signing_key(kid, Utc::now(), successor)
                .await?
            {
                Revocation::NoSuchKey => return Ok(None),
                // The key became current, or the chosen successor changed: read again.
                Revocation::NeedsSuccessor | Revocation::Changed => continue,
                Revocation::Done(revoked) => revoked,
            };
            if revoked.previous_state != "revoked" {
                tracing::warn!(kid, successor = ?revoked.successor, "revoked a signing key");
                let successor = revoked
                    .successor
                    .as_deref()
                    .map(|s| format!(", {s} current"))
                    .unwrap_or_default();
                self.record_admin_change(SecurityEvent::new(EventKind::KeyRevoked).detail(
                    format!(
                        "{}: {kid} (was {}){successor}",
                        actor.as_str(),
                        revoked.previous_state
                    ),
                ))
                .await?;
            }
            return Ok(Some(revoked));
        }
        Err(kept_changing())
    }
}

/// How often a key change is tried again when another change got in between.
const CHANGED_RETRIES: usize = 5;

fn kept_changing() -> Error {
    Error::Internal(anyhow::anyhow!(
        "the signing keys kept changing while this change was being made"
    ))
}

/// The oldest `next` key that `kek` opens: the only kind of key ever promoted.
fn openable_next<'a>(keys: &'a [SigningKeyRecord], kek: &[u8; 32]) -> Option<&'a SigningKeyRecord> {
    keys.iter()
        .find(|k| k.state == "next" && opens_under(k, kek))
}

/// Who compares a KEK with the database's check value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekWitness {
    /// A server, or `authd migrate` with a KEK: records the check value when there is none.
    Server,
    /// An admin command: never records one on a database that has no current key to vouch for
    /// its KEK, since a key sealed under a KEK of the command's own would not open on the
    /// servers.
    Command,
}

/// Compares `kek` with the check value recorded in the database (see
/// [`crate::keys::kek_check_value`]), in constant time. Where none is recorded yet (a new
/// database, or one from before the check value), it is recorded now when the current key, if
/// there is one, opens under `kek` and `witness` may record; an admin command on a database
/// with no check value and no current key is refused, since nothing can tell it its KEK is
/// the servers'. A wrong KEK is a validation error naming `keys.encryption_key`.
pub async fn settle_kek(store: &Store, kek: &[u8; 32], witness: KekWitness) -> Result<()> {
    let mine = kek_check_value(kek);
    let recorded = match store.kek_check_value().await? {
        Some(recorded) => recorded,
        None => {
            let keys = store.list_signing_keys().await?;
            let live: Vec<&SigningKeyRecord> =
                keys.iter().filter(|k| k.state != "revoked").collect();
            match live.iter().find(|k| k.state == "current") {
                // A database from before the check value: the key that signs tells which KEK
                // the servers use.
                Some(current) if !opens_under(current, kek) => {
                    return Err(wrong_kek(&format!(
                        "it does not open the current signing key {}",
                        current.kid
                    )));
                }
                Some(_) => {}
                None if witness == KekWitness::Command => {
                    return Err(Error::validation(
                        "keys.encryption_key",
                        "this database has no key-encryption key check value yet, so this command cannot tell whether its keys.encryption_key is the servers': start a server once, or run `authd migrate` with the servers' keys.encryption_key, then run this again",
                    ));
                }
                // Keys but none current (made ahead on HS256): a server records its KEK only
                // if it opens one of them, so a KEK made up on the spot (a zero-setup start
                // beside keys made elsewhere) does not take the database over.
                None if !live.is_empty() && !live.iter().any(|k| opens_under(k, kek)) => {
                    return Err(wrong_kek(
                        "it opens none of the stored signing keys; revoke those that are not the servers' with `authd keys revoke KID`",
                    ));
                }
                None => {}
            }
            store.record_kek_check_value(&mine, Utc::now()).await?
        }
    };
    if bool::from(subtle::ConstantTimeEq::ct_eq(
        recorded.as_slice(),
        mine.as_slice(),
    )) {
        Ok(())
    } else {
        Err(wrong_kek(
            "its check value differs from the one recorded in the database",
        ))
    }
}

fn wrong_kek(why: &str) -> Error {
    Error::validation(
        "keys.encryption_key",
        format!(
            "it is not the key-encryption key of this database's signing keys ({why}): use the servers' keys.encryption_key (AUTHD_KEYS__ENCRYPTION_KEY)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration};

    use super::*;
    use crate::keys::new_signing_key;

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
