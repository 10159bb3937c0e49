//! JSON Web Tokens: issuing and verifying access and challenge tokens, kept strictly apart.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::JwtSettings;
use crate::error::Error;
use crate::keys::{KeySet, KeyState};

pub mod codes;
pub mod refresh;

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

/// One [`Validation`] per kind and algorithm: each accepts exactly one algorithm.
struct Validations {
    access: [Validation; 3],
    challenge: [Validation; 3],
}

impl Validations {
    fn new(issuer: &str, access_audience: &str, challenge_audience: &str) -> Validations {
        Validations {
            access: ALGORITHMS.map(|alg| validation(alg, issuer, access_audience)),
            challenge: ALGORITHMS.map(|alg| validation(alg, issuer, challenge_audience)),
        }
    }

    fn get(&self, kind: TokenKind, algorithm: Algorithm) -> &Validation {
        let at = ALGORITHMS.iter().position(|a| *a == algorithm).unwrap_or(0);
        match kind {
            TokenKind::Access => &self.access[at],
            TokenKind::Challenge => &self.challenge[at],
        }
    }
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

    /// Verifies a token of exactly `kind`: header (ES256 or EdDSA with the `kid` of a key of
    /// that algorithm that is not revoked, or HS256 without `kid` when the HS256 secret is
    /// held; the kind's `typ`; no `crit`), signature, and every claim: `exp` in the future and
    /// `nbf`, if present, not (no leeway either way), `iat` at most [`MAX_IAT_SKEW_SECS`]
    /// ahead, our issuer and the kind's audience, and `sub`, `iat`, `jti` present and well
    /// formed.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<Claims, TokenError> {
        Ok(self.verify_keyed(kind, token)?.claims)
    }

    /// [`TokenKeys::verify`], also naming the key that signed the token.
    pub fn verify_keyed(&self, kind: TokenKind, token: &str) -> Result<Verified, TokenError> {
        self.verify_at(kind, token, Utc::now().timestamp())
    }

    /// [`TokenKeys::verify`] with `iat` judged as of `now` (Unix seconds); `exp` and `nbf` are
    /// judged by `jsonwebtoken` against the system clock.
    fn verify_at(&self, kind: TokenKind, token: &str, now: i64) -> Result<Verified, TokenError> {
        let (algorithm, kid) = check_header(kind, header_segment(token)?)?;
        let set = self.key_set();
        let mut hs256_before = None;
        let key = match &kid {
            Some(kid) => {
                let named = set.by_kid.get(kid.as_ref()).ok_or(TokenError::UnknownKey)?;
                if named.state == KeyState::Revoked {
                    return Err(TokenError::RevokedKey);
                }
                // The algorithm is the key's, never the header's choice: an HS256 token "signed"
                // with a public key as the secret names an ES256 key and is refused here.
                if named.algorithm != algorithm {
                    return Err(TokenError::WrongAlgorithm);
                }
                &named.key
            }
            None if algorithm == Algorithm::HS256 => {
                let hs256 = set.hs256.as_ref().ok_or(TokenError::WrongAlgorithm)?;
                hs256_before = hs256.issued_before;
                &hs256.key
            }
            None => return Err(TokenError::UnknownKey),
        };
        let claims =
            jsonwebtoken::decode::<Claims>(token, key, self.validations.get(kind, algorithm))
                .map_err(|err| refusal(token, err.kind()))?
                .claims;
        if claims.iat > now.saturating_add(MAX_IAT_SKEW_SECS) {
            return Err(TokenError::IssuedInFuture);
        }
        if let Some(before) = hs256_before {
            let lifetime = i64::try_from(self.ttl_secs(kind)).unwrap_or(i64::MAX);
            if claims.iat > before || claims.exp.saturating_sub(claims.iat) > lifetime {
                return Err(TokenError::Hs256Superseded);
            }
        }
        Ok(Verified { claims, kid })
    }
}

