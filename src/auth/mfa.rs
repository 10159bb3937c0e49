//! Authenticator apps (RFC 6238 TOTP) and recovery codes: enrolment, confirmation, turning
//! the app off, new recovery codes, and what an administrator can see and reset.
//!
//! The secret is sealed under the key-encryption key with the user's id as associated data, so
//! a sealed secret copied to another row opens nowhere. A code is accepted at most once: the
//! last accepted time step is stored and only a later one is taken, in one statement.

use chrono::Utc;
use uuid::Uuid;

use super::{Actor, Auth, Client, login_key, otp_key};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Otp, SecondFactor, User};
use crate::error::{Error, Result};
use crate::keys::{seal_bytes, unseal_bytes};
use crate::mail::Mail;
use crate::store::MfaState;
use crate::token::totp::{RecoveryCode, TotpSecret, generate_recovery_codes, qr_svg};

/// How long an enrolment waits for its first code.
pub const ENROLMENT_TTL_SECS: i64 = 600;

/// Recovery codes a user gets, shown once.
pub const RECOVERY_CODES: usize = 10;

/// A new enrolment, shown once: nothing changes for the user until its first code confirms it.
#[derive(Debug)]
pub struct Enrolment {
    /// The secret in base32, for typing into an app.
    pub secret: String,
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// What turns an authenticator app off: one of its codes, or the account's password.
#[derive(Debug)]
pub enum TotpProof {
    Code(Otp),
    Password(String),
}

/// The second factor of an account as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaSummary {
    pub user: User,
    pub recovery_codes_left: i64,
    /// An enrolment waiting for its first code.
    pub pending: bool,
}

/// The associated data that binds a sealed TOTP secret to its user.
fn secret_aad(user_id: Uuid) -> Vec<u8> {
    format!("authd totp secret v1\0{user_id}").into_bytes()
}

/// What a login asks for after the password, in a notice's words.
fn factor_words(factor: SecondFactor) -> &'static str {
    match factor {
        SecondFactor::Totp => "a code of your authenticator app",
        SecondFactor::Email => "a code sent by email",
        SecondFactor::None => "nothing more than the password",
    }
}

/// Seconds since the Unix epoch, for the time steps.
fn unix_now() -> u64 {
    u64::try_from(Utc::now().timestamp()).unwrap_or(0)
}

fn step_of(step: u64) -> i64 {
    i64::try_from(step).unwrap_or(i64::MAX)
}

impl Auth {
    /// The key sealing the secrets: the server's KEK, or the one an admin command was given.
    fn sealing_key(&self) -> Result<&[u8; 32]> {
        if let Some(kek) = &self.admin_kek {
            return Ok(kek);
        }
        Ok(self.sign_in()?.ring.kek())
    }

    fn open_secret(&self, user_id: Uuid, sealed: &[u8]) -> Result<TotpSecret> {
        let plain = unseal_bytes(self.sealing_key()?, &secret_aad(user_id), sealed)
            .map_err(|_| anyhow::anyhow!("a stored authenticator secret does not open"))?;
        TotpSecret::from_bytes(plain).ok_or_else(|| {
            Error::Internal(anyhow::anyhow!(
                "a stored authenticator secret is malformed"
            ))
        })
    }

    async fn mfa_of(&self, user_id: Uuid) -> Result<MfaState> {
        self.store
            .mfa_state(user_id)
            .await?
            .ok_or(Error::InvalidToken("this access token's user is gone"))
    }

    /// Recovery codes for a user: what they are shown, and what is stored.
    fn new_recovery_codes(&self, user_id: Uuid) -> Result<(Vec<String>, Vec<Vec<u8>>)> {
        let codes = &self.mailing()?.codes;
        let generated = generate_recovery_codes(RECOVERY_CODES);
        let hashes = generated
            .iter()
            .map(|code| codes.hash_recovery_code(user_id, code))
            .collect();
        Ok((
            generated.iter().map(RecoveryCode::display).collect(),
            hashes,
        ))
    }

