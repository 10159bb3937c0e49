//! Proving the address and getting back in: email verification, password reset and change,
//! email change.
//!
//! Every code and link is emailed, stored only as a keyed hash, checked and consumed atomically
//! (what it unlocks happens in the transaction that consumes it). What anyone may ask for
//! without a login (a verification email, a reset) answers the same whether or not the address
//! has an account: the work, and the mail, happen in the background, bounded by
//! `MAX_MAILS_IN_FLIGHT`, so the answer neither waits for nor reveals it.

use chrono::Utc;
use uuid::Uuid;

use super::register::personal_words;
use super::sessions::seconds;
use super::{Auth, Client, login_key, micros_of};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Otp, Password, User};
use crate::error::{Error, Result};
use crate::mail::Mail;
use crate::store::{Attempt, NewAccountCode, OpenCode, PasswordChange, PasswordTarget, Purpose};
use crate::token::codes::{LinkToken, generate_code};

/// Wrong guesses one emailed code (verification, reset, email change) takes before it dies.
pub const MAX_CODE_ATTEMPTS: u32 = 5;

/// What proves a verification or a reset: the emailed code with the address it went to, or
/// the link's token.
#[derive(Debug)]
pub enum Proof {
    Code { email: String, code: Otp },
    Token(String),
}

/// What confirms an email change: the code sent to the new address, typed by the logged-in
/// user (their access token), or the link's token.
#[derive(Debug)]
pub enum ChangeProof {
    Code { access_token: String, code: Otp },
    Token(String),
}

/// How one account email went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailOutcome {
    Sent,
    /// The address's limits were used up: nothing was sent.
    Limited,
    /// The relay failed: nothing usable is left behind.
    Failed,
}

impl MailOutcome {
    fn as_str(self) -> &'static str {
        match self {
            MailOutcome::Sent => "sent",
            MailOutcome::Limited => "limited",
            MailOutcome::Failed => "failed",
        }
    }
}

/// A day, in seconds: the window of the daily limits.
const DAY_SECS: u64 = 86_400;

/// Whose inbox an account email goes to, for its recipient limit.
enum Recipient<'a> {
    /// An account's own address, for a code or link: a quota of its own, of the login codes'
    /// size, so a verification never costs the user a login code.
    Account(Uuid),
    /// An account's own address, for a notice: a quota of its own again, so nobody can use up
    /// what a user's reset needs by making authd send them notices.
    Notice(Uuid),
    /// An address that is no account's (yet): the new address of an email change.
    Address(&'a Email),
}

impl Recipient<'_> {
    fn key(&self) -> String {
        match self {
            Recipient::Account(user_id) => format!("account-mail:{user_id}"),
            Recipient::Notice(user_id) => format!("notice-mail:{user_id}"),
            Recipient::Address(email) => format!("account-mail-to:{email}"),
        }
    }
}

/// The kind label of an account email, for the metric and the log.
fn kind_of(purpose: Purpose) -> &'static str {
    purpose.as_str()
}