/// What `jsonwebtoken` checks of a token of one kind and algorithm: that algorithm only, our
/// issuer, the kind's audience, `exp`, `iss`, `aud` and `sub` present (`iat` and `jti` are
/// required by [`Claims`]), `exp` and `nbf` without leeway.
fn validation(algorithm: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = 0;
    // jsonwebtoken accepts a token up to and including the second of its `exp`; RFC 7519
    // §4.1.4 only before it. Refusing tokens with less than a second left is exactly that.
    validation.reject_tokens_expiring_in_less_than = 1;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation
}

/// The reason `authd token inspect` and the API give for what `jsonwebtoken` refused.
fn refusal(token: &str, kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => TokenError::WrongAlgorithm,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        // The header was already read as JSON by `check_header`, but jsonwebtoken's `Header`
        // is stricter (a `kid` that is not a string, say): that is a bad header, not bad claims.
        ErrorKind::Json(_) if jsonwebtoken::decode_header(token).is_err() => TokenError::NotAJwt,
        ErrorKind::MissingRequiredClaim(_)
        | ErrorKind::InvalidClaimFormat(_)
        | ErrorKind::InvalidSubject
        | ErrorKind::Json(_) => TokenError::BadClaims,
        // The shape (segments, base64, UTF-8), or an `exp` of 0 that no issuer writes.
        _ => TokenError::NotAJwt,
    }
}

impl TokenKeys {
    /// Verifies an access token as [`TokenKeys::verify`] does and returns its subject, doing
    /// the verification once per token rather than once per request: a token that passed is
    /// remembered (the whole token is the key), and the same token seen again only has its
    /// expiry checked. A token that differs in any byte from a remembered one is verified in
    /// full.
    pub fn access_subject(&self, token: &str) -> Result<Subject, TokenError> {
        self.access_subject_at(token, Utc::now().timestamp())
    }

    fn access_subject_at(&self, token: &str, now: i64) -> Result<Subject, TokenError> {
        if let Some(known) = self.verified.get(token) {
            return if known.exp <= now {
                Err(TokenError::Expired)
            } else {
                Ok(known.subject)
            };
        }
        // Only a token that passes every check is remembered; the hit path above then only
        // needs `exp`, because `nbf` and `iat` once passed stay passed as time goes on (and a
        // withdrawn key clears the whole set, see `install`).
        let Verified { claims, kid } = self.verify_at(TokenKind::Access, token, now)?;
        let subject = Subject {
            user: claims.sub,
            session: claims.sid,
            kid,
        };
        self.verified.insert(token, subject.clone(), claims.exp);
        Ok(subject)
    }
}

/// Most access tokens remembered as verified. Only tokens that passed verification get in, so
/// the set grows no faster than logins (bcrypt-bound, a few per second per core) and holds the
/// tokens in use; each leaves at its `exp`, and past the bound `moka` evicts the least used.
const MAX_VERIFIED_TOKENS: u64 = 10_000;

/// What the cache keeps of a verified access token besides the token itself.
#[derive(Debug, Clone)]
struct VerifiedToken {
    subject: Subject,
    exp: i64,
}

/// Verified access tokens, keyed by the whole token: a token reusing a known signature with
/// other claims or another header is another key, and is verified in full.
#[derive(Clone)]
struct VerifiedTokens {
    tokens: moka::sync::Cache<Box<str>, VerifiedToken>,
}

/// Each remembered token leaves the cache at its own `exp`.
struct UntilExp;

impl moka::Expiry<Box<str>, VerifiedToken> for UntilExp {
    fn expire_after_create(
        &self,
        _token: &Box<str>,
        known: &VerifiedToken,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(until(known.exp))
    }

    fn expire_after_update(
        &self,
        _token: &Box<str>,
        known: &VerifiedToken,
        _updated_at: std::time::Instant,
        _until_now: Option<Duration>,
    ) -> Option<Duration> {
        Some(until(known.exp))
    }
}