    /// `POST /mfa/totp/enroll`: a new secret for the access token's user, waiting
    /// [`ENROLMENT_TTL_SECS`] for its first code. Needs a login less than
    /// `session.fresh_login_secs` old; refused while an app is already on (turn it off first).
    pub async fn enroll_totp(&self, access_token: &str) -> Result<Enrolment> {
        let (user, session) = self.authenticate(access_token).await?;
        self.ensure_fresh_login(session).await?;
        if user.second_factor == SecondFactor::Totp {
            return Err(Error::AlreadyEnrolled);
        }
        Ok(self.start_enrolment(&user).await?.0)
    }

    /// A new secret waiting for its first code, and its sealed form; `AlreadyEnrolled` when an
    /// app is on (checked in the statement that keeps it, so an enrolment racing a
    /// confirmation cannot leave a second app waiting).
    async fn start_enrolment(&self, user: &User) -> Result<(Enrolment, Vec<u8>)> {
        let secret = TotpSecret::generate();
        let sealed = seal_bytes(self.sealing_key()?, &secret_aad(user.id), secret.as_bytes())
            .map_err(|_| anyhow::anyhow!("cannot seal an authenticator secret"))?;
        let expires_at = Utc::now() + chrono::Duration::seconds(ENROLMENT_TTL_SECS);
        if !self
            .store
            .set_totp_pending(user.id, &sealed, expires_at)
            .await?
        {
            return Err(Error::AlreadyEnrolled);
        }
        let otpauth_uri = secret.otpauth_uri(&self.product_name, &user.email);
        // About a millisecond of CPU (the QR code's masks are scored): off the async workers.
        // An address and a product name of their longest still fit a QR code by far.
        let uri = otpauth_uri.clone();
        let qr_svg = tokio::task::spawn_blocking(move || qr_svg(&uri))
            .await
            .map_err(|err| anyhow::anyhow!("drawing the QR code failed: {err}"))?
            .ok_or_else(|| anyhow::anyhow!("the otpauth URI does not fit a QR code"))?;
        Ok((
            Enrolment {
                secret: secret.to_base32(),
                qr_svg,
                otpauth_uri,
            },
            sealed,
        ))
    }

