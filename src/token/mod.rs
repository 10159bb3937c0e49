//! What a token is: the two kinds of JSON Web Token authd issues (access and challenge, kept
//! strictly apart), their claims, and issuing them. Verification (with the cache of verified
//! access tokens) is in `verify` and `cache`, `authd token inspect`'s reading in `inspect`; the
//! refresh tokens and the emailed one-time codes, which are no JWTs, in `refresh` and `codes`.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::sync::{Arc, RwLock};

use crate::config::JwtSettings;
use crate::error::Error;
use crate::keys::KeySet;

mod cache;
pub mod codes;
mod inspect;
pub mod refresh;
pub mod totp;
mod verify;

use cache::{MAX_VERIFIED_TOKENS, VerifiedTokens};
pub use inspect::{Inspection, SignerSeen};
use verify::Validations;

/// The algorithms authd signs with or accepts, each only with a key of its own kind.
pub const ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::HS256];

/// How far in the future `iat` may be: another instance's clock may run this much ahead of
/// ours. A token issued further ahead was not issued by a sane clock, and is refused.
pub const MAX_IAT_SKEW_SECS: i64 = 60;

/// What a token is for. Each verifier accepts only its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Grants access to the API (`typ: at+jwt`, RFC 9068).
    Access,
    /// Lets its holder submit one-time codes for one login challenge, nothing else.
    Challenge,
}

impl TokenKind {
    pub fn typ(self) -> &'static str {
        match self {
            TokenKind::Access => "at+jwt",
            TokenKind::Challenge => "authd-otp-challenge+jwt",
        }
    }

    pub fn from_typ(typ: &str) -> Option<TokenKind> {
        [TokenKind::Access, TokenKind::Challenge]
            .into_iter()
            .find(|k| k.typ().eq_ignore_ascii_case(typ))
    }

    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Access => "access",
            TokenKind::Challenge => "challenge",
        }
    }
}

/// The registered claims authd puts in every token; all but `nbf` are required on the way
/// back in, and `nbf` is honoured when present (authd itself never writes it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: Uuid,
    pub aud: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub iat: i64,
    pub jti: Uuid,
    /// The session an access token belongs to (none in challenge tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

/// Who an access token speaks for: the user and the session it was issued in, and the key
/// that signed it (none for HS256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user: Uuid,
    pub session: Option<Uuid>,
    pub kid: Option<Arc<str>>,
}

/// Why a token was refused, precise enough for `authd token inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT")]
    NotAJwt,
    #[error("algorithm is not ES256, EdDSA or HS256, or not the algorithm of the key it names")]
    WrongAlgorithm,
    #[error("signed by a key authd does not know (unknown or missing kid)")]
    UnknownKey,
    #[error("signed by a revoked key")]
    RevokedKey,
    #[error(
        "an HS256 token issued after authd moved to asymmetric keys, or living longer than its kind"
    )]
    Hs256Superseded,
    #[error("wrong token kind")]
    WrongKind,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("a required claim is missing or malformed")]
    BadClaims,
    #[error("the header has a crit parameter (extensions authd does not implement)")]
    CriticalHeader,
    #[error("not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("issued in the future (iat more than {}s ahead)", MAX_IAT_SKEW_SECS)]
    IssuedInFuture,
}

impl From<TokenError> for Error {
    fn from(err: TokenError) -> Self {
        Error::InvalidToken(match err {
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::WrongKind => "this kind of token is not accepted here",
            _ => "the token is not valid",
        })
    }
}

/// A freshly signed token and what the client needs to know about it.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub jti: Uuid,
    pub expires_in: u64,
    pub expires_at: DateTime<Utc>,
}

/// Signing and verification keys plus the claims they stamp and expect.
///
/// `jsonwebtoken` signs and verifies: [`TokenKeys::verify`] is `jsonwebtoken::decode` with the
/// key the token's `kid` names (or the HS256 secret) and a [`Validation`] per kind and algorithm
/// built once here, after a look at the header for what that crate does not judge (`typ`,
/// `crit`, the key's own algorithm), and followed by the claim checks it does not make (`iat`).
/// The key set is shared by every clone and replaced whole by [`TokenKeys::install`].
#[derive(Clone)]
pub struct TokenKeys {
    keys: Arc<RwLock<Arc<KeySet>>>,
    issuer: String,
    access_audience: String,
    challenge_audience: String,
    access_ttl_secs: u64,
    challenge_ttl_secs: u64,
    validations: Arc<Validations>,
    /// Access tokens that passed [`TokenKeys::verify`], shared by every clone.
    verified: VerifiedTokens,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.access_audience)
            .finish_non_exhaustive()
    }
}