/// How long from now until `exp` (Unix seconds); zero if it has passed.
fn until(exp: i64) -> Duration {
    let exp = Duration::from_secs(u64::try_from(exp).unwrap_or(0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    exp.saturating_sub(now)
}

impl VerifiedTokens {
    fn with_capacity(capacity: u64) -> VerifiedTokens {
        VerifiedTokens {
            tokens: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// The subject and expiry of `token` if it was verified before.
    fn get(&self, token: &str) -> Option<VerifiedToken> {
        self.tokens.get(token)
    }

    fn insert(&self, token: &str, subject: Subject, exp: i64) {
        self.tokens
            .insert(token.into(), VerifiedToken { subject, exp });
    }

    fn clear(&self) {
        self.tokens.invalidate_all();
    }

    #[cfg(test)]
    fn len(&self) -> u64 {
        self.tokens.run_pending_tasks();
        self.tokens.entry_count()
    }
}

/// The first of exactly three segments.
fn header_segment(token: &str) -> Result<&str, TokenError> {
    let mut segments = token.split('.');
    match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(header), Some(_), Some(_), None) => Ok(header),
        _ => Err(TokenError::NotAJwt),
    }
}

/// What `jsonwebtoken` leaves to its caller in the header, read before the signature is
/// checked so the reason given is the header's: `alg` must be one authd uses (jsonwebtoken
/// checks it too, but reads an `alg` it does not know, such as `none`, as malformed JSON),
/// `typ` the kind's, no `crit`, not even `null` (which its `Header` cannot tell from absent),
/// and `kid`, if present, a string. Gives the algorithm and the `kid`.
fn check_header(
    kind: TokenKind,
    segment: &str,
) -> Result<(Algorithm, Option<Arc<str>>), TokenError> {
    let header = decode_segment(segment).ok_or(TokenError::NotAJwt)?;
    let algorithm = match header.get("alg").and_then(serde_json::Value::as_str) {
        Some("ES256") => Algorithm::ES256,
        Some("EdDSA") => Algorithm::EdDSA,
        Some("HS256") => Algorithm::HS256,
        _ => return Err(TokenError::WrongAlgorithm),
    };
    let typ = header.get("typ").and_then(serde_json::Value::as_str);
    if typ.and_then(TokenKind::from_typ) != Some(kind) {
        return Err(TokenError::WrongKind);
    }
    // RFC 7515 §4.1.11: a recipient must refuse extensions it does not understand, and authd
    // understands none (RFC 8725 §3.1 asks for exactly this).
    if header.get("crit").is_some() {
        return Err(TokenError::CriticalHeader);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(kid)) => Some(Arc::from(kid.as_str())),
        Some(_) => return Err(TokenError::NotAJwt),
    };
    Ok((algorithm, kid))
}

// ---- Inspection: what a token says about itself, and whether authd would accept it ----

/// Everything that can be read from a token without trusting it, and the verifier's verdict.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The decoded header, if the first segment is base64url JSON.
    pub header: Option<serde_json::Value>,
    /// The decoded claims, if the second segment is base64url JSON, whatever they contain.
    pub claims: Option<serde_json::Value>,
    /// The kind named by the header's `typ`, if it names one authd issues.
    pub kind: Option<TokenKind>,
    /// `iat`, if it is a valid timestamp.
    pub issued_at: Option<DateTime<Utc>>,
    /// `exp`, if it is a valid timestamp.
    pub expires_at: Option<DateTime<Utc>>,
    /// The claims if authd accepts this token as its own kind, or exactly why it does not.
    pub verdict: Result<Claims, TokenError>,
    /// What signed it, as far as the header says and the key set knows.
    pub signer: SignerSeen,
}