    /// `POST /mfa/totp/confirm`: the first right code of the pending enrolment makes the app
    /// the user's second factor, ends their other sessions and gives them
    /// [`RECOVERY_CODES`] recovery codes (shown once). Wrong codes count toward a lock like
    /// wrong passwords.
    pub async fn confirm_totp(
        &self,
        access_token: &str,
        code: &Otp,
        client: Client,
    ) -> Result<Vec<String>> {
        let (user, session) = self.authenticate(access_token).await?;
        let key = format!("totp-confirm:{}", user.id);
        self.reserve(&key, &self.login_rule()).await?;
        let state = self.mfa_of(user.id).await?;
        let Some((sealed, expires_at)) = state.pending else {
            return Err(Error::InvalidCode);
        };
        if expires_at <= Utc::now() {
            return Err(Error::InvalidCode);
        }
        let secret = self.open_secret(user.id, &sealed)?;
        let step = secret
            .check(code.as_str(), unix_now())
            .ok_or(Error::InvalidCode)?;
        let (shown, hashes) = self.new_recovery_codes(user.id)?;
        let ended = self
            .store
            .confirm_totp(
                user.id,
                &sealed,
                step_of(step),
                &hashes,
                Some(session),
                Utc::now(),
            )
            .await?
            .ok_or(Error::InvalidCode)?;
        self.clear_failures(&key).await?;
        tracing::info!(user_id = %user.id, "authenticator app on");
        if let Some(now) = self.store.find_user(user.id).await? {
            self.notify_second_factor(now, client.clone());
        }
        self.audit.record(
            SecurityEvent::new(EventKind::TotpEnabled)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("by user: {ended} other sessions ended")),
        );
        Ok(shown)
    }

    /// The time step `code` is the app's (sealed in `sealed`) code of now, within a step
    /// either side; not yet whether it was taken before.
    pub(super) fn app_step(&self, user_id: Uuid, sealed: &[u8], code: &Otp) -> Result<Option<i64>> {
        let secret = self.open_secret(user_id, sealed)?;
        Ok(secret.check(code.as_str(), unix_now()).map(step_of))
    }

    /// Checks a code of the user's app now and uses its time step up: a code is taken at most
    /// once, and never one of a step before the last one taken. Counted and recorded like a
    /// login's second step: wrong codes toward the second-step lock.
    async fn check_totp_now(
        &self,
        user: &User,
        state: &MfaState,
        code: &Otp,
        client: &Client,
    ) -> Result<()> {
        let Some(sealed) = &state.totp_secret else {
            return Err(Error::validation(
                "code",
                "this account has no authenticator app",
            ));
        };
        let key = otp_key(user.id);
        let event = |kind| {
            SecurityEvent::new(kind)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail("authenticator app")
        };
        let locks_if_wrong = match self.reserve(&key, &self.otp_rule()).await {
            Ok(locks) => locks,
            Err(err) => {
                self.audit.record(event(EventKind::CodeThrottled));
                return Err(err);
            }
        };
        let taken = match self.app_step(user.id, sealed, code)? {
            Some(step) => self.store.accept_totp_step(user.id, step).await?,
            None => false,
        };
        if !taken {
            self.audit.record(event(EventKind::CodeRejected));
            if locks_if_wrong {
                self.audit.record(event(EventKind::SecondFactorLocked));
            }
            return Err(Error::InvalidCode);
        }
        self.clear_failures(&key).await
    }

    /// `DELETE /mfa/totp`: turns the app off with one of its codes or the password; the
    /// recovery codes go with it. The second step is the emailed code again if it is on, else
    /// none.
    pub async fn disable_totp(
        &self,
        access_token: &str,
        proof: TotpProof,
        client: Client,
    ) -> Result<User> {
        let (user, session) = self.authenticate(access_token).await?;
        let state = self.mfa_of(user.id).await?;
        if state.totp_secret.is_none() {
            return Err(Error::validation(
                "code",
                "this account has no authenticator app",
            ));
        }
        match &proof {
            TotpProof::Code(code) => self.check_totp_now(&user, &state, code, &client).await?,
            // The password alone is what a thief who has it also has: only with a recent login.
            TotpProof::Password(password) => {
                self.ensure_fresh_login(session).await?;
                self.check_own_password(&user, password, &client).await?
            }
        }
        // The other sessions, and logins waiting for a code, end with the factor that guarded
        // them.
        self.store
            .remove_totp(user.id, Some(Some(session)), Utc::now())
            .await?;
        self.audit.record(
            SecurityEvent::new(EventKind::TotpDisabled)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail("by user"),
        );
        let now = self.current_user(access_token).await?;
        self.notify_second_factor(now.clone(), client);
        Ok(now)
    }

    /// Checks the user's own password, counted toward the account's password lock like a
    /// login (a wrong one is a 422 on `password`).
    async fn check_own_password(&self, user: &User, password: &str, client: &Client) -> Result<()> {
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        let key = login_key(&email);
        let slot = self.hasher.admit()?;
        self.reserve(&key, &self.login_rule()).await?;
        let credentials = self.store.find_credentials(&email).await?;
        let stored = credentials.as_ref().map(|c| c.password_hash.as_str());
        if !self.hasher.verify_admitted(slot, password, stored).await? {
            self.audit.record(
                SecurityEvent::new(EventKind::LoginFailed)
                    .user(user.id, &user.email)
                    .client(client.ip)
                    .detail("to turn off the authenticator app"),
            );
            return Err(Error::validation(
                "password",
                "is not this account's password",
            ));
        }
        self.clear_failures(&key).await
    }

    /// `POST /mfa/recovery-codes`: a code of the app now, then a whole new set of recovery
    /// codes (the old ones stop working).
    pub async fn regenerate_recovery_codes(
        &self,
        access_token: &str,
        code: &Otp,
        client: Client,
    ) -> Result<Vec<String>> {
        let (user, _) = self.authenticate(access_token).await?;
        let state = self.mfa_of(user.id).await?;
        self.check_totp_now(&user, &state, code, &client).await?;
        let (shown, hashes) = self.new_recovery_codes(user.id)?;
        if !self
            .store
            .replace_recovery_codes(user.id, &hashes, Utc::now())
            .await?
        {
            return Err(Error::validation(
                "code",
                "this account has no authenticator app",
            ));
        }
        self.audit.record(
            SecurityEvent::new(EventKind::RecoveryCodesRegenerated)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        Ok(shown)
    }

    /// Tells the user their second step changed, and what a login asks for now.
    fn notify_second_factor(&self, user: User, client: Client) {
        let factor = factor_words(user.second_factor);
        self.notify(
            "second_factor_changed",
            user,
            client,
            Mail::SecondFactorChanged { factor },
        );
    }

    /// Recovery codes the access token's user has left (for `GET /users/me`).
    pub async fn recovery_codes_left(&self, user_id: Uuid) -> Result<i64> {
        Ok(self.mfa_of(user_id).await?.recovery_codes_left)
    }

    /// `authd user mfa EMAIL`.
    pub async fn mfa_summary(&self, email: &Email) -> Result<MfaSummary> {
        let user = self.user_by_email(email).await?;
        let state = self
            .store
            .mfa_state(user.id)
            .await?
            .ok_or(Error::UserNotFound)?;
        Ok(MfaSummary {
            recovery_codes_left: state.recovery_codes_left,
            pending: state.pending.is_some(),
            user,
        })
    }

    /// `authd user mfa EMAIL --reset`: removes the app and the recovery codes, ends every
    /// session; the user as they are now (their second step: email or none). None when there
    /// was nothing to remove.
    pub async fn reset_mfa(&self, email: &Email) -> Result<Option<User>> {
        let user = self.user_by_email(email).await?;
        if !self
            .store
            .remove_totp(user.id, Some(None), Utc::now())
            .await?
        {
            return Ok(None);
        }
        let user = self
            .store
            .find_user(user.id)
            .await?
            .ok_or(Error::UserNotFound)?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::MfaReset)
                .user(user.id, &user.email)
                .detail(format!(
                    "{}: authenticator app and recovery codes removed, sessions ended; second step now {}",
                    Actor::Cli.as_str(),
                    user.second_factor.as_str()
                )),
        )
        .await?;
        Ok(Some(user))
    }

    /// `authd user totp-enroll EMAIL` (service accounts, tests): an app on at once, without
    /// the confirming code; the user's sessions end. The enrolment (to print) and the recovery
    /// codes.
    pub async fn enroll_totp_for(&self, email: &Email) -> Result<(Enrolment, Vec<String>)> {
        let user = self.user_by_email(email).await?;
        let (enrolment, sealed) = self.start_enrolment(&user).await?;
        let (shown, hashes) = self.new_recovery_codes(user.id)?;
        // Step 0: every code of the app from now on is later.
        self.store
            .confirm_totp(user.id, &sealed, 0, &hashes, None, Utc::now())
            .await?
            // Replaced by an enrolment of the user's own meanwhile: theirs wins.
            .ok_or(Error::AlreadyEnrolled)?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::TotpEnabled)
                .user(user.id, &user.email)
                .detail(format!(
                    "{}: enrolled without a confirming code, sessions ended",
                    Actor::Cli.as_str()
                )),
        )
        .await?;
        // A command ends before a background task would: the notice goes out now.
        if let Some(now) = self.store.find_user(user.id).await? {
            let to = Email::parse(&now.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
            let mail = Mail::SecondFactorChanged {
                factor: factor_words(now.second_factor),
            };
            let outcome = self
                .send_notice("second_factor_changed", &to, now.id, mail)
                .await;
            self.record_mail(
                "second_factor_changed",
                outcome,
                &now,
                &Client::default(),
                None,
            );
        }
        Ok((enrolment, shown))
    }
}