impl Auth {
    /// Runs `work` off the request, unless `MAX_MAILS_IN_FLIGHT` account emails are already
    /// being prepared: then it is dropped, counted and logged.
    fn in_background(
        &self,
        kind: &'static str,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let Ok(mailing) = self.mailing() else {
            return;
        };
        match mailing.in_flight.clone().try_acquire_owned() {
            Ok(permit) => {
                let in_flight = self.metrics.account_mails_in_flight.clone();
                in_flight.inc();
                tokio::spawn(async move {
                    work.await;
                    in_flight.dec();
                    drop(permit);
                });
            }
            Err(_) => {
                tracing::warn!(kind, "too many account emails in flight: one was dropped");
                self.metrics.account_mail(kind, "dropped");
            }
        }
    }

    /// Takes one unit of an account's limits for emails of `purpose`: one per
    /// `verification.resend_interval_secs` and `verification.max_per_day` a day. False when
    /// one is used up.
    async fn take_purpose_limits(&self, purpose: Purpose, user_id: Uuid) -> Result<bool> {
        if !self.limits.enabled {
            return Ok(true);
        }
        let name = purpose.as_str();
        let interval = self.verification.resend_interval_secs;
        if interval > 0
            && !self
                .take_unit(&format!("{name}-interval:{user_id}"), 1, interval)
                .await?
        {
            return Ok(false);
        }
        self.take_unit(
            &format!("{name}-day:{user_id}"),
            self.verification.max_per_day,
            DAY_SECS,
        )
        .await
    }

    /// Takes one unit of a recipient's limit: `mail.max_codes_per_account` per
    /// `mail.codes_window_secs`, as for the login codes (but a quota of its own); an address
    /// that is no account's also `verification.max_per_day` a day, whichever accounts ask.
    async fn take_recipient_limit(&self, recipient: &Recipient<'_>) -> Result<bool> {
        if !self.limits.enabled {
            return Ok(true);
        }
        let key = recipient.key();
        if let Recipient::Address(_) = recipient
            && !self
                .take_unit(
                    &format!("{key}-day"),
                    self.verification.max_per_day,
                    DAY_SECS,
                )
                .await?
        {
            return Ok(false);
        }
        self.take_unit(
            &key,
            self.code_emails.max_per_account,
            self.code_emails.window_secs,
        )
        .await
    }

    /// One unit of the quota `key` of `max` per `window_secs`.
    async fn take_unit(&self, key: &str, max: u32, window_secs: u64) -> Result<bool> {
        Ok(self
            .store
            .take_quota(key, max, micros_of(window_secs), Utc::now())
            .await?
            .is_ok())
    }

    /// Issues a code and link of `purpose` for `user`, to `to`, and emails them: stored first,
    /// and deleted again if the relay fails (a code that never arrived is no use to anyone).
    /// A newer code retires the user's older ones of the same purpose.
    /// The account's limits for `purpose` are taken here, unless the caller already took them
    /// (`limits_taken`).
    async fn send_account_code(
        &self,
        user: &User,
        purpose: Purpose,
        to: &Email,
        recipient: &Recipient<'_>,
        limits_taken: bool,
    ) -> Result<MailOutcome> {
        let mailing = self.mailing()?;
        if !limits_taken && !self.take_purpose_limits(purpose, user.id).await? {
            return Ok(MailOutcome::Limited);
        }
        if !self.take_recipient_limit(recipient).await? {
            return Ok(MailOutcome::Limited);
        }
        let ttl = match purpose {
            Purpose::ResetPassword => self.reset_ttl_secs,
            Purpose::VerifyEmail | Purpose::ChangeEmail => self.verification.ttl_secs,
        };
        let id = Uuid::now_v7();
        let code = generate_code();
        let token = LinkToken::generate();
        let now = Utc::now();
        self.store
            .insert_account_code(&NewAccountCode {
                id,
                user_id: user.id,
                purpose,
                email: to.as_str().to_owned(),
                code_hash: mailing.codes.hash(id, code.as_str()),
                token_hash: mailing.codes.hash_link_token(token.as_str()),
                expires_at: now + seconds(ttl),
                created_at: now,
            })
            .await?;
        let (code, token) = (&code, token.as_str());
        let mail = match purpose {
            Purpose::VerifyEmail => Mail::VerifyEmail {
                code,
                token,
                valid_for_secs: ttl,
            },
            Purpose::ChangeEmail => Mail::ConfirmNewEmail {
                code,
                token,
                valid_for_secs: ttl,
            },
            Purpose::ResetPassword => Mail::ResetPassword {
                code,
                token,
                valid_for_secs: ttl,
            },
        };
        if let Err(err) = mailing.mailer.send(to, mail).await {
            tracing::warn!(user_id = %user.id, kind = purpose.as_str(), error = %err, "account email not delivered");
            self.store.delete_account_code(id).await?;
            return Ok(MailOutcome::Failed);
        }
        Ok(MailOutcome::Sent)
    }

    /// Emails a notice (nothing to act on) within the recipient's limit for notices, which is
    /// its own: notices never use up what a verification or a reset needs.
    pub(super) async fn send_notice(
        &self,
        kind: &'static str,
        to: &Email,
        user_id: Uuid,
        mail: Mail<'_>,
    ) -> Result<MailOutcome> {
        let mailing = self.mailing()?;
        if !self
            .take_recipient_limit(&Recipient::Notice(user_id))
            .await?
        {
            return Ok(MailOutcome::Limited);
        }
        Ok(match mailing.mailer.send(to, mail).await {
            Ok(()) => MailOutcome::Sent,
            Err(err) => {
                tracing::warn!(kind, error = %err, "notice not delivered");
                MailOutcome::Failed
            }
        })
    }

    /// Counts, logs and records how an account email went.
    pub(super) fn record_mail(
        &self,
        kind: &'static str,
        outcome: Result<MailOutcome>,
        user: &User,
        client: &Client,
        sent: Option<EventKind>,
    ) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                tracing::warn!(kind, user_id = %user.id, error = %err, "account email not sent");
                MailOutcome::Failed
            }
        };
        self.metrics.account_mail(kind, outcome.as_str());
        let event = match (outcome, sent) {
            (MailOutcome::Sent, Some(kind)) => Some(SecurityEvent::new(kind)),
            (MailOutcome::Limited, _) => {
                Some(SecurityEvent::new(EventKind::AccountMailLimited).detail(kind))
            }
            _ => None,
        };
        if let Some(event) = event {
            self.audit
                .record(event.user(user.id, &user.email).client(client.ip));
        }
    }

    /// Emails `user` a verification code and link in the background (registration).
    pub(super) fn send_verification_in_background(&self, user: User, client: Client) {
        let auth = self.clone();
        self.in_background(kind_of(Purpose::VerifyEmail), async move {
            auth.send_verification(&user, &client).await;
        });
    }

    async fn send_verification(&self, user: &User, client: &Client) {
        let outcome = match Email::parse(&user.email) {
            Ok(to) => {
                self.send_account_code(
                    user,
                    Purpose::VerifyEmail,
                    &to,
                    &Recipient::Account(user.id),
                    false,
                )
                .await
            }
            Err(err) => Err(Error::Internal(anyhow::anyhow!("stored email: {err}"))),
        };
        self.record_mail(
            kind_of(Purpose::VerifyEmail),
            outcome,
            user,
            client,
            Some(EventKind::EmailVerificationSent),
        );
    }

    /// `POST /email/verify/resend`: sends a new verification email, in the background, when an
    /// account with an unproven address has this address (within its limits). Says nothing
    /// either way; only a malformed address is an error.
    pub fn resend_verification(&self, email: &str, client: Client) -> Result<()> {
        let email = Email::parse(email).map_err(|m| Error::validation("email", m))?;
        let auth = self.clone();
        self.in_background(kind_of(Purpose::VerifyEmail), async move {
            match auth.store.find_credentials(&email).await {
                Ok(Some(c)) if !c.disabled && !c.user.email_verified => {
                    auth.send_verification(&c.user, &client).await;
                }
                Ok(Some(_)) => auth
                    .metrics
                    .account_mail(kind_of(Purpose::VerifyEmail), "not_needed"),
                Ok(None) => auth
                    .metrics
                    .account_mail(kind_of(Purpose::VerifyEmail), "no_account"),
                Err(err) => {
                    tracing::warn!(error = %err, "verification email not sent");
                    auth.metrics
                        .account_mail(kind_of(Purpose::VerifyEmail), "failed");
                }
            }
        });
        Ok(())
    }

    /// The live code a proof names, checked: a typed code uses one of its
    /// [`MAX_CODE_ATTEMPTS`] when wrong; a link's token is looked up by its keyed hash.
    /// `purposes` are the ones this door accepts. A right code is not consumed here: what it
    /// unlocks consumes it.
    async fn checked_code(
        &self,
        user_and_code: Option<(&User, &Otp)>,
        token: Option<&str>,
        purposes: &[Purpose],
        client: &Client,
    ) -> Result<OpenCode> {
        let codes = &self.mailing()?.codes;
        let now = Utc::now();
        if let Some(token) = token {
            let found = self
                .store
                .find_account_code_by_token(&codes.hash_link_token(token), now)
                .await?;
            return found
                .filter(|code| purposes.contains(&code.purpose))
                .ok_or(Error::InvalidCode);
        }
        let Some((user, otp)) = user_and_code else {
            return Err(Error::InvalidCode);
        };
        for purpose in purposes {
            let Some(open) = self
                .store
                .open_account_code(user.id, *purpose, MAX_CODE_ATTEMPTS, now)
                .await?
            else {
                continue;
            };
            return match self
                .store
                .check_account_code(
                    open.id,
                    &codes.hash_otp(open.id, otp),
                    MAX_CODE_ATTEMPTS,
                    now,
                )
                .await?
            {
                Attempt::Accepted => Ok(open),
                Attempt::Rejected { .. } => {
                    self.audit.record(
                        SecurityEvent::new(EventKind::AccountCodeRejected)
                            .user(user.id, &user.email)
                            .client(client.ip)
                            .detail(purpose.as_str()),
                    );
                    Err(Error::InvalidCode)
                }
                Attempt::Dead => Err(Error::InvalidCode),
            };
        }
        Err(Error::InvalidCode)
    }

    /// `POST /email/verify`: proves the account's address with the emailed code (and the
    /// address) or the link's token. The link of an email change proves the new address and
    /// moves the account to it. The user as they are now.
    pub async fn verify_email(&self, proof: Proof, client: Client) -> Result<User> {
        let user = match &proof {
            Proof::Code { email, .. } => {
                let email = Email::parse(email).map_err(|m| Error::validation("email", m))?;
                Some(
                    self.store
                        .find_user_by_email(&email)
                        .await?
                        .ok_or(Error::InvalidCode)?,
                )
            }
            Proof::Token(_) => None,
        };
        let (code, token) = match &proof {
            Proof::Code { code, .. } => (Some(code), None),
            Proof::Token(token) => (None, Some(token.as_str())),
        };
        let purposes: &[Purpose] = if token.is_some() {
            &[Purpose::VerifyEmail, Purpose::ChangeEmail]
        } else {
            &[Purpose::VerifyEmail]
        };
        let open = self
            .checked_code(user.as_ref().zip(code), token, purposes, &client)
            .await?;
        self.prove_address(open, None, &client).await
    }

    /// Consumes a checked verification or email-change code and proves its address. An
    /// address change ends the user's sessions but `keep` (the one confirming it, if any).
    async fn prove_address(
        &self,
        open: OpenCode,
        keep: Option<Uuid>,
        client: &Client,
    ) -> Result<User> {
        let before = self.store.find_user(open.user_id).await?;
        let proven = self
            .store
            .prove_address_with(&open, keep, Utc::now())
            .await?
            .ok_or(Error::InvalidCode)?;
        let user = proven.user;
        let event = if open.purpose == Purpose::ChangeEmail {
            tracing::info!(user_id = %user.id, "email address changed");
            SecurityEvent::new(EventKind::EmailChanged).detail(format!(
                "from {}: {} other sessions ended",
                before.map(|b| b.email).unwrap_or_default(),
                proven.sessions_ended
            ))
        } else {
            tracing::info!(user_id = %user.id, "email address verified");
            SecurityEvent::new(EventKind::EmailVerified)
        };
        self.audit
            .record(event.user(user.id, &user.email).client(client.ip));
        Ok(user)
    }

    /// `POST /password/forgot`: emails a reset code and link, in the background, when an
    /// enabled account has this address (within its limits). Says nothing either way.
    pub fn forgot_password(&self, email: &str, client: Client) -> Result<()> {
        let email = Email::parse(email).map_err(|m| Error::validation("email", m))?;
        let auth = self.clone();
        self.in_background(kind_of(Purpose::ResetPassword), async move {
            match auth.store.find_credentials(&email).await {
                Ok(Some(c)) if !c.disabled => {
                    let outcome = auth.send_reset(&c.user, &email).await;
                    auth.record_mail(
                        kind_of(Purpose::ResetPassword),
                        outcome,
                        &c.user,
                        &client,
                        Some(EventKind::PasswordResetRequested),
                    );
                }
                Ok(_) => auth
                    .metrics
                    .account_mail(kind_of(Purpose::ResetPassword), "no_account"),
                Err(err) => {
                    tracing::warn!(error = %err, "reset email not sent");
                    auth.metrics
                        .account_mail(kind_of(Purpose::ResetPassword), "failed");
                }
            }
        });
        Ok(())
    }

    async fn send_reset(&self, user: &User, to: &Email) -> Result<MailOutcome> {
        self.send_account_code(
            user,
            Purpose::ResetPassword,
            to,
            &Recipient::Account(user.id),
            false,
        )
        .await
    }

    /// `authd user reset-password --send-link`: emails a reset to the user now; how it went.
    pub async fn send_password_reset(&self, email: &Email) -> Result<MailOutcome> {
        let credentials = self
            .store
            .find_credentials(email)
            .await?
            .ok_or(Error::UserNotFound)?;
        if credentials.disabled {
            return Err(Error::validation(
                "email",
                "belongs to a disabled account: `authd user enable` it first",
            ));
        }
        let user = credentials.user;
        let outcome = self.send_reset(&user, email).await;
        let reported = *outcome.as_ref().unwrap_or(&MailOutcome::Failed);
        self.record_mail(
            kind_of(Purpose::ResetPassword),
            outcome,
            &user,
            &Client::default(),
            Some(EventKind::PasswordResetRequested),
        );
        Ok(reported)
    }

    /// Checks a new password against the policy, as registration does, and hashes it.
    async fn new_password_hash(&self, user: &User, new_password: &Password) -> Result<String> {
        let words = personal_words(
            &user.email,
            [&user.first_name, &user.last_name]
                .into_iter()
                .flatten()
                .map(String::as_str),
        );
        if let Err(message) = self.hasher.check_policy(new_password, words).await? {
            return Err(Error::validation("new_password", message));
        }
        self.hasher.hash(new_password).await
    }

    /// `POST /password/reset`: sets a new password with the emailed code (and the address) or
    /// the link's token. The password obeys the registration policy (a refused one leaves the
    /// code usable); then, atomically, the code is consumed, every session and open login of
    /// the user ends, and the password locks are cleared. Of parallel resets with one code
    /// exactly one succeeds. The second step, if any, stays.
    pub async fn reset_password(
        &self,
        proof: Proof,
        new_password: &str,
        client: Client,
    ) -> Result<User> {
        let new_password =
            Password::parse(new_password).map_err(|m| Error::validation("new_password", m))?;
        let (user, code, token) = match &proof {
            Proof::Code { email, code } => {
                let email = Email::parse(email).map_err(|m| Error::validation("email", m))?;
                let user = self
                    .store
                    .find_user_by_email(&email)
                    .await?
                    .ok_or(Error::InvalidCode)?;
                (Some(user), Some(code), None)
            }
            Proof::Token(token) => (None, None, Some(token.as_str())),
        };
        let open = self
            .checked_code(
                user.as_ref().zip(code),
                token,
                &[Purpose::ResetPassword],
                &client,
            )
            .await?;
        let user = match user {
            Some(user) => user,
            None => self
                .store
                .find_user(open.user_id)
                .await?
                .ok_or(Error::InvalidCode)?,
        };
        let hash = self.new_password_hash(&user, &new_password).await?;
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        let reset = self
            .store
            .set_password(
                &PasswordChange {
                    user_id: user.id,
                    target: PasswordTarget::Code(open.id),
                    password_hash: &hash,
                    expected: None,
                    keep: None,
                    counters: &[login_key(&email)],
                },
                Utc::now(),
            )
            .await?
            .ok_or(Error::InvalidCode)?;
        tracing::info!(user_id = %user.id, sessions_ended = reset.sessions_ended, "password reset");
        self.audit.record(
            SecurityEvent::new(EventKind::PasswordReset)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("{} sessions ended", reset.sessions_ended)),
        );
        self.notify_password_changed(reset.user.clone(), client);
        Ok(reset.user)
    }

    fn notify_password_changed(&self, user: User, client: Client) {
        self.notify("password_changed", user, client, Mail::PasswordChanged);
    }

    /// Emails `user` a notice (`kind`, for the metric) in the background, within the
    /// recipient's limit for notices.
    pub(super) fn notify(
        &self,
        kind: &'static str,
        user: User,
        client: Client,
        mail: Mail<'static>,
    ) {
        let auth = self.clone();
        self.in_background(kind, async move {
            let outcome = match Email::parse(&user.email) {
                Ok(to) => auth.send_notice(kind, &to, user.id, mail).await,
                Err(err) => Err(Error::Internal(anyhow::anyhow!("stored email: {err}"))),
            };
            auth.record_mail(kind, outcome, &user, &client, None);
        });
    }

    /// `POST /password/change`: the access token's user sets a new password with the current
    /// one. A wrong current password counts toward the account's password lock like a failed
    /// login (and is refused while the account is locked). The user's other sessions end.
    pub async fn change_password(
        &self,
        access_token: &str,
        current_password: &str,
        new_password: &str,
        client: Client,
    ) -> Result<()> {
        let (user, session) = self.authenticate(access_token).await?;
        let new_password =
            Password::parse(new_password).map_err(|m| Error::validation("new_password", m))?;
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        let key = login_key(&email);
        let slot = self.hasher.admit()?;
        self.reserve(&key, &self.login_rule()).await?;
        let credentials = self.store.find_credentials(&email).await?;
        let stored = credentials.as_ref().map(|c| c.password_hash.as_str());
        if !self
            .hasher
            .verify_admitted(slot, current_password, stored)
            .await?
        {
            self.audit.record(
                SecurityEvent::new(EventKind::PasswordChangeFailed)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            return Err(Error::validation(
                "current_password",
                "is not this account's password",
            ));
        }
        self.clear_failures(&key).await?;
        let hash = self.new_password_hash(&user, &new_password).await?;
        let changed = self
            .store
            .set_password(
                &PasswordChange {
                    user_id: user.id,
                    target: PasswordTarget::User,
                    password_hash: &hash,
                    expected: stored,
                    keep: Some(session),
                    counters: &[],
                },
                Utc::now(),
            )
            .await?
            // A reset (or another change) came first: it ended this session too.
            .ok_or_else(|| {
                Error::InvalidToken(
                    "this access token's session has ended, or its password changed meanwhile: log in again",
                )
            })?;
        self.audit.record(
            SecurityEvent::new(EventKind::PasswordChanged)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!(
                    "by user: {} other sessions ended",
                    changed.sessions_ended
                )),
        );
        self.notify_password_changed(changed.user, client);
        Ok(())
    }

    /// `authd user reset-password`: an administrator sets a user's password (the registration
    /// policy applies). Every session of the user ends and the password locks are cleared.
    pub async fn set_password(&self, email: &Email, password: &Password) -> Result<User> {
        let user = self.user_by_email(email).await?;
        let hash = self.new_password_hash(&user, password).await?;
        let changed = self
            .store
            .set_password(
                &PasswordChange {
                    user_id: user.id,
                    target: PasswordTarget::User,
                    password_hash: &hash,
                    expected: None,
                    keep: None,
                    counters: &[login_key(email)],
                },
                Utc::now(),
            )
            .await?
            .ok_or(Error::UserNotFound)?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::PasswordChanged)
                .user(user.id, &user.email)
                .detail(format!(
                    "{}: {} sessions ended",
                    super::Actor::Cli.as_str(),
                    changed.sessions_ended
                )),
        )
        .await?;
        Ok(changed.user)
    }

    /// `POST /email/change`: the access token's user, logged in less than
    /// `session.fresh_login_secs` ago, asks to move to `new_email`. A code and link go to the
    /// new address and a notice to the old one, in the background. A new address that is
    /// another account's gets only a notice to that account's owner, and the answer is the same.
    pub async fn request_email_change(
        &self,
        access_token: &str,
        new_email: &str,
        client: Client,
    ) -> Result<()> {
        let (user, session) = self.authenticate(access_token).await?;
        self.ensure_fresh_login(session).await?;
        let new_email = Email::parse(new_email).map_err(|m| Error::validation("new_email", m))?;
        if new_email.as_str() == user.email {
            return Err(Error::validation(
                "new_email",
                "is already this account's address",
            ));
        }
        let auth = self.clone();
        self.in_background(kind_of(Purpose::ChangeEmail), async move {
            auth.send_email_change(&user, &new_email, &client).await;
        });
        Ok(())
    }

    /// The requester's limits for address changes are taken first, whether or not the new
    /// address is another account's: so neither the emails that go out nor the limits say
    /// which it is, and nobody can send an account's owner more notices than their own limits.
    async fn send_email_change(&self, user: &User, new_email: &Email, client: &Client) {
        match self
            .take_purpose_limits(Purpose::ChangeEmail, user.id)
            .await
        {
            Ok(true) => {}
            limited => {
                // record_mail logs an error and counts it as failed.
                let outcome = limited.map(|_| MailOutcome::Limited);
                self.record_mail(kind_of(Purpose::ChangeEmail), outcome, user, client, None);
                return;
            }
        }
        let taken_by = match self.store.find_user_by_email(new_email).await {
            Ok(found) => found,
            Err(err) => {
                tracing::warn!(error = %err, "email change not sent");
                self.metrics
                    .account_mail(kind_of(Purpose::ChangeEmail), "failed");
                return;
            }
        };
        let detail = match &taken_by {
            Some(other) => {
                let outcome = self
                    .send_notice("address_in_use", new_email, other.id, Mail::AddressInUse)
                    .await;
                self.record_mail("address_in_use", outcome, other, client, None);
                format!("to {new_email} (another account's: nothing sent to it but a notice)")
            }
            None => {
                let outcome = self
                    .send_account_code(
                        user,
                        Purpose::ChangeEmail,
                        new_email,
                        &Recipient::Address(new_email),
                        true,
                    )
                    .await;
                self.record_mail(kind_of(Purpose::ChangeEmail), outcome, user, client, None);
                format!("to {new_email}")
            }
        };
        self.audit.record(
            SecurityEvent::new(EventKind::EmailChangeRequested)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(detail),
        );
        let outcome = match Email::parse(&user.email) {
            Ok(old) => {
                self.send_notice(
                    "email_change_requested",
                    &old,
                    user.id,
                    Mail::EmailChangeRequested {
                        new_email: new_email.as_str(),
                    },
                )
                .await
            }
            Err(err) => Err(Error::Internal(anyhow::anyhow!("stored email: {err}"))),
        };
        self.record_mail("email_change_requested", outcome, user, client, None);
    }

    /// `POST /email/change/confirm`: the code sent to the new address (typed by the logged-in
    /// user) or the link's token moves the account to the new address, which then counts as
    /// proven. `EmailTaken` when another account took it meanwhile (nothing changes).
    pub async fn confirm_email_change(&self, proof: ChangeProof, client: Client) -> Result<User> {
        let (open, keep) = match &proof {
            ChangeProof::Code { access_token, code } => {
                let (user, session) = self.authenticate(access_token).await?;
                let open = self
                    .checked_code(Some((&user, code)), None, &[Purpose::ChangeEmail], &client)
                    .await?;
                (open, Some(session))
            }
            ChangeProof::Token(token) => (
                self.checked_code(None, Some(token), &[Purpose::ChangeEmail], &client)
                    .await?,
                None,
            ),
        };
        self.prove_address(open, keep, &client).await
    }

    /// Refuses unless the session's login is younger than `session.fresh_login_secs`.
    pub(super) async fn ensure_fresh_login(&self, session: Uuid) -> Result<()> {
        let started = self
            .store
            .session_started_at(session)
            .await?
            .ok_or(Error::ReauthenticationRequired)?;
        if Utc::now() - started > seconds(self.sessions.fresh_login_secs) {
            return Err(Error::ReauthenticationRequired);
        }
        Ok(())
    }

    /// `authd user verify-email`: an administrator vouches for a user's address.
    pub async fn mark_email_verified(&self, email: &Email) -> Result<User> {
        let user = self.user_by_email(email).await?;
        let user = self
            .store
            .mark_email_verified(user.id, Utc::now())
            .await?
            .ok_or(Error::UserNotFound)?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::EmailVerified)
                .user(user.id, &user.email)
                .detail(super::Actor::Cli.as_str()),
        )
        .await?;
        Ok(user)
    }
}