/// The key a token names, and what the key set knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerSeen {
    /// The header names no `kid`, and its `alg` is HS256: the HS256 secret.
    Hs256Secret,
    /// The header names this `kid`; its state if the key set has it.
    Key {
        kid: String,
        state: Option<KeyState>,
    },
    /// No header, or none that names a key.
    Unknown,
}

impl TokenKeys {
    /// Decodes what it can and verifies the token as the kind its header claims to be, with
    /// the same checks as every verifier in authd.
    pub fn inspect(&self, token: &str) -> Inspection {
        let token = token.trim();
        let segments: Vec<&str> = token.split('.').collect();
        let (header, claims) = match segments.as_slice() {
            [header, claims, _signature] => (decode_segment(header), decode_segment(claims)),
            _ => (None, None),
        };
        let kind = header
            .as_ref()
            .and_then(|h| h.get("typ"))
            .and_then(serde_json::Value::as_str)
            .and_then(TokenKind::from_typ);
        let timestamp = |name: &str| {
            claims
                .as_ref()
                .and_then(|c| c.get(name))
                .and_then(serde_json::Value::as_i64)
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
        };
        let (issued_at, expires_at) = (timestamp("iat"), timestamp("exp"));
        // A header naming no kind of ours is judged as an access token's: the verifier then
        // names what is wrong with it (not a JWT, not HS256, or a kind authd does not issue).
        let verdict = self.verify(kind.unwrap_or(TokenKind::Access), token);
        let named = |name: &str| {
            header
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(serde_json::Value::as_str)
        };
        let signer = match (named("kid"), named("alg")) {
            (Some(kid), _) => SignerSeen::Key {
                kid: kid.to_owned(),
                state: self.key_set().state_of(kid),
            },
            (None, Some("HS256")) => SignerSeen::Hs256Secret,
            _ => SignerSeen::Unknown,
        };
        Inspection {
            header,
            claims,
            kind,
            issued_at,
            expires_at,
            verdict,
            signer,
        }
    }
}