/// A token that passed verification, and the key that signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    /// The `kid` of its key; None for the HS256 secret.
    pub kid: Option<Arc<str>>,
}

impl TokenKeys {
    /// Keys that sign and verify with the HS256 secret alone.
    pub fn new(secret: &[u8], jwt: &JwtSettings) -> TokenKeys {
        TokenKeys::with_set(KeySet::hs256_only(secret), jwt)
    }

    /// Keys that sign and verify with `set` until another is installed.
    pub fn with_set(set: KeySet, jwt: &JwtSettings) -> TokenKeys {
        crate::keys::crypto::install();
        let challenge_audience = format!("{}/otp-challenge", jwt.audience);
        TokenKeys {
            keys: Arc::new(RwLock::new(Arc::new(set))),
            validations: Arc::new(Validations::new(
                &jwt.issuer,
                &jwt.audience,
                &challenge_audience,
            )),
            issuer: jwt.issuer.clone(),
            access_audience: jwt.audience.clone(),
            challenge_audience,
            access_ttl_secs: jwt.access_ttl_secs,
            challenge_ttl_secs: jwt.challenge_ttl_secs,
            verified: VerifiedTokens::with_capacity(MAX_VERIFIED_TOKENS),
        }
    }

    /// How long after it retired a key may still have signed a token that has not expired: an
    /// instance may sign with it until it reads the keys again (`keys.refresh_secs`), the token
    /// then lives as long as the longer of the two kinds, and `iat` may be skewed.
    pub fn retired_horizon_secs(settings: &crate::config::Settings) -> u64 {
        let jwt = &settings.jwt;
        jwt.access_ttl_secs
            .max(jwt.challenge_ttl_secs)
            .saturating_add(settings.keys.refresh_secs)
            .saturating_add(MAX_IAT_SKEW_SECS as u64)
    }

    /// The key set in use now.
    pub fn key_set(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the key set. When it withdraws a key (revoked or dropped) the remembered
    /// verified tokens are forgotten, so none signed by that key is taken on trust again.
    pub fn install(&self, set: KeySet) {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let withdraws = set.withdraws_from(&keys);
        *keys = Arc::new(set);
        drop(keys);
        if withdraws {
            self.verified.clear();
        }
    }

    /// The audience a token of `kind` carries: challenge tokens never match an API audience.
    pub fn audience(&self, kind: TokenKind) -> &str {
        match kind {
            TokenKind::Access => &self.access_audience,
            TokenKind::Challenge => &self.challenge_audience,
        }
    }

    pub fn ttl_secs(&self, kind: TokenKind) -> u64 {
        match kind {
            TokenKind::Access => self.access_ttl_secs,
            TokenKind::Challenge => self.challenge_ttl_secs,
        }
    }

    pub fn issue(&self, kind: TokenKind, subject: Uuid, jti: Uuid) -> Result<IssuedToken, Error> {
        self.issue_at(kind, subject, jti, Utc::now())
    }

    /// An access token of `session`, issued now with a fresh `jti`.
    pub fn issue_access(&self, subject: Uuid, session: Uuid) -> Result<IssuedToken, Error> {
        self.sign(
            TokenKind::Access,
            subject,
            Uuid::new_v4(),
            Some(session),
            Utc::now(),
        )
    }

    /// Signs a token as if it were issued at `now` (tests use a past `now` for expired tokens).
    pub fn issue_at(
        &self,
        kind: TokenKind,
        subject: Uuid,
        jti: Uuid,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, Error> {
        self.sign(kind, subject, jti, None, now)
    }

    fn sign(
        &self,
        kind: TokenKind,
        subject: Uuid,
        jti: Uuid,
        sid: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, Error> {
        let ttl = self.ttl_secs(kind);
        let expires_at = now + chrono::Duration::seconds(ttl as i64);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: subject,
            aud: self.audience(kind).to_owned(),
            exp: expires_at.timestamp(),
            nbf: None,
            iat: now.timestamp(),
            jti,
            sid,
        };
        let set = self.key_set();
        // A set that cannot sign (its current key does not open: see the log and /readyz)
        // is an outage of this instance, not a fault of the request.
        let signer = set
            .signer
            .as_ref()
            .ok_or(Error::Unavailable("signing key"))?;
        let mut header = Header::new(signer.algorithm);
        header.typ = Some(kind.typ().to_string());
        header.kid = signer.kid.clone();
        let token = jsonwebtoken::encode(&header, &claims, &signer.key)
            .map_err(|e| Error::Internal(anyhow::Error::new(e).context("cannot sign token")))?;
        Ok(IssuedToken {
            token,
            jti,
            expires_in: ttl,
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests;
