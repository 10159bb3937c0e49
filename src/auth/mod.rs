//! The use cases: register, log in, exchange a code, read and manage users, prune. Every door
//! calls these methods of one `Auth`, built by `crate::app`.
//!
//! One file per use case, each adding its methods to `Auth`: `register`, `login` (the password
//! step), `challenge` (the second step), `sessions`, `recovery` (proving the address, password
//! reset and change, email change), `admin`, `keys`, `maintenance`. This file
//! holds `Auth` itself, how it is built, and the small helpers the use cases share.

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::audit::AuditLog;
use crate::config::{RateLimitSettings, SessionSettings, Settings, VerificationSettings};
use crate::domain::Email;
use crate::error::{Error, Result};
use crate::keys::{KeySet, SigningSecret};
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::password::PasswordHasher;
use crate::store::Store;
use crate::token::TokenKeys;
use crate::token::codes::CodeHasher;
use crate::token::refresh::RefreshKeys;
use std::net::{IpAddr, Ipv6Addr};

mod admin;
mod challenge;
mod keys;
mod login;
mod maintenance;
mod mfa;
mod passkeys;
mod recovery;
mod register;
mod sessions;
mod transfer;

pub use challenge::{CodeEmailQuota, SecondStepAnswer};
pub use keys::{Activated, Activation, KekWitness, key_algorithm, settle_kek};
pub use login::{Challenge, LoginOutcome};
pub use mfa::{ENROLMENT_TTL_SECS, Enrolment, MfaSummary, RECOVERY_CODES, TotpProof};
pub use passkeys::{
    CEREMONY_TTL_SECS, CeremonyOptions, MAX_PASSKEYS_PER_USER, PasskeySummary, RelyingParty,
};
pub use recovery::{ChangeProof, MAX_CODE_ATTEMPTS, MailOutcome, Proof};
pub use register::{Registration, RegistrationInput};
pub use sessions::{LogoutScope, OwnSession, SessionTokens};
pub use transfer::{ImportOptions, ImportRow, Refusal};

/// The one entry into the core for every door: built once (see `crate::app`) and shared.
/// Its parts are private so that a door can only do what a method allows.
#[derive(Debug, Clone)]
pub struct Auth {
    store: Store,
    hasher: PasswordHasher,
    /// What logging someone in takes besides the store; absent in an `Auth` built with
    /// [`Auth::for_admin`].
    sign_in: Option<SignIn>,
    /// What emailing a code or link takes; in an `Auth` for the admin commands only after
    /// [`Auth::with_mailing`].
    mailing: Option<Mailing>,
    max_attempts: u32,
    limits: RateLimitSettings,
    code_emails: CodeEmailQuota,
    /// Security events older than this many days are pruned.
    retention_days: u32,
    sessions: SessionSettings,
    verification: VerificationSettings,
    /// How long a password-reset code and link work.
    reset_ttl_secs: u64,
    /// `registration.require_verified_email`.
    require_verified_email: bool,
    /// `mail.product_name`: the issuer an authenticator app shows.
    product_name: String,
    /// The key-encryption key an admin command was given (`Auth::with_kek`); the server's is
    /// in its key ring.
    admin_kek: Option<AdminKek>,
    /// The WebAuthn relying party; absent when no domain is configured (passkeys off) and in
    /// an `Auth` for the admin commands.
    passkeys: Option<std::sync::Arc<passkeys::RelyingParty>>,
    /// A retired signing key is dropped this long after it retired.
    key_horizon_secs: u64,
    audit: AuditLog,
    metrics: Metrics,
}

/// A key-encryption key handed to an admin command; never printed.
#[derive(Clone)]
struct AdminKek(std::sync::Arc<[u8; 32]>);

impl std::ops::Deref for AdminKek {
    type Target = [u8; 32];

    fn deref(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for AdminKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKek(..)")
    }
}

/// The signing keys: needed to log someone in, by no administrative use case.
#[derive(Debug, Clone)]
struct SignIn {
    tokens: TokenKeys,
    refresh: RefreshKeys,
    ring: keys::KeyRing,
}

/// The mailer and the key of the emailed codes' hashes, and the bound on account emails being
/// prepared in the background at once.
#[derive(Debug, Clone)]
struct Mailing {
    mailer: Mailer,
    codes: CodeHasher,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Account emails (verification, reset, notices) prepared and sent in the background at once;
/// past it a request's email is dropped (counted, logged) and the request answers as usual.
const MAX_MAILS_IN_FLIGHT: usize = 64;

impl Mailing {
    fn new(settings: &Settings, kek: &[u8; 32]) -> anyhow::Result<Mailing> {
        Ok(Mailing {
            mailer: Mailer::from_settings(settings).context("invalid mail settings")?,
            codes: CodeHasher::from_kek(kek),
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_MAILS_IN_FLIGHT)),
        })
    }
}

