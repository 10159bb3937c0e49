//! The password step of a login: the throttles that guard it, the check at a constant cost, the
//! hash upgrade, and what comes next (a session, or a challenge).

use chrono::Utc;

use super::challenge::Delivery;
use super::sessions::{SessionProof, SessionTokens};
use super::{Auth, Client, SignIn, login_key, micros_of, otp_key, seconds_until};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Password, SecondFactor, User};
use crate::error::{Error, Result};
use crate::store::{Credentials, Reservation, ThrottleRule};
use crate::token::IssuedToken;

/// What a correct password leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// No second step: a session is open, here are its tokens.
    Access(SessionTokens),
    /// A second step: this token lets the client submit its answer.
    Challenge(Challenge),
}

/// A started second step.
#[derive(Debug)]
pub struct Challenge {
    pub token: IssuedToken,
    /// What the login asks for: `email` (a code was emailed) or `totp` (the app's code).
    pub factor: SecondFactor,
    /// Every way the user can finish: `email` or `totp`, `passkey` when they have one, and
    /// `recovery_code` while they have recovery codes left.
    pub methods: Vec<&'static str>,
}

/// A `ThrottleRule::every` that no count reaches.
const NEVER: u32 = i32::MAX as u32;

/// The longest a password lock lasts, however many came before it.
const MAX_LOCK_SECS: u64 = 24 * 60 * 60;

impl Auth {
    /// Password guesses: every `login_failures_per_account` consecutive failures lock the
    /// account, each lock twice as long as the one before, up to a day.
    pub(super) fn login_rule(&self) -> ThrottleRule {
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
    pub(super) fn otp_rule(&self) -> ThrottleRule {
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
    pub(super) async fn reserve(&self, key: &str, rule: &ThrottleRule) -> Result<bool> {
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

    pub(super) async fn clear_failures(&self, key: &str) -> Result<()> {
        if self.limits.enabled {
            self.store.clear_failures(key).await?;
        }
        Ok(())
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
            Err(Error::EmailNotVerified) => "email_not_verified",
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
        // A signing key and the hashing place first: a login refused with 503 counts nothing.
        self.ensure_can_sign().await?;
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
        let verified = match credentials {
            Some(c) if matched && !c.disabled => c,
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
        let user = verified.user.clone();
        if let Some(email) = &email {
            self.clear_failures(&login_key(email)).await?;
        }
        // Only now, with the password checked: a guesser learns nothing from it.
        if self.require_verified_email && !user.email_verified {
            tracing::info!(user_id = %user.id, "login refused: email not verified");
            self.audit.record(
                SecurityEvent::new(EventKind::LoginUnverified)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            return Err(Error::EmailNotVerified);
        }
        if user.second_factor == SecondFactor::None {
            tracing::info!(user_id = %user.id, "login succeeded");
            self.audit.record(
                SecurityEvent::new(EventKind::LoginSucceeded)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            // No session if the password was changed (reset) since it was checked.
            let tokens = self
                .open_session(
                    sign_in,
                    user.id,
                    &client,
                    SessionProof::Password(&verified.password_hash),
                    || Error::InvalidCredentials,
                )
                .await?;
            // Only once the session holds: a new hash before it would refuse it.
            self.upgrade_hash(&verified, password);
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
        if user.second_factor == SecondFactor::Totp {
            return self
                .start_app_challenge(
                    sign_in,
                    &user,
                    &verified.password_hash,
                    password,
                    &verified,
                    &client,
                )
                .await;
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
        let sent = self
            .start_challenge(sign_in, &user, &verified.password_hash, Delivery::Email)
            .await;
        if sent.is_ok() {
            self.upgrade_hash(&verified, password);
        }
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
        let token = sent?;
        let mut methods = vec!["email"];
        if self.has_passkeys(user.id).await? {
            methods.push("passkey");
        }
        Ok(LoginOutcome::Challenge(Challenge {
            token,
            factor: SecondFactor::Email,
            methods,
        }))
    }

    /// The second step of an account with an authenticator app: a challenge and no email.
    async fn start_app_challenge(
        &self,
        sign_in: &SignIn,
        user: &User,
        verified_hash: &str,
        password: &str,
        verified: &Credentials,
        client: &Client,
    ) -> Result<LoginOutcome> {
        let token = self
            .start_challenge(sign_in, user, verified_hash, Delivery::App)
            .await?;
        self.upgrade_hash(verified, password);
        let mut methods = vec!["totp"];
        if self.has_passkeys(user.id).await? {
            methods.push("passkey");
        }
        if self.recovery_codes_left(user.id).await? > 0 {
            methods.push("recovery_code");
        }
        tracing::info!(user_id = %user.id, "authenticator code asked for");
        self.audit.record(
            SecurityEvent::new(EventKind::AppCodeAsked)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        Ok(LoginOutcome::Challenge(Challenge {
            token,
            factor: SecondFactor::Totp,
            methods,
        }))
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
}
