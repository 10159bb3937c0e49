//! The use cases: register, log in, exchange a code, read and manage users, prune. Every door
//! calls these methods of one `Auth`, built by `crate::app`.

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::audit::{AuditLog, EventKind, EventQuery, RecordedEvent, SecurityEvent};
use crate::config::{RateLimitSettings, SessionSettings, Settings};
use crate::domain::{Email, Otp, Password, PersonName, User};
use crate::error::{Error, FieldError, Result};
use crate::keys::SigningSecret;
use crate::keyset::KeySet;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::otp::{CodeHasher, generate_code};
use crate::password::PasswordHasher;
use crate::session::{Presented, RefreshKeys, new_family};
use crate::store::{
    Attempt, Credentials, NewChallenge, NewSession, NewUser, Pruned, Reservation, SessionInfo,
    Store, ThrottleRule, UserListing, UserQuery,
};
use crate::token::{IssuedToken, Subject, TokenError, TokenKeys, TokenKind, Verified};
use std::net::IpAddr;

mod keys;
pub use keys::{Activated, Activation, KekWitness, key_algorithm, settle_kek};

/// Raw registration input as it arrives from any door, before parsing.
#[derive(Debug, Default, Clone)]
pub struct RegistrationInput {
    pub email: Option<String>,
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
}

/// A registration whose every field is valid.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub two_factor_enabled: bool,
}

impl Registration {
    /// Parses every field and reports all problems at once.
    pub fn parse(input: RegistrationInput) -> Result<Registration> {
        let mut errors = Vec::new();
        let email = required(&mut errors, "email", input.email.as_deref(), Email::parse);
        let password = required(
            &mut errors,
            "password",
            input.password.as_deref(),
            Password::parse,
        );
        let first_name = field(
            &mut errors,
            "first_name",
            PersonName::parse_optional(input.first_name.as_deref()),
        );
        let last_name = field(
            &mut errors,
            "last_name",
            PersonName::parse_optional(input.last_name.as_deref()),
        );
        match (email, password, first_name, last_name) {
            (Some(email), Some(password), Some(first_name), Some(last_name))
                if errors.is_empty() =>
            {
                Ok(Registration {
                    email,
                    password,
                    first_name,
                    last_name,
                    two_factor_enabled: input.two_factor_enabled,
                })
            }
            _ => Err(Error::Validation(errors)),
        }
    }
}

fn required<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match raw {
        None => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(raw) => field(errors, name, parse(raw)),
    }
}

fn field<T>(errors: &mut Vec<FieldError>, name: &str, parsed: Result<T, String>) -> Option<T> {
    parsed
        .map_err(|message| errors.push(FieldError::new(name, message)))
        .ok()
}

impl Registration {
    /// What the password must not be made of: the email, its local part and the names.
    fn personal_words(&self) -> Vec<String> {
        let email = self.email.as_str();
        let local_part = email.split('@').next().unwrap_or_default();
        let mut words = vec![email.to_owned(), local_part.to_owned()];
        words.extend(
            [&self.first_name, &self.last_name]
                .into_iter()
                .flatten()
                .map(|name| name.as_str().to_owned()),
        );
        words
    }
}

/// What a correct password leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// No second step: a session is open, here are its tokens.
    Access(SessionTokens),
    /// A code was emailed; this token lets the client submit it.
    Challenge(IssuedToken),
}

/// What a login or a refresh hands out: an access token of the session and its refresh token.
#[derive(Debug)]
pub struct SessionTokens {
    pub access: IssuedToken,
    pub refresh_token: String,
    /// Seconds until the refresh token dies unless used (never past the session's end).
    pub refresh_expires_in: u64,
}

/// Which sessions `POST /logout` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogoutScope {
    /// The session of the access token.
    #[default]
    Current,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    All,
}

impl LogoutScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutScope::Current => "current",
            LogoutScope::Others => "others",
            LogoutScope::All => "all",
        }
    }
}

/// A session as its own user sees it in `GET /sessions`.
#[derive(Debug, Clone)]
pub struct OwnSession {
    pub session: SessionInfo,
    /// The session of the access token that asked.
    pub current: bool,
}

/// The one entry into the core for every door: built once (see `crate::app`) and shared.
/// Its parts are private so that a door can only do what a method allows.
#[derive(Debug, Clone)]
pub struct Auth {
    store: Store,
    hasher: PasswordHasher,
    /// What logging someone in takes besides the store; absent in an `Auth` built with
    /// [`Auth::for_admin`].
    sign_in: Option<SignIn>,
    max_attempts: u32,
    limits: RateLimitSettings,
    code_emails: CodeEmailQuota,
    /// Security events older than this many days are pruned.
    retention_days: u32,
    sessions: SessionSettings,
    /// A retired signing key is dropped this long after it retired.
    key_horizon_secs: u64,
    audit: AuditLog,
    metrics: Metrics,
}