/// Who is asking, as far as the door knows.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
    /// The `User-Agent` the client sent, as `Client::user_agent` cleans it.
    pub user_agent: Option<String>,
}

/// Most characters of a user agent a session keeps.
pub const MAX_USER_AGENT_CHARS: usize = 256;

impl Client {
    /// A user agent as a session keeps it: control characters dropped, at most
    /// [`MAX_USER_AGENT_CHARS`], none when nothing is left.
    pub fn user_agent(raw: &str) -> Option<String> {
        let cleaned: String = raw
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_USER_AGENT_CHARS)
            .collect();
        let cleaned = cleaned.trim();
        (!cleaned.is_empty()).then(|| cleaned.to_owned())
    }
}

/// The key every per-address limit counts a client under: an IPv4 address as it is (an
/// IPv4-mapped IPv6 address as its IPv4), an IPv6 address by its first `ipv6_prefix_len` bits,
/// since one client usually holds a whole /64 and could otherwise take a fresh allowance per
/// address.
pub fn client_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let len = u32::from(ipv6_prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

fn login_key(email: &Email) -> String {
    format!("login:{email}")
}

fn otp_key(user_id: Uuid) -> String {
    format!("otp:{user_id}")
}

fn mail_key(user_id: Uuid) -> String {
    format!("mail:{user_id}")
}

fn micros_of(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// Who made an administrative change, as the audit trail records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// The admin command line.
    Cli,
    /// The server itself (its first start making a signing key).
    Server,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Cli => "by cli",
            Actor::Server => "by server",
        }
    }
}

/// Whole seconds from now until `until`, rounded up (a client that waits them finds it over).
fn seconds_until(until: chrono::DateTime<Utc>) -> u64 {
    let millis = u64::try_from((until - Utc::now()).num_milliseconds()).unwrap_or(0);
    millis.div_ceil(1000).max(1)
}

