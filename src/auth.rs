//! The use cases: register, log in, exchange a code, read and manage users. Every door calls these.

use anyhow::Context;
use chrono::Utc;
use uuid::Uuid;

use crate::audit::{AuditLog, EventKind, SecurityEvent};
use crate::config::RateLimitSettings;
use crate::config::Settings;
use crate::domain::{Email, Otp, Password, PersonName, User};
use crate::error::{Error, FieldError, Result};
use crate::keys::SigningSecret;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::otp::{CodeHasher, generate_code};
use crate::password::PasswordHasher;
use crate::policy::check_password;
use crate::store::{Attempt, NewChallenge, NewUser, Store, UserQuery};
use crate::token::{IssuedToken, TokenKeys, TokenKind};
use std::net::IpAddr;

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
        if let (Some(email), Some(password)) = (&email, &password) {
            let local_part = email.as_str().split('@').next().unwrap_or_default();
            let mut inputs = vec![email.as_str(), local_part];
            let names = [&first_name, &last_name];
            inputs.extend(
                names
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(PersonName::as_str),
            );
            if let Err(message) = check_password(password, &inputs) {
                errors.push(FieldError::new("password", message));
            }
        }
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

/// Creates a user. The one path for `POST /register` and `authd user add`.
pub async fn register(
    store: &Store,
    hasher: &PasswordHasher,
    registration: Registration,
) -> Result<User> {
    let password_hash = hasher.hash(&registration.password).await?;
    let user = store
        .insert_user(NewUser {
            id: Uuid::now_v7(),
            email: registration.email.as_str().to_owned(),
            password_hash,
            first_name: registration.first_name.map(PersonName::into_string),
            last_name: registration.last_name.map(PersonName::into_string),
            two_factor_enabled: registration.two_factor_enabled,
        })
        .await?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok(user)
}

/// Creates a user from the admin command line and records it in the audit trail.
pub async fn add_user_by_admin(
    store: &Store,
    hasher: &PasswordHasher,
    registration: Registration,
) -> Result<User> {
    let user = register(store, hasher, registration).await?;
    store
        .insert_events(
            &[SecurityEvent::new(EventKind::UserAddedByAdmin).user(user.id, &user.email)],
        )
        .await?;
    Ok(user)
}

pub async fn list_users(store: &Store, query: &UserQuery) -> Result<Vec<User>> {
    store.list_users(query).await
}

/// Switches the second step on or off; takes effect at the user's next login.
pub async fn set_two_factor(store: &Store, email: &Email, enabled: bool) -> Result<User> {
    let user = store
        .set_two_factor(email, enabled)
        .await?
        .ok_or(Error::UserNotFound)?;
    tracing::info!(user_id = %user.id, enabled, "two-factor setting changed");
    store
        .insert_events(&[SecurityEvent::new(EventKind::TwoFactorChanged)
            .user(user.id, &user.email)
            .detail(if enabled { "on" } else { "off" })])
        .await?;
    Ok(user)
}

/// What a correct password leads to.
#[derive(Debug)]
pub enum LoginOutcome {
    /// No second step: here is the access token.
    Access(IssuedToken),
    /// A code was emailed; this token lets the client submit it.
    Challenge(IssuedToken),
}

/// Everything the HTTP API needs, built once at start-up and shared.
#[derive(Debug, Clone)]
pub struct Auth {
    pub store: Store,
    pub hasher: PasswordHasher,
    pub tokens: TokenKeys,
    pub codes: CodeHasher,
    pub mailer: Mailer,
    pub max_attempts: u32,
    pub limits: RateLimitSettings,
    pub audit: AuditLog,
    pub metrics: Metrics,
}

/// Who is asking, as far as the door knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client {
    pub ip: Option<IpAddr>,
}

fn login_key(email: &Email) -> String {
    format!("login:{email}")
}

fn otp_key(user_id: Uuid) -> String {
    format!("otp:{user_id}")
}

fn seconds_until(until: chrono::DateTime<Utc>) -> u64 {
    u64::try_from((until - Utc::now()).num_seconds())
        .unwrap_or(0)
        .max(1)
}

impl Auth {
    pub async fn from_settings(
        settings: &Settings,
        store: Store,
        secret: &SigningSecret,
        audit: AuditLog,
        metrics: Metrics,
    ) -> anyhow::Result<Auth> {
        let secret = secret.bytes();
        let hasher = PasswordHasher::from_settings(&settings.password)
            .await?
            .with_metrics(metrics.clone());
        Ok(Auth {
            limits: settings.rate_limit.clone(),
            audit,
            metrics,
            store,
            hasher,
            tokens: TokenKeys::new(secret, &settings.jwt),
            codes: CodeHasher::from_secret(secret),
            mailer: Mailer::from_settings(settings).context("invalid mail settings")?,
            max_attempts: settings.otp.max_attempts,
        })
    }

