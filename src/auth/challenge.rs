//! The second step of a login: the emailed code (its quota, its challenge) and its exchange for
//! a session.

use chrono::Utc;
use uuid::Uuid;

use super::sessions::{SessionProof, SessionTokens};
use super::{Auth, Client, SignIn, mail_key, micros_of, otp_key, seconds_until};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Otp, User};
use crate::error::{Error, Result};
use crate::store::{Attempt, ChallengeAnswer, NewChallenge};
use crate::token::codes::generate_code;
use crate::token::totp::RecoveryCode;
use crate::token::{Claims, IssuedToken, TokenError, TokenKind, Verified};

/// An answer to the second step of a login.
#[derive(Debug)]
pub enum SecondStepAnswer {
    /// Six digits: the emailed code, or the authenticator app's for an account with one.
    Otp(Otp),
    /// One of the account's recovery codes.
    RecoveryCode(RecoveryCode),
}

/// How the answer to a challenge reaches the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// A code is emailed.
    Email,
    /// The user's authenticator app shows it; nothing is sent.
    App,
}

/// The code-email quota of one account.
#[derive(Debug, Clone, Copy)]
pub struct CodeEmailQuota {
    pub max_per_account: u32,
    pub window_secs: u64,
}

pub(super) fn dead_challenge() -> Error {
    Error::InvalidToken("this login challenge is used, expired or out of attempts: log in again")
}

impl Auth {
    /// Takes one code email from the account's quota; 429 once it is used up.
    pub(super) async fn take_code_email(&self, user_id: Uuid) -> Result<()> {
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

    /// Stores a hashed code, emails it, and only then retires older challenges and hands out
    /// the challenge token. If the mail fails the new challenge is deleted, and since its
    /// token was never issued nothing usable is left behind. For an authenticator app nothing
    /// is emailed: the challenge's code is one nobody knows, and its answers are checked
    /// against the app (see `verify_otp`).
    pub(super) async fn start_challenge(
        &self,
        sign_in: &SignIn,
        user: &User,
        verified_hash: &str,
        delivery: Delivery,
    ) -> Result<IssuedToken> {
        let mailing = self.mailing()?;
        let email = Email::parse(&user.email).map_err(|e| anyhow::anyhow!("stored email: {e}"))?;
        // Time-ordered, so a challenge retires only the ones started before it: concurrent logins
        // of one user cannot retire each other's newest challenge.
        let id = Uuid::now_v7();
        let code = generate_code();
        let ttl = sign_in.tokens.ttl_secs(TokenKind::Challenge);
        let now = Utc::now();
        // Refused if the password was changed (reset) since the login checked it.
        if !self
            .store
            .insert_challenge(&NewChallenge {
                id,
                user_id: user.id,
                code_hash: mailing.codes.hash(id, code.as_str()),
                expires_at: now + chrono::Duration::seconds(ttl as i64),
                created_at: now,
                password_hash: verified_hash.to_owned(),
            })
            .await?
        {
            return Err(Error::InvalidCredentials);
        }
        if delivery == Delivery::Email
            && let Err(err) = mailing.mailer.send_code(&email, &code, ttl).await
        {
            if let Err(cleanup) = self.store.delete_challenge(id).await {
                tracing::warn!(error = %cleanup, "could not delete undelivered challenge");
            }
            return Err(err);
        }
        self.store
            .retire_challenges_except(user.id, id, Utc::now())
            .await?;
        if delivery == Delivery::Email {
            tracing::info!(user_id = %user.id, "login code sent");
        }
        self.check_signer().await?;
        sign_in.tokens.issue(TokenKind::Challenge, user.id, id)
    }

    /// Exchanges a challenge token and the answer to its second step (the emailed code, the
    /// authenticator app's code, or a recovery code) for an access token, at most once.
    pub async fn verify_otp(
        &self,
        challenge_token: &str,
        answer: &SecondStepAnswer,
        client: Client,
    ) -> Result<SessionTokens> {
        let sign_in = self.sign_in()?;
        let codes = &self.mailing()?.codes;
        // Nothing used up while no token could be issued for it.
        self.ensure_can_sign().await?;
        // A dead challenge is refused before anything is reserved: it is not a guess.
        let claims = self.open_challenge(challenge_token).await?;
        let key = otp_key(claims.sub);
        let event = |kind| {
            let mut event = SecurityEvent::new(kind).client(client.ip);
            event.user_id = Some(claims.sub);
            event
        };
        let locks_if_wrong = match self.reserve(&key, &self.otp_rule()).await {
            Ok(locks) => locks,
            Err(err) => {
                self.audit.record(event(EventKind::CodeThrottled));
                self.metrics.throttle("code");
                return Err(err);
            }
        };
        // The answer is checked against what the user has now: an app once it is on (an emailed
        // code of the same challenge is then never accepted), else the emailed code.
        let state = self.store.mfa_state(claims.sub).await?;
        let app = state.as_ref().and_then(|s| s.totp_secret.clone());
        let hash;
        let checked = match (answer, app) {
            (SecondStepAnswer::Otp(otp), None) => {
                hash = codes.hash_otp(claims.jti, otp);
                ChallengeAnswer::Code(&hash)
            }
            (SecondStepAnswer::Otp(otp), Some(sealed)) => {
                match self.app_step(claims.sub, &sealed, otp)? {
                    Some(step) => ChallengeAnswer::AppStep(step),
                    None => ChallengeAnswer::Wrong,
                }
            }
            (SecondStepAnswer::RecoveryCode(code), _) => {
                hash = codes.hash_recovery_code(claims.sub, code);
                ChallengeAnswer::RecoveryCode(&hash)
            }
        };
        let via = match checked {
            ChallengeAnswer::Code(_) => "emailed code",
            ChallengeAnswer::RecoveryCode(_) => "recovery code",
            ChallengeAnswer::Passkey(_) => "passkey",
            ChallengeAnswer::AppStep(_) | ChallengeAnswer::Wrong => "authenticator app",
        };
        let event = |kind| event(kind).detail(via);
        match self
            .store
            .attempt_challenge(
                claims.jti,
                claims.sub,
                checked,
                self.max_attempts,
                Utc::now(),
            )
            .await?
        {
            Attempt::Accepted => {
                tracing::info!(user_id = %claims.sub, "second step succeeded");
                self.clear_failures(&key).await?;
                self.audit.record(event(match answer {
                    SecondStepAnswer::RecoveryCode(_) => EventKind::RecoveryCodeUsed,
                    SecondStepAnswer::Otp(_) => EventKind::CodeAccepted,
                }));
                self.metrics.code("accepted");
                self.open_session(
                    sign_in,
                    claims.sub,
                    &client,
                    SessionProof::SecondStep,
                    dead_challenge,
                )
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

    /// The claims of a live challenge token: verified, its key not revoked (on any instance),
    /// its challenge open.
    pub(super) async fn open_challenge(&self, token: &str) -> Result<Claims> {
        let Verified { claims, kid } = self.verified(TokenKind::Challenge, token).await?;
        if let Some(kid) = kid
            && self.store.signing_key_state(&kid).await?.as_deref() == Some("revoked")
        {
            return Err(TokenError::RevokedKey.into());
        }
        if !self
            .store
            .challenge_is_open(claims.jti, claims.sub, self.max_attempts, Utc::now())
            .await?
        {
            return Err(dead_challenge());
        }
        Ok(claims)
    }
}