impl Auth {
    /// The core of the server: every use case, logging in included. `kek` is the
    /// key-encryption key; `hs256` the HS256 secret, if there is one (configured or generated).
    /// The signing keys are read from the store (a first start makes one) before it returns.
    pub async fn from_settings(
        settings: &Settings,
        store: Store,
        kek: [u8; 32],
        hs256: Option<&SigningSecret>,
        audit: AuditLog,
        metrics: Metrics,
    ) -> anyhow::Result<Auth> {
        let hasher = Auth::build_hasher(settings, &metrics).await?;
        let sign_in = SignIn {
            tokens: TokenKeys::with_set(
                KeySet::from_records(
                    &[],
                    &crate::keys::KeyMaterial {
                        kek: None,
                        hs256_secret: None,
                        algorithm: settings.jwt.algorithm,
                        retired_horizon_secs: 0,
                    },
                    Utc::now(),
                )?,
                &settings.jwt,
            ),
            refresh: RefreshKeys::from_kek(&kek, hs256.map(SigningSecret::bytes)),
            ring: keys::KeyRing::new(settings, kek, hs256.map(|s| s.secret.clone())),
        };
        let mut auth = Auth::new(settings, store, hasher, Some(sign_in), audit, metrics);
        auth.mailing = Some(Mailing::new(settings, &kek)?);
        auth.passkeys = passkeys::relying_party_of(settings)?;
        match auth.key_records().await {
            // A current key that does not open (or cannot sign) stops the start: it is a
            // misconfiguration to fix before serving, not an outage to wait out.
            Ok(records) => {
                if let Some(reason) = auth.install_keys(&records)? {
                    anyhow::bail!("cannot use the signing keys: {reason}");
                }
            }
            // So does a KEK that is not the one the database's keys are sealed under.
            // (A setting the server cannot run with: exit 2, like the production checks.)
            Err(err @ Error::Validation(_)) => {
                anyhow::bail!("cannot use the signing keys: {err}");
            }
            // The server starts without its database (down, or not migrated yet), as it always
            // has; readiness tells. The keys are read as soon as the database answers.
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the signing keys yet; retrying every second");
            }
        }
        Ok(auth)
    }

    /// The core of the admin commands: every use case but logging in. They issue no tokens and
    /// send no mail, so they run without the signing key and with any mail settings.
    pub async fn for_admin(
        settings: &Settings,
        store: Store,
        audit: AuditLog,
        metrics: Metrics,
    ) -> anyhow::Result<Auth> {
        let hasher = Auth::build_hasher(settings, &metrics).await?;
        Ok(Auth::new(settings, store, hasher, None, audit, metrics))
    }

    /// An `Auth` for the admin commands that also emails codes and links (`authd user
    /// reset-password --send-link`): the mailer, and the code key derived from `kek`, the
    /// key-encryption key the server uses, so that the server accepts what this one sends.
    /// An `Auth` for the admin commands that emails codes and links (`authd user
    /// reset-password --send-link`) and seals second-factor secrets (`authd user
    /// totp-enroll`) like the server: the mailer, the servers' key-encryption key (a KEK that
    /// is not the database's is refused: its codes would not be the server's) and the code key
    /// derived from it.
    pub async fn with_kek(mut self, settings: &Settings, kek: &[u8; 32]) -> Result<Auth> {
        self.check_kek(kek).await?;
        self.admin_kek = Some(AdminKek(std::sync::Arc::new(*kek)));
        if self.mailing.is_none() {
            self.mailing = Some(Mailing::new(settings, kek)?);
        }
        Ok(self)
    }

    async fn build_hasher(
        settings: &Settings,
        metrics: &Metrics,
    ) -> anyhow::Result<PasswordHasher> {
        Ok(PasswordHasher::from_settings(&settings.password)
            .await?
            .with_metrics(metrics.clone()))
    }

    fn new(
        settings: &Settings,
        store: Store,
        hasher: PasswordHasher,
        sign_in: Option<SignIn>,
        audit: AuditLog,
        metrics: Metrics,
    ) -> Auth {
        Auth {
            limits: settings.rate_limit.clone(),
            code_emails: CodeEmailQuota {
                max_per_account: settings.mail.max_codes_per_account,
                window_secs: settings.mail.codes_window_secs,
            },
            retention_days: settings.audit.retention_days,
            sessions: settings.session.clone(),
            verification: settings.verification.clone(),
            reset_ttl_secs: settings.password.reset_ttl_secs,
            require_verified_email: settings.registration.require_verified_email,
            product_name: settings.mail.product_name.trim().to_owned(),
            admin_kek: None,
            passkeys: None,
            mailing: None,
            key_horizon_secs: TokenKeys::retired_horizon_secs(settings),
            audit,
            metrics,
            store,
            hasher,
            sign_in,
            max_attempts: settings.otp.max_attempts,
        }
    }

    /// The parts a login needs; an `Auth` for the admin commands has none.
    fn sign_in(&self) -> Result<&SignIn> {
        self.sign_in.as_ref().ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "this Auth was built for the admin commands: it logs no one in"
            ))
        })
    }

    /// The mailer and the code key; an `Auth` for the admin commands has them only after
    /// [`Auth::with_mailing`].
    fn mailing(&self) -> Result<&Mailing> {
        self.mailing.as_ref().ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "this Auth was built without a mailer: it emails nothing"
            ))
        })
    }

    /// The user with this address, or `UserNotFound` (what every admin command on a user
    /// starts with).
    async fn user_by_email(&self, email: &Email) -> Result<crate::domain::User> {
        self.store
            .find_user_by_email(email)
            .await?
            .ok_or(Error::UserNotFound)
    }

    /// Where the use cases count what they do; the HTTP door adds its request figures.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics in the Prometheus text format, with the database pool's figures.
    pub fn render_metrics(&self) -> String {
        self.metrics.render(self.store.pool_usage())
    }

    /// `Ok` when the database answers.
    pub async fn ready(&self) -> Result<()> {
        // A server that could not read its signing keys yet cannot log anyone in.
        if self.sign_in.is_some() && !self.keys_loaded() {
            return Err(Error::Unavailable("database"));
        }
        // Nor can one whose key set cannot sign (the reason is in the log and the metric).
        if self.signing_problem().is_some() {
            return Err(Error::Unavailable("signing key"));
        }
        // Nor one whose keys could not be read for two refresh periods (tried once more now,
        // so readiness comes back as soon as a read does).
        if self.keys_stale() && !self.reload_on_demand("stale").await? {
            tracing::warn!(
                "not ready: the signing keys could not be read for two keys.refresh_secs"
            );
            return Err(Error::Unavailable("signing key"));
        }
        self.store.ping().await
    }
}