    pub async fn register(&self, registration: Registration, client: Client) -> Result<User> {
        let user = register(&self.store, &self.hasher, registration).await?;
        self.audit.record(
            SecurityEvent::new(EventKind::UserRegistered)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        Ok(user)
    }

    /// Refuses with 429 while `key` is locked, without doing any expensive work.
    async fn ensure_not_locked(&self, key: &str) -> Result<()> {
        if !self.limits.enabled {
            return Ok(());
        }
        match self.store.locked_until(key, Utc::now()).await? {
            Some(until) => Err(Error::RateLimited {
                retry_after_secs: seconds_until(until),
            }),
            None => Ok(()),
        }
    }

    /// Counts a failure of `key` against `limit`; true when this failure locked it.
    async fn count_failure(&self, key: &str, limit: u32) -> Result<bool> {
        if !self.limits.enabled {
            return Ok(false);
        }
        let now = Utc::now();
        let lock_until = now + chrono::Duration::seconds(self.limits.lockout_secs as i64);
        Ok(self
            .store
            .record_failure(key, limit, now, lock_until)
            .await?
            .is_some())
    }

    async fn clear_failures(&self, key: &str) -> Result<()> {
        if self.limits.enabled {
            self.store.clear_failures(key).await?;
        }
        Ok(())
    }

    /// Checks the password (against a dummy hash when the account does not exist, so both
    /// answers take as long) and either issues an access token or starts a challenge.
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
        let email = Email::parse(email).ok();
        if let Some(email) = &email
            && let Err(err) = self.ensure_not_locked(&login_key(email)).await
        {
            self.audit.record(
                SecurityEvent::new(EventKind::LoginThrottled)
                    .email(email.as_str())
                    .client(client.ip),
            );
            self.metrics.throttle("account");
            return Err(err);
        }
        let credentials = match &email {
            Some(email) => self.store.find_credentials(email).await?,
            None => None,
        };
        let stored_hash = credentials.as_ref().map(|c| c.password_hash.as_str());
        let matched = self.hasher.verify(password, stored_hash).await?;
        let user = match credentials {
            Some(c) if matched => c.user,
            _ => {
                tracing::info!("login refused: invalid credentials");
                let mut event = SecurityEvent::new(EventKind::LoginFailed).client(client.ip);
                if let Some(email) = &email {
                    // Unknown addresses are counted too, so a lock says nothing about existence.
                    if self
                        .count_failure(&login_key(email), self.limits.login_failures_per_account)
                        .await?
                    {
                        event = event.detail("account locked");
                    }
                    event = event.email(email.as_str());
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
            let token = self
                .tokens
                .issue(TokenKind::Access, user.id, Uuid::new_v4())?;
            return Ok(LoginOutcome::Access(token));
        }
        if let Err(err) = self.ensure_not_locked(&otp_key(user.id)).await {
            self.audit.record(
                SecurityEvent::new(EventKind::CodeThrottled)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            self.metrics.throttle("code");
            return Err(err);
        }
        let sent = self.start_challenge(&user).await;
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

    /// Stores a hashed code, emails it, and only then retires older challenges and hands out
    /// the challenge token. If the mail fails the new challenge is deleted, and since its
    /// token was never issued nothing usable is left behind.
    async fn start_challenge(&self, user: &User) -> Result<IssuedToken> {
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        let id = Uuid::new_v4();
        let code = generate_code();
        let ttl = self.tokens.ttl_secs(TokenKind::Challenge);
        self.store
            .insert_challenge(&NewChallenge {
                id,
                user_id: user.id,
                code_hash: self.codes.hash(id, code.as_str()),
                expires_at: Utc::now() + chrono::Duration::seconds(ttl as i64),
            })
            .await?;
        if let Err(err) = self.mailer.send_code(&email, &code, ttl).await {
            if let Err(cleanup) = self.store.delete_challenge(id).await {
                tracing::warn!(error = %cleanup, "could not delete undelivered challenge");
            }
            return Err(err);
        }
        self.store.retire_challenges_except(user.id, id).await?;
        tracing::info!(user_id = %user.id, "login code sent");
        self.tokens.issue(TokenKind::Challenge, user.id, id)
    }

    /// Exchanges a challenge token and the emailed code for an access token, at most once.
    pub async fn verify_otp(
        &self,
        challenge_token: &str,
        otp: &Otp,
        client: Client,
    ) -> Result<IssuedToken> {
        let claims = self.tokens.verify(TokenKind::Challenge, challenge_token)?;
        let key = otp_key(claims.sub);
        let event = |kind| {
            let mut event = SecurityEvent::new(kind).client(client.ip);
            event.user_id = Some(claims.sub);
            event
        };
        if let Err(err) = self.ensure_not_locked(&key).await {
            self.audit.record(event(EventKind::CodeThrottled));
            self.metrics.throttle("code");
            return Err(err);
        }
        let hash = self.codes.hash_otp(claims.jti, otp);
        match self
            .store
            .attempt_challenge(claims.jti, claims.sub, &hash, self.max_attempts)
            .await?
        {
            Attempt::Accepted => {
                tracing::info!(user_id = %claims.sub, "second step succeeded");
                self.clear_failures(&key).await?;
                self.audit.record(event(EventKind::CodeAccepted));
                self.metrics.code("accepted");
                self.tokens
                    .issue(TokenKind::Access, claims.sub, Uuid::new_v4())
            }
            Attempt::Rejected { remaining } => {
                tracing::info!(user_id = %claims.sub, remaining, "wrong code");
                let locked = self
                    .count_failure(&key, self.limits.otp_failures_per_account)
                    .await?;
                self.metrics.code("rejected");
                let rejected = event(EventKind::CodeRejected);
                self.audit.record(if locked {
                    rejected.detail("second step locked")
                } else {
                    rejected
                });
                Err(Error::InvalidOtp { remaining })
            }
            Attempt::Dead => Err(Error::InvalidToken(
                "this login challenge is used, expired or out of attempts: log in again",
            )),
        }
    }

    /// The user an access token belongs to.
    pub async fn current_user(&self, access_token: &str) -> Result<User> {
        let subject = self.tokens.access_subject(access_token)?;
        self.store
            .find_user(subject)
            .await?
            .ok_or(Error::InvalidToken("the account no longer exists"))
    }
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