/// The signing keys, the code hasher and the mailer: needed to log someone in, by no
/// administrative use case.
#[derive(Debug, Clone)]
struct SignIn {
    tokens: TokenKeys,
    codes: CodeHasher,
    refresh: RefreshKeys,
    mailer: Mailer,
    ring: keys::KeyRing,
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

fn login_key(email: &Email) -> String {
    format!("login:{email}")
}

fn otp_key(user_id: Uuid) -> String {
    format!("otp:{user_id}")
}

fn mail_key(user_id: Uuid) -> String {
    format!("mail:{user_id}")
}

/// A `ThrottleRule::every` that no count reaches.
const NEVER: u32 = i32::MAX as u32;

/// The longest a password lock lasts, however many came before it.
const MAX_LOCK_SECS: u64 = 24 * 60 * 60;

fn micros_of(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

fn invalid_refresh() -> Error {
    Error::InvalidToken(
        "this refresh token is unknown, expired, revoked or already used: log in again",
    )
}

fn dead_session() -> Error {
    Error::InvalidToken(
        "this access token's session has ended, or its signing key was revoked: log in again",
    )
}

fn dead_challenge() -> Error {
    Error::InvalidToken("this login challenge is used, expired or out of attempts: log in again")
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

/// The code-email quota of one account.
#[derive(Debug, Clone, Copy)]
pub struct CodeEmailQuota {
    pub max_per_account: u32,
    pub window_secs: u64,
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
                    &crate::keyset::KeyMaterial {
                        kek: None,
                        hs256_secret: None,
                        algorithm: settings.jwt.algorithm,
                        retired_horizon_secs: 0,
                    },
                    Utc::now(),
                )?,
                &settings.jwt,
            ),
            codes: CodeHasher::from_kek(&kek),
            refresh: RefreshKeys::from_kek(&kek, hs256.map(SigningSecret::bytes)),
            mailer: Mailer::from_settings(settings).context("invalid mail settings")?,
            ring: keys::KeyRing::new(settings, kek, hs256.map(|s| s.secret.clone())),
        };
        let auth = Auth::new(settings, store, hasher, Some(sign_in), audit, metrics);
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
        self.store.ping().await
    }

    /// Creates a user (`POST /register`) and records it in the audit trail.
    pub async fn register(&self, registration: Registration, client: Client) -> Result<User> {
        let user = self.create_user(registration).await?;
        self.audit.record(
            SecurityEvent::new(EventKind::UserRegistered)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        Ok(user)
    }

    /// Creates a user for an administrator (`authd user add`), with the same rules as
    /// [`Auth::register`], and records it in the audit trail.
    pub async fn add_user(&self, registration: Registration) -> Result<User> {
        let user = self.create_user(registration).await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::UserAddedByAdmin).user(user.id, &user.email),
        )
        .await?;
        Ok(user)
    }

    /// The one path to a new user, whichever door asks. The password policy, whose cost grows
    /// with the password, runs on the hashing pool like bcrypt: never on an async worker, and
    /// refused with 503 when the pool is full.
    async fn create_user(&self, registration: Registration) -> Result<User> {
        let words = registration.personal_words();
        if let Err(message) = self
            .hasher
            .check_policy(&registration.password, words)
            .await?
        {
            return Err(Error::validation("password", message));
        }
        let password_hash = self.hasher.hash(&registration.password).await?;
        let user = self
            .store
            .insert_user(NewUser {
                id: Uuid::now_v7(),
                email: registration.email.as_str().to_owned(),
                password_hash,
                first_name: registration.first_name.map(PersonName::into_string),
                last_name: registration.last_name.map(PersonName::into_string),
                two_factor_enabled: registration.two_factor_enabled,
                created_at: Utc::now(),
            })
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(user)
    }

    /// Records an administrative change before the use case answers, unlike the events of the
    /// request path, which are queued: the administrator learns it if the trail misses one.
    async fn record_admin_change(&self, event: SecurityEvent) -> Result<()> {
        self.store.insert_events(&[event]).await
    }

    /// Users, oldest first, filtered as `query` says, with their state and live sessions.
    pub async fn list_users(&self, query: &UserQuery) -> Result<Vec<UserListing>> {
        self.store.list_users(query, Utc::now()).await
    }

    /// Switches the second step on or off; takes effect at the user's next login, and ends
    /// every session the user has (they were opened under the other rule).
    pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<User> {
        let user = self
            .store
            .set_two_factor(email, enabled)
            .await?
            .ok_or(Error::UserNotFound)?;
        let ended = self
            .store
            .revoke_user_sessions(user.id, None, Utc::now())
            .await?;
        tracing::info!(user_id = %user.id, enabled, ended, "two-factor setting changed");
        let state = if enabled { "on" } else { "off" };
        self.record_admin_change(
            SecurityEvent::new(EventKind::TwoFactorChanged)
                .user(user.id, &user.email)
                .detail(format!(
                    "{state} {} ({ended} sessions ended)",
                    Actor::Cli.as_str()
                )),
        )
        .await?;
        Ok(user)
    }

    /// Disables a user (`authd user disable`): every session ends at once, and a login fails
    /// as a wrong password would.
    pub async fn disable_user(&self, email: &Email, actor: Actor) -> Result<User> {
        let changed = self.store.set_disabled(email, true, Utc::now()).await;
        self.admin_change(changed, EventKind::UserDisabled, actor)
            .await
    }

    /// Lets a disabled user log in again; their ended sessions stay ended.
    pub async fn enable_user(&self, email: &Email, actor: Actor) -> Result<User> {
        let changed = self.store.set_disabled(email, false, Utc::now()).await;
        self.admin_change(changed, EventKind::UserEnabled, actor)
            .await
    }

    /// Deletes a user with their sessions and challenges; the audit trail keeps their events.
    pub async fn delete_user(&self, email: &Email, actor: Actor) -> Result<User> {
        // Its counters go with the account, so an address registered again starts clean.
        let user = self.find_user(email).await?;
        let counters = [login_key(email), otp_key(user.id), mail_key(user.id)];
        let changed = self.store.delete_user(email, &counters).await;
        self.admin_change(changed, EventKind::UserDeleted, actor)
            .await
    }

    /// The account an administrative change reached (none: no such user), recorded as `kind`.
    async fn admin_change(
        &self,
        changed: Result<Option<User>>,
        kind: EventKind,
        actor: Actor,
    ) -> Result<User> {
        let user = changed?.ok_or(Error::UserNotFound)?;
        tracing::info!(user_id = %user.id, change = kind.as_str(), "account changed");
        self.record_admin_change(
            SecurityEvent::new(kind)
                .user(user.id, &user.email)
                .detail(actor.as_str()),
        )
        .await?;
        Ok(user)
    }

    /// The user an email address names (for the admin commands).
    pub async fn find_user(&self, email: &Email) -> Result<User> {
        self.store
            .find_user_by_email(email)
            .await?
            .ok_or(Error::UserNotFound)
    }

    /// Live sessions, of one user or of everyone, newest first, at most `limit`.
    pub async fn list_sessions(&self, user: Option<&User>, limit: u32) -> Result<Vec<SessionInfo>> {
        self.store
            .list_sessions(user.map(|u| u.id), Utc::now(), limit)
            .await
    }

    /// Ends one live session (`authd session revoke ID`).
    pub async fn revoke_session(&self, id: Uuid, actor: Actor) -> Result<()> {
        let user_id = self
            .store
            .revoke_session(id, None, Utc::now())
            .await?
            .ok_or(Error::SessionNotFound)?;
        let mut event = SecurityEvent::new(EventKind::SessionRevoked)
            .detail(format!("{}: session {id}", actor.as_str()));
        match self.store.find_user(user_id).await? {
            Some(user) => event = event.user(user.id, &user.email),
            None => event.user_id = Some(user_id),
        }
        self.record_admin_change(event).await
    }

    /// Ends every live session of a user (`authd session revoke --user EMAIL`); how many.
    pub async fn revoke_user_sessions(&self, email: &Email, actor: Actor) -> Result<u64> {
        let user = self.find_user(email).await?;
        let ended = self
            .store
            .revoke_user_sessions(user.id, None, Utc::now())
            .await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::SessionRevoked)
                .user(user.id, &user.email)
                .detail(format!("{} ({ended} sessions)", actor.as_str())),
        )
        .await?;
        Ok(ended)
    }

    /// Clears the password and code locks of an account and records who did it. True when
    /// there was anything to clear.
    pub async fn unlock_user(&self, email: &Email, actor: Actor) -> Result<bool> {
        let user = self
            .store
            .find_credentials(email)
            .await?
            .ok_or(Error::UserNotFound)?
            .user;
        let login = self.store.clear_failures(&login_key(email)).await?;
        let otp = self.store.clear_failures(&otp_key(user.id)).await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::UserUnlocked)
                .user(user.id, &user.email)
                .detail(actor.as_str()),
        )
        .await?;
        tracing::info!(user_id = %user.id, "account unlocked");
        Ok(login || otp)
    }

    /// The audit trail, newest first.
    pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>> {
        self.store.list_events(query).await
    }

    /// One pruning pass: expired challenges, idle throttle rows, events past
    /// `audit.retention_days`. `wait`: on PostgreSQL, wait for another instance's pass to end
    /// instead of skipping (`None`) this one.
    pub async fn prune(&self, wait: bool) -> Result<Option<Pruned>> {
        let now = Utc::now();
        let events_before = now - chrono::Duration::days(i64::from(self.retention_days));
        let Some(mut pruned) = self.store.prune(now, events_before, wait).await? else {
            return Ok(None);
        };
        let horizon = i64::try_from(self.key_horizon_secs).unwrap_or(i64::MAX / 2);
        pruned.keys = self
            .store
            .delete_expired_retired_keys(now - chrono::Duration::seconds(horizon))
            .await?;
        Ok(Some(pruned))
    }

    /// Password guesses: every `login_failures_per_account` consecutive failures lock the
    /// account, each lock twice as long as the one before, up to a day.
    fn login_rule(&self) -> ThrottleRule {
        ThrottleRule {
            every: self.limits.login_failures_per_account,
            first_lock_micros: micros_of(self.limits.lockout_secs),
            max_lock_micros: micros_of(MAX_LOCK_SECS),
            hard_limit: None,
        }
    }

    /// Code guesses: after `otp_failures_per_account` consecutive wrong codes the second step
    /// stays locked until `authd user unlock`, so over the account's life at most that many
    /// of the 10^6 codes can be tried.
    fn otp_rule(&self) -> ThrottleRule {
        ThrottleRule {
            // No timed locks for codes, only the hard limit (so giving a reservation back
            // leaves no lock behind).
            every: NEVER,
            first_lock_micros: micros_of(self.limits.lockout_secs),
            max_lock_micros: micros_of(MAX_LOCK_SECS),
            hard_limit: Some(self.limits.otp_failures_per_account),
        }
    }

    /// Reserves one guess of `key` before the work it guards (see `Store::reserve_attempt`).
    /// `Ok(true)` when this guess, if it fails, is the one that locks the key.
    async fn reserve(&self, key: &str, rule: &ThrottleRule) -> Result<bool> {
        if !self.limits.enabled {
            return Ok(false);
        }
        let now = Utc::now();
        match self.store.reserve_attempt(key, rule, now).await? {
            Reservation::Granted { locked, .. } => Ok(locked),
            Reservation::Locked(until) => Err(Error::RateLimited {
                retry_after_secs: seconds_until(until),
            }),
            Reservation::Frozen => Err(Error::SecondFactorLocked),
        }
    }

    /// Refuses while `key` is locked, counting nothing.
    async fn ensure_not_locked(&self, key: &str, rule: &ThrottleRule) -> Result<()> {
        if !self.limits.enabled {
            return Ok(());
        }
        match self.store.throttle_state(key, rule, Utc::now()).await? {
            None | Some(Reservation::Granted { .. }) => Ok(()),
            Some(Reservation::Locked(until)) => Err(Error::RateLimited {
                retry_after_secs: seconds_until(until),
            }),
            Some(Reservation::Frozen) => Err(Error::SecondFactorLocked),
        }
    }

    async fn clear_failures(&self, key: &str) -> Result<()> {
        if self.limits.enabled {
            self.store.clear_failures(key).await?;
        }
        Ok(())
    }

    /// Takes one code email from the account's quota; 429 once it is used up.
    async fn take_code_email(&self, user_id: Uuid) -> Result<()> {
        if !self.limits.enabled {
            return Ok(());
        }
        let now = Utc::now();
        match self
            .store
            .take_quota(
                &mail_key(user_id),
                self.code_emails.max_per_account,
                micros_of(self.code_emails.window_secs),
                now,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(window_end) => Err(Error::RateLimited {
                retry_after_secs: seconds_until(window_end),
            }),
        }
    }

    /// Checks the password (at the configured bcrypt cost at least, hash or no hash, so an
    /// unknown email and an old, cheaper hash answer as late as a current one) and either
    /// issues an access token or starts a challenge.
    pub async fn login(&self, email: &str, password: &str, client: Client) -> Result<LoginOutcome> {
        let result = self
            .check_password_and_continue(email, password, client)
            .await;
        self.metrics.login(match &result {
            Ok(LoginOutcome::Access(_)) => "success",
            Ok(LoginOutcome::Challenge(_)) => "code_required",
            Err(Error::InvalidCredentials) => "invalid_credentials",
            Err(Error::RateLimited { .. }) => "throttled",
            Err(_) => "error",
        });
        result
    }

    async fn check_password_and_continue(
        &self,
        email: &str,
        password: &str,
        client: Client,
    ) -> Result<LoginOutcome> {
        let sign_in = self.sign_in()?;
        let email = Email::parse(email).ok();
        // The hashing place first: a login refused with 503 counts nothing.
        let slot = self.hasher.admit()?;
        let mut locks_if_wrong = false;
        if let Some(email) = &email {
            match self.reserve(&login_key(email), &self.login_rule()).await {
                Ok(locks) => locks_if_wrong = locks,
                Err(err) => {
                    self.audit.record(
                        SecurityEvent::new(EventKind::LoginThrottled)
                            .email(email.as_str())
                            .client(client.ip),
                    );
                    self.metrics.throttle("account");
                    return Err(err);
                }
            }
        }
        let credentials = match &email {
            Some(email) => self.store.find_credentials(email).await?,
            None => None,
        };
        let stored_hash = credentials.as_ref().map(|c| c.password_hash.as_str());
        let matched = self
            .hasher
            .verify_admitted(slot, password, stored_hash)
            .await?;
        let user = match credentials {
            Some(c) if matched && !c.disabled => {
                self.upgrade_hash(&c, password);
                c.user
            }
            known => {
                tracing::info!("login refused: invalid credentials");
                let mut event = SecurityEvent::new(EventKind::LoginFailed).client(client.ip);
                if known.as_ref().is_some_and(|c| c.disabled) {
                    event = event.detail("account disabled");
                }
                // Unknown addresses are counted too (by the reservation), so a lock says
                // nothing about existence.
                if let Some(email) = &email {
                    if locks_if_wrong {
                        event = event.detail("account locked");
                    }
                    event = event.email(email.as_str());
                }
                // The trail (never the client) says which account was tried, when there is one.
                if let Some(known) = known {
                    event.user_id = Some(known.user.id);
                }
                self.audit.record(event);
                return Err(Error::InvalidCredentials);
            }
        };
        if let Some(email) = &email {
            self.clear_failures(&login_key(email)).await?;
        }
        if !user.two_factor_enabled {
            tracing::info!(user_id = %user.id, "login succeeded");
            self.audit.record(
                SecurityEvent::new(EventKind::LoginSucceeded)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            let tokens = self
                .open_session(sign_in, user.id, &client, false, || {
                    Error::InvalidCredentials
                })
                .await?;
            return Ok(LoginOutcome::Access(tokens));
        }
        if let Err(err) = self
            .ensure_not_locked(&otp_key(user.id), &self.otp_rule())
            .await
        {
            self.audit.record(
                SecurityEvent::new(EventKind::CodeThrottled)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            self.metrics.throttle("code");
            return Err(err);
        }
        if let Err(err) = self.take_code_email(user.id).await {
            self.audit.record(
                SecurityEvent::new(EventKind::CodeEmailLimited)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            self.metrics.throttle("code_email");
            return Err(err);
        }
        let sent = self.start_challenge(sign_in, &user).await;
        let kind = if sent.is_ok() {
            self.metrics.code("sent");
            EventKind::CodeSent
        } else {
            self.metrics.code("send_failed");
            EventKind::CodeSendFailed
        };
        self.audit.record(
            SecurityEvent::new(kind)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        sent.map(LoginOutcome::Challenge)
    }

    /// After a successful login with a hash of another cost than `password.bcrypt_cost`, hashes
    /// the password again at that cost, in the background so the answer does not wait.
    fn upgrade_hash(&self, credentials: &Credentials, password: &str) {
        if !self.hasher.needs_rehash(&credentials.password_hash) {
            return;
        }
        let Ok(password) = Password::parse(password) else {
            return;
        };
        let (store, hasher) = (self.store.clone(), self.hasher.clone());
        let (id, old) = (credentials.user.id, credentials.password_hash.clone());
        tokio::spawn(async move {
            let upgraded = match hasher.hash(&password).await {
                Ok(new) => store.replace_password_hash(id, &old, &new).await,
                Err(err) => Err(err),
            };
            match upgraded {
                Ok(true) => {
                    tracing::info!(user_id = %id, cost = hasher.cost(), "password hash upgraded")
                }
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(user_id = %id, error = %err, "password hash not upgraded; next login tries again")
                }
            }
        });
    }

    /// Stores a hashed code, emails it, and only then retires older challenges and hands out
    /// the challenge token. If the mail fails the new challenge is deleted, and since its
    /// token was never issued nothing usable is left behind.
    async fn start_challenge(&self, sign_in: &SignIn, user: &User) -> Result<IssuedToken> {
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        // Time-ordered, so a challenge retires only the ones started before it: concurrent logins
        // of one user cannot retire each other's newest challenge.
        let id = Uuid::now_v7();
        let code = generate_code();
        let ttl = sign_in.tokens.ttl_secs(TokenKind::Challenge);
        let now = Utc::now();
        self.store
            .insert_challenge(&NewChallenge {
                id,
                user_id: user.id,
                code_hash: sign_in.codes.hash(id, code.as_str()),
                expires_at: now + chrono::Duration::seconds(ttl as i64),
                created_at: now,
            })
            .await?;
        if let Err(err) = sign_in.mailer.send_code(&email, &code, ttl).await {
            if let Err(cleanup) = self.store.delete_challenge(id).await {
                tracing::warn!(error = %cleanup, "could not delete undelivered challenge");
            }
            return Err(err);
        }
        self.store
            .retire_challenges_except(user.id, id, Utc::now())
            .await?;
        tracing::info!(user_id = %user.id, "login code sent");
        self.check_signer().await?;
        sign_in.tokens.issue(TokenKind::Challenge, user.id, id)
    }

    /// Exchanges a challenge token and the emailed code for an access token, at most once.
    pub async fn verify_otp(
        &self,
        challenge_token: &str,
        otp: &Otp,
        client: Client,
    ) -> Result<SessionTokens> {
        let sign_in = self.sign_in()?;
        let Verified { claims, kid } = self.verified(TokenKind::Challenge, challenge_token).await?;
        // A key revoked on another instance is refused at once here too.
        if let Some(kid) = kid
            && self.store.signing_key_state(&kid).await?.as_deref() == Some("revoked")
        {
            return Err(TokenError::RevokedKey.into());
        }
        let key = otp_key(claims.sub);
        let event = |kind| {
            let mut event = SecurityEvent::new(kind).client(client.ip);
            event.user_id = Some(claims.sub);
            event
        };
        // A dead challenge is refused before anything is reserved: it is not a guess.
        if !self
            .store
            .challenge_is_open(claims.jti, claims.sub, self.max_attempts, Utc::now())
            .await?
        {
            return Err(dead_challenge());
        }
        let locks_if_wrong = match self.reserve(&key, &self.otp_rule()).await {
            Ok(locks) => locks,
            Err(err) => {
                self.audit.record(event(EventKind::CodeThrottled));
                self.metrics.throttle("code");
                return Err(err);
            }
        };
        let hash = sign_in.codes.hash_otp(claims.jti, otp);
        match self
            .store
            .attempt_challenge(claims.jti, claims.sub, &hash, self.max_attempts, Utc::now())
            .await?
        {
            Attempt::Accepted => {
                tracing::info!(user_id = %claims.sub, "second step succeeded");
                self.clear_failures(&key).await?;
                self.audit.record(event(EventKind::CodeAccepted));
                self.metrics.code("accepted");
                self.open_session(sign_in, claims.sub, &client, true, dead_challenge)
                    .await
            }
            Attempt::Rejected { remaining } => {
                tracing::info!(user_id = %claims.sub, remaining, "wrong code");
                self.metrics.code("rejected");
                self.audit.record(event(EventKind::CodeRejected));
                if locks_if_wrong {
                    tracing::warn!(user_id = %claims.sub, "second step locked until an admin unlocks it");
                    self.audit.record(event(EventKind::SecondFactorLocked));
                }
                Err(Error::InvalidOtp { remaining })
            }
            Attempt::Dead => {
                // It died since the check above: not a guess at a live code, so the reserved
                // attempt is given back.
                if self.limits.enabled {
                    self.store.release_attempt(&key).await?;
                }
                Err(dead_challenge())
            }
        }
    }

    /// The user an access token belongs to.
    /// The user of a valid access token whose session is live, in one query of the user and
    /// the session: a revoked or expired session, or a disabled or deleted user, is refused at
    /// the token's next use on every instance.
    pub async fn current_user(&self, access_token: &str) -> Result<User> {
        Ok(self.authenticate(access_token).await?.0)
    }

    async fn authenticate(&self, access_token: &str) -> Result<(User, Uuid)> {
        let Subject { user, session, kid } = self.access_subject(access_token).await?;
        // Tokens issued before sessions existed carry no `sid`: they belong to no session.
        let session = session.ok_or_else(dead_session)?;
        // The same query sees a revoked signing key: refused here at once, whichever instance
        // revoked it.
        let user = self
            .store
            .find_session_user(user, session, kid.as_deref(), Utc::now())
            .await?
            .ok_or_else(dead_session)?;
        Ok((user, session))
    }

    /// Opens a session for a user who just proved who they are, and hands out its tokens.
    /// `refused` is the answer when the user may no longer have one (disabled, deleted, or
    /// switched to two steps while a password-only login was on its way).
    async fn open_session(
        &self,
        sign_in: &SignIn,
        user_id: Uuid,
        client: &Client,
        after_second_step: bool,
        refused: fn() -> Error,
    ) -> Result<SessionTokens> {
        self.check_signer().await?;
        let now = Utc::now();
        let id = Uuid::now_v7();
        let family = new_family();
        let (refresh_token, refresh_hash) = sign_in.refresh.token(&family, 0);
        let expires_at = now + seconds(self.sessions.refresh_ttl_secs);
        let absolute_expires_at = now + seconds(self.sessions.absolute_ttl_secs);
        let ended = self
            .store
            .insert_session(
                &NewSession {
                    id,
                    user_id,
                    family: family.to_vec(),
                    refresh_hash: refresh_hash.to_vec(),
                    created_at: now,
                    expires_at,
                    absolute_expires_at,
                    client_ip: client.ip.map(|ip| ip.to_string()),
                    user_agent: client.user_agent.clone(),
                    after_second_step,
                },
                self.sessions.max_per_user,
            )
            .await?
            .ok_or_else(refused)?;
        if ended > 0 {
            tracing::info!(%user_id, ended, "oldest sessions ended: session.max_per_user reached");
        }
        Ok(SessionTokens {
            access: sign_in.tokens.issue_access(user_id, id)?,
            refresh_token,
            refresh_expires_in: seconds_between(now, expires_at.min(absolute_expires_at)),
        })
    }

    /// Exchanges a refresh token for a new access token and the chain's next refresh token
    /// (`POST /token/refresh`). Of parallel refreshes of one token exactly one rotates; the
    /// others, and a client that lost the answer, get the session's current tokens while their
    /// token's rotation is younger than `session.reuse_grace_secs` (the last two rotations are
    /// remembered). An older token of the chain is reuse: the session is revoked, every token
    /// descended from it with it. A token this server did not issue changes nothing.
    pub async fn refresh(&self, refresh_token: &str, client: Client) -> Result<SessionTokens> {
        let sign_in = self.sign_in()?;
        let presented = Presented::parse(refresh_token).ok_or_else(invalid_refresh)?;
        let presented_hash = sign_in
            .refresh
            .check(&presented)
            .ok_or_else(invalid_refresh)?;
        self.ensure_keys_loaded().await?;
        let mut reread_keys = false;
        // A lost race means another refresh rotated first; the next look sees its result, so
        // two looks decide every case but a third rotation in between (and one more after the
        // keys were read again).
        for _ in 0..4 {
            let signer = self.signer_kid()?;
            let chain = self
                .store
                .find_session_chain(&presented.family, signer.as_deref())
                .await?
                .ok_or_else(invalid_refresh)?;
            if let Some(kid) = signer.as_deref().filter(|_| !chain.signer_current) {
                // Revoked or retired a moment ago: never sign with it. Once per refresh.
                if reread_keys {
                    return Err(Error::Unavailable("signing key"));
                }
                self.signer_changed(kid, None).await?;
                reread_keys = true;
                continue;
            }
            let now = Utc::now();
            if chain.revoked_at.is_some() || chain.expires_at <= now || chain.user_disabled {
                return Err(invalid_refresh());
            }
            let behind = chain.generation - presented.generation;
            if behind == 0 {
                let (next, next_hash) = sign_in
                    .refresh
                    .token(&presented.family, chain.generation + 1);
                let expires_at = now + seconds(self.sessions.refresh_ttl_secs);
                let rotated = self
                    .store
                    .rotate_session(
                        chain.id,
                        chain.generation,
                        &presented_hash,
                        &next_hash,
                        now,
                        expires_at,
                    )
                    .await?;
                if !rotated {
                    continue;
                }
                self.metrics.refresh("rotated");
                return Ok(SessionTokens {
                    access: sign_in.tokens.issue_access(chain.user_id, chain.id)?,
                    refresh_token: next,
                    refresh_expires_in: seconds_between(
                        now,
                        expires_at.min(chain.absolute_expires_at),
                    ),
                });
            }
            // A token from the chain's future is none this server issued for it.
            if behind < 0 {
                return Err(invalid_refresh());
            }
            let rotated_at = match behind {
                1 => chain.rotated_at,
                2 => chain.earlier_rotated_at,
                _ => None,
            };
            let grace = seconds(self.sessions.reuse_grace_secs);
            if rotated_at.is_some_and(|at| now < at + grace) {
                let (current, current_hash) =
                    sign_in.refresh.token(&presented.family, chain.generation);
                // Only a changed server secret makes these differ; then nothing can be replayed.
                if current_hash.as_slice() != chain.refresh_hash.as_slice() {
                    return Err(invalid_refresh());
                }
                self.metrics.refresh("replayed");
                return Ok(SessionTokens {
                    access: sign_in.tokens.issue_access(chain.user_id, chain.id)?,
                    refresh_token: current,
                    refresh_expires_in: seconds_between(now, chain.expires_at),
                });
            }
            // An older token of this chain, genuinely issued: someone kept a copy. End it all.
            let revoked = self.store.revoke_session(chain.id, None, now).await?;
            self.metrics.refresh("reused");
            tracing::warn!(user_id = %chain.user_id, session = %chain.id, "refresh token reused: session revoked");
            if revoked.is_some() {
                self.audit.record(
                    SecurityEvent::new(EventKind::RefreshTokenReused)
                        .user(chain.user_id, &chain.email)
                        .client(client.ip)
                        .detail(format!(
                            "session {} revoked (token {behind} rotations old)",
                            chain.id
                        )),
                );
            }
            return Err(invalid_refresh());
        }
        Err(Error::Unavailable("session store"))
    }

    /// Ends the session of an access token, the user's other sessions, or all of them
    /// (`POST /logout`).
    pub async fn logout(
        &self,
        access_token: &str,
        scope: LogoutScope,
        client: Client,
    ) -> Result<()> {
        let (user, session) = self.authenticate(access_token).await?;
        let now = Utc::now();
        let ended = match scope {
            LogoutScope::Current => u64::from(
                self.store
                    .revoke_session(session, Some(user.id), now)
                    .await?
                    .is_some(),
            ),
            LogoutScope::Others => {
                self.store
                    .revoke_user_sessions(user.id, Some(session), now)
                    .await?
            }
            LogoutScope::All => self.store.revoke_user_sessions(user.id, None, now).await?,
        };
        self.audit.record(
            SecurityEvent::new(EventKind::Logout)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("{} ({ended} sessions)", scope.as_str())),
        );
        Ok(())
    }

    /// The live sessions of the access token's user, newest first (`GET /sessions`).
    pub async fn own_sessions(&self, access_token: &str) -> Result<Vec<OwnSession>> {
        let (user, current) = self.authenticate(access_token).await?;
        let sessions = self
            .store
            .list_sessions(Some(user.id), Utc::now(), self.sessions.max_per_user)
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| OwnSession {
                current: session.id == current,
                session,
            })
            .collect())
    }

    /// Ends one of the access token's user's own sessions (`DELETE /sessions/{id}`); anyone
    /// else's, or one already ended, is not found.
    pub async fn revoke_own_session(
        &self,
        access_token: &str,
        id: Option<Uuid>,
        client: Client,
    ) -> Result<()> {
        let (user, _) = self.authenticate(access_token).await?;
        // An id that is not a session id names none of the caller's sessions either.
        let id = id.ok_or(Error::SessionNotFound)?;
        self.store
            .revoke_session(id, Some(user.id), Utc::now())
            .await?
            .ok_or(Error::SessionNotFound)?;
        self.audit.record(
            SecurityEvent::new(EventKind::SessionRevoked)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("by user: session {id}")),
        );
        Ok(())
    }
}

fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Seconds from `from` to `to`, rounded up (none when `to` has passed).
fn seconds_between(from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>) -> u64 {
    u64::try_from((to - from).num_milliseconds())
        .unwrap_or(0)
        .div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_reports_every_invalid_field() {
        let err = Registration::parse(RegistrationInput {
            email: Some("nope".into()),
            password: Some("short".into()),
            first_name: Some("x".repeat(101)),
            ..Default::default()
        })
        .unwrap_err();
        let Error::Validation(errors) = err else {
            panic!("expected validation error")
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "password", "first_name"]);
    }

    #[test]
    fn registration_requires_email_and_password() {
        let Error::Validation(errors) =
            Registration::parse(RegistrationInput::default()).unwrap_err()
        else {
            panic!("expected validation error")
        };
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| e.message == "is required"));
    }
}