/// Decodes one base64url JSON object segment, trusting nothing.
fn decode_segment(segment: &str) -> Option<serde_json::Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_token_names_its_session_and_the_cache_remembers_it() {
        let keys = keys(SECRET);
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = keys.issue_access(user, session).unwrap();
        let claims = keys.verify(TokenKind::Access, &issued.token).unwrap();
        assert_eq!(claims.sid, Some(session));
        let expected = Subject {
            user,
            session: Some(session),
            kid: None,
        };
        assert_eq!(keys.access_subject(&issued.token), Ok(expected.clone()));
        // Second time from the cache: the same answer.
        assert_eq!(keys.access_subject(&issued.token), Ok(expected));
        let challenge = keys
            .issue(TokenKind::Challenge, user, Uuid::new_v4())
            .unwrap();
        let claims = keys.verify(TokenKind::Challenge, &challenge.token).unwrap();
        assert_eq!(claims.sid, None);
    }
    use crate::config::Settings;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    fn subject_of(claims: &Claims) -> Subject {
        Subject {
            user: claims.sub,
            session: claims.sid,
            kid: None,
        }
    }

    fn keys(secret: &[u8]) -> TokenKeys {
        TokenKeys::new(secret, &Settings::defaults().jwt)
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// A token of `kind` for a new subject.
    fn fresh(keys: &TokenKeys, kind: TokenKind) -> IssuedToken {
        keys.issue(kind, Uuid::new_v4(), Uuid::new_v4()).unwrap()
    }

    #[test]
    fn a_remembered_access_token_gives_its_subject_until_it_expires() {
        let keys = keys(SECRET);
        let sub = Uuid::new_v4();
        let issued = keys.issue(TokenKind::Access, sub, Uuid::new_v4()).unwrap();
        assert_eq!(keys.access_subject(&issued.token).map(|s| s.user), Ok(sub));
        assert_eq!(keys.verified.len(), 1);
        // The second time comes from the remembered set, shared with clones.
        assert_eq!(
            keys.clone().access_subject(&issued.token).map(|s| s.user),
            Ok(sub)
        );
        assert_eq!(keys.verified.len(), 1);
        let exp = issued.expires_at.timestamp();
        assert_eq!(
            keys.access_subject_at(&issued.token, exp - 1)
                .map(|s| s.user),
            Ok(sub)
        );
        assert_eq!(
            keys.access_subject_at(&issued.token, exp),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_remembered_signature_with_other_claims_or_header_is_still_refused() {
        let keys = keys(SECRET);
        let issued = fresh(&keys, TokenKind::Access);
        keys.access_subject(&issued.token).unwrap();
        let [header, _, signature]: [&str; 3] = issued
            .token
            .split('.')
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let other = fresh(&keys, TokenKind::Access);
        let other_claims = other.token.split('.').nth(1).unwrap();
        let forged = format!("{header}.{other_claims}.{signature}");
        assert_eq!(keys.access_subject(&forged), Err(TokenError::BadSignature));
        let challenge = fresh(&keys, TokenKind::Challenge);
        let challenge_header = challenge.token.split('.').next().unwrap();
        let claims = issued.token.split('.').nth(1).unwrap();
        assert_eq!(
            keys.access_subject(&format!("{challenge_header}.{claims}.{signature}")),
            Err(TokenError::WrongKind)
        );
        // A challenge token is never an access token, remembered or not.
        assert_eq!(
            keys.access_subject(&challenge.token),
            Err(TokenError::WrongKind)
        );
        assert_eq!(keys.verified.len(), 1, "refused tokens are not remembered");
    }

    #[test]
    fn the_remembered_set_stays_within_its_bound() {
        let keys = keys(SECRET);
        let set = VerifiedTokens::with_capacity(3);
        for _ in 0..20 {
            let issued = fresh(&keys, TokenKind::Access);
            let claims = keys.verify(TokenKind::Access, &issued.token).unwrap();
            set.insert(&issued.token, subject_of(&claims), claims.exp);
        }
        assert!(set.len() <= 3, "{} remembered", set.len());
    }

    #[test]
    fn a_remembered_token_leaves_at_its_exp() {
        let keys = keys(SECRET);
        let set = VerifiedTokens::with_capacity(3);
        let issued = fresh(&keys, TokenKind::Access);
        let mut claims = keys.verify(TokenKind::Access, &issued.token).unwrap();
        set.insert(&issued.token, subject_of(&claims), claims.exp);
        assert!(set.get(&issued.token).is_some());
        // The same token as if its `exp` had passed: the cache itself no longer gives it.
        claims.exp = Utc::now().timestamp() - 1;
        set.insert(&issued.token, subject_of(&claims), claims.exp);
        // (moka removes it on its next maintenance; until then it is counted but never given.)
        assert!(set.get(&issued.token).is_none());
    }

    #[test]
    fn access_token_round_trips_with_rfc9068_typ() {
        let keys = keys(SECRET);
        let (sub, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = keys.issue(TokenKind::Access, sub, jti).unwrap();
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        let claims = keys.verify(TokenKind::Access, &issued.token).unwrap();
        assert_eq!((claims.sub, claims.jti), (sub, jti));
        assert_eq!(issued.expires_in, 900);
    }

    #[test]
    fn kinds_cannot_be_swapped() {
        let keys = keys(SECRET);
        let challenge = fresh(&keys, TokenKind::Challenge);
        let access = fresh(&keys, TokenKind::Access);
        assert_eq!(
            keys.verify(TokenKind::Access, &challenge.token),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            keys.verify(TokenKind::Challenge, &access.token),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn other_key_expired_and_garbage_are_refused_with_reasons() {
        let keys = keys(SECRET);
        let other = super::TokenKeys::new(
            b"another-secret-another-secret-xx",
            &Settings::defaults().jwt,
        );
        let foreign = other
            .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        assert_eq!(
            keys.verify(TokenKind::Access, &foreign.token),
            Err(TokenError::BadSignature)
        );
        let old = keys
            .issue_at(
                TokenKind::Access,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Utc::now() - chrono::Duration::hours(1),
            )
            .unwrap();
        assert_eq!(
            keys.verify(TokenKind::Access, &old.token),
            Err(TokenError::Expired)
        );
        assert_eq!(
            keys.verify(TokenKind::Access, "not-a-token"),
            Err(TokenError::NotAJwt)
        );
    }

    #[test]
    fn wrong_audience_or_issuer_is_refused() {
        let keys = keys(SECRET);
        let mut settings = Settings::defaults().jwt;
        settings.audience = "someone-else".into();
        let other_aud = TokenKeys::new(SECRET, &settings)
            .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        assert_eq!(
            keys.verify(TokenKind::Access, &other_aud.token),
            Err(TokenError::WrongAudience)
        );
        let mut settings = Settings::defaults().jwt;
        settings.issuer = "mallory".into();
        let other_iss = TokenKeys::new(SECRET, &settings)
            .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
            .unwrap();
        assert_eq!(
            keys.verify(TokenKind::Access, &other_iss.token),
            Err(TokenError::WrongIssuer)
        );
    }

    /// Signs `header` and `claims` (JSON texts) with `secret` the way any HS256 signer would.
    fn sign(secret: &[u8], header: &str, claims: &serde_json::Value) -> String {
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    fn claims_json(keys: &TokenKeys, exp: i64) -> serde_json::Value {
        serde_json::json!({
            "iss": keys.issuer, "sub": Uuid::new_v4(), "aud": keys.audience(TokenKind::Access),
            "exp": exp, "iat": exp - 900, "jti": Uuid::new_v4(),
        })
    }

    #[test]
    fn a_header_written_differently_is_parsed_and_judged_on_its_content() {
        let keys = keys(SECRET);
        let in_the_future = Utc::now().timestamp() + 60;
        let reordered = sign(
            SECRET,
            r#"{"typ":"at+jwt","alg":"HS256"}"#,
            &claims_json(&keys, in_the_future),
        );
        assert!(keys.verify(TokenKind::Access, &reordered).is_ok());
        let plain = sign(
            SECRET,
            r#"{"alg":"HS256","typ":"JWT"}"#,
            &claims_json(&keys, in_the_future),
        );
        assert_eq!(
            keys.verify(TokenKind::Access, &plain),
            Err(TokenError::WrongKind)
        );
        let other_alg = sign(
            SECRET,
            r#"{"alg":"HS512","typ":"at+jwt"}"#,
            &claims_json(&keys, in_the_future),
        );
        assert_eq!(
            keys.verify(TokenKind::Access, &other_alg),
            Err(TokenError::WrongAlgorithm)
        );
        // JSON, HS256 and our kind, but not a header jsonwebtoken reads: the header is refused,
        // not the claims.
        let odd_kid = sign(
            SECRET,
            r#"{"alg":"HS256","typ":"at+jwt","kid":5}"#,
            &claims_json(&keys, in_the_future),
        );
        assert_eq!(
            keys.verify(TokenKind::Access, &odd_kid),
            Err(TokenError::NotAJwt)
        );
    }

    const HEADER: &str = r#"{"typ":"at+jwt","alg":"HS256"}"#;

    #[test]
    fn a_crit_header_is_refused_even_when_signed_with_our_key() {
        let keys = keys(SECRET);
        let claims = claims_json(&keys, Utc::now().timestamp() + 60);
        for header in [
            r#"{"alg":"HS256","typ":"at+jwt","crit":["exp"]}"#,
            r#"{"alg":"HS256","typ":"at+jwt","crit":[]}"#,
            r#"{"alg":"HS256","typ":"at+jwt","crit":null}"#,
        ] {
            let token = sign(SECRET, header, &claims);
            assert_eq!(
                keys.access_subject(&token),
                Err(TokenError::CriticalHeader),
                "{header}"
            );
        }
        assert_eq!(keys.verified.len(), 0, "refused tokens are not remembered");
    }

    #[test]
    fn nbf_is_honoured_without_leeway() {
        let keys = keys(SECRET);
        let now = Utc::now().timestamp();
        let with_nbf = |nbf: i64| {
            let mut claims = claims_json(&keys, now + 600);
            claims["nbf"] = nbf.into();
            sign(SECRET, HEADER, &claims)
        };
        let later = with_nbf(now + 30);
        assert_eq!(
            keys.access_subject_at(&later, now),
            Err(TokenError::NotYetValid)
        );
        assert_eq!(keys.verified.len(), 0, "refused tokens are not remembered");
        // Once its time has come it is accepted, and remembered from then on.
        let come = with_nbf(Utc::now().timestamp());
        assert!(keys.access_subject(&come).is_ok());
        assert_eq!(keys.verified.len(), 1);
        assert!(keys.verify(TokenKind::Access, &with_nbf(now)).is_ok());
        assert!(keys.verify(TokenKind::Access, &with_nbf(now - 60)).is_ok());
        let mut malformed = claims_json(&keys, now + 600);
        malformed["nbf"] = "soon".into();
        assert_eq!(
            keys.verify(TokenKind::Access, &sign(SECRET, HEADER, &malformed)),
            Err(TokenError::BadClaims)
        );
    }

    #[test]
    fn iat_more_than_a_minute_ahead_is_refused() {
        let keys = keys(SECRET);
        let now = Utc::now().timestamp();
        let issued_at = |iat: i64| {
            let mut claims = claims_json(&keys, now + 600);
            claims["iat"] = iat.into();
            sign(SECRET, HEADER, &claims)
        };
        assert_eq!(
            keys.access_subject_at(&issued_at(now + MAX_IAT_SKEW_SECS + 1), now),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(
            keys.access_subject_at(&issued_at(now + 3_600), now),
            Err(TokenError::IssuedInFuture)
        );
        assert_eq!(keys.verified.len(), 0, "refused tokens are not remembered");
        // A clock a little ahead is tolerated.
        assert!(
            keys.access_subject_at(&issued_at(now + MAX_IAT_SKEW_SECS), now)
                .is_ok()
        );
    }

    #[test]
    fn missing_claims_expiry_now_and_extra_segments_are_refused() {
        let keys = keys(SECRET);
        let header = r#"{"typ":"at+jwt","alg":"HS256"}"#;
        let now = Utc::now().timestamp();
        let mut no_jti = claims_json(&keys, now + 60);
        no_jti.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            keys.verify(TokenKind::Access, &sign(SECRET, header, &no_jti)),
            Err(TokenError::BadClaims)
        );
        // RFC 7519: the token is valid only *before* exp.
        let expiring = sign(SECRET, header, &claims_json(&keys, now));
        assert_eq!(
            keys.verify(TokenKind::Access, &expiring),
            Err(TokenError::Expired)
        );
        let issued = fresh(&keys, TokenKind::Access);
        assert!(keys.verify(TokenKind::Access, &issued.token).is_ok());
        assert_eq!(
            keys.verify(TokenKind::Access, &format!("{}.x", issued.token)),
            Err(TokenError::NotAJwt)
        );
        let at = issued.token.rfind('.').unwrap() + 1;
        let short = format!(
            "{}{}",
            &issued.token[..at],
            URL_SAFE_NO_PAD.encode([0u8; 31])
        );
        assert_eq!(
            keys.verify(TokenKind::Access, &short),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn unsigned_alg_none_token_is_refused() {
        let keys = keys(SECRET);
        // {"alg":"none","typ":"at+jwt"} . {"sub":...} . (no signature)
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJ4In0.";
        assert!(keys.verify(TokenKind::Access, token).is_err());
    }

    #[test]
    fn inspection_of_a_valid_token_names_its_kind_and_times() {
        let keys = keys(SECRET);
        let (sub, jti) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = keys.issue(TokenKind::Challenge, sub, jti).unwrap();
        let seen = keys.inspect(&issued.token);
        assert_eq!(seen.kind, Some(TokenKind::Challenge));
        assert_eq!(seen.verdict.unwrap().jti, jti);
        assert_eq!(seen.header.unwrap()["typ"], "authd-otp-challenge+jwt");
        assert_eq!(seen.claims.unwrap()["sub"], sub.to_string());
        assert_eq!(
            seen.expires_at.unwrap().timestamp(),
            issued.expires_at.timestamp()
        );
        assert_eq!(
            (seen.expires_at.unwrap() - seen.issued_at.unwrap()).num_seconds(),
            300
        );
    }

    #[test]
    fn inspection_still_decodes_tampered_and_expired_tokens() {
        let keys = keys(SECRET);
        let issued = fresh(&keys, TokenKind::Access);
        // Flip the first character of the signature (the last one has unused low bits).
        let at = issued.token.rfind('.').unwrap() + 1;
        let flipped = if &issued.token[at..=at] == "A" {
            "B"
        } else {
            "A"
        };
        let tampered = format!(
            "{}{flipped}{}",
            &issued.token[..at],
            &issued.token[at + 1..]
        );
        let seen = keys.inspect(&tampered);
        assert_eq!(seen.verdict, Err(TokenError::BadSignature));
        assert_eq!(seen.kind, Some(TokenKind::Access));
        assert!(seen.claims.is_some());

        let old = keys
            .issue_at(
                TokenKind::Access,
                Uuid::new_v4(),
                Uuid::new_v4(),
                Utc::now() - chrono::Duration::hours(2),
            )
            .unwrap();
        let seen = keys.inspect(&old.token);
        assert_eq!(seen.verdict, Err(TokenError::Expired));
        assert!(seen.expires_at.unwrap() < Utc::now());
    }

    #[test]
    fn inspection_names_garbage_unsigned_and_foreign_kinds() {
        let keys = keys(SECRET);
        let garbage = keys.inspect("hello world");
        assert_eq!(garbage.verdict, Err(TokenError::NotAJwt));
        assert!(garbage.header.is_none() && garbage.claims.is_none());

        let unsigned = keys.inspect("eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.eyJzdWIiOiJ4In0.");
        assert_eq!(unsigned.verdict, Err(TokenError::WrongAlgorithm));
        assert_eq!(unsigned.header.unwrap()["alg"], "none");
        assert_eq!(unsigned.claims.unwrap()["sub"], "x");

        // {"alg":"HS256","typ":"JWT"} . {"sub":"x"} . signature
        let plain_jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2ln";
        let seen = keys.inspect(plain_jwt);
        assert_eq!(seen.kind, None);
        assert_eq!(seen.verdict, Err(TokenError::WrongKind));
    }

    #[test]
    fn a_retired_key_is_kept_for_the_longer_token_life_plus_one_reload_and_the_skew() {
        let mut settings = Settings::defaults();
        settings.keys.refresh_secs = 300;
        settings.jwt.access_ttl_secs = 900;
        settings.jwt.challenge_ttl_secs = 300;
        assert_eq!(TokenKeys::retired_horizon_secs(&settings), 900 + 300 + 60);
        settings.jwt.challenge_ttl_secs = 1_800;
        assert_eq!(TokenKeys::retired_horizon_secs(&settings), 1_800 + 300 + 60);
        settings.keys.refresh_secs = 3_600;
        assert_eq!(
            TokenKeys::retired_horizon_secs(&settings),
            1_800 + 3_600 + 60
        );
    }
}
