//! Verification: what every token must pass (header, signature, claims), the reasons a token
//! is refused, and the access-token check that remembers what passed.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};

use super::{
    ALGORITHMS, Claims, MAX_IAT_SKEW_SECS, Subject, TokenError, TokenKeys, TokenKind, Verified,
};
use crate::keys::KeyState;

/// One [`Validation`] per kind and algorithm: each accepts exactly one algorithm.
pub(super) struct Validations {
    access: [Validation; 3],
    challenge: [Validation; 3],
}

impl Validations {
    pub(super) fn new(
        issuer: &str,
        access_audience: &str,
        challenge_audience: &str,
    ) -> Validations {
        Validations {
            access: ALGORITHMS.map(|alg| validation(alg, issuer, access_audience)),
            challenge: ALGORITHMS.map(|alg| validation(alg, issuer, challenge_audience)),
        }
    }

    pub(super) fn get(&self, kind: TokenKind, algorithm: Algorithm) -> &Validation {
        let at = ALGORITHMS.iter().position(|a| *a == algorithm).unwrap_or(0);
        match kind {
            TokenKind::Access => &self.access[at],
            TokenKind::Challenge => &self.challenge[at],
        }
    }
}

impl TokenKeys {
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
    pub(super) fn verify_at(
        &self,
        kind: TokenKind,
        token: &str,
        now: i64,
    ) -> Result<Verified, TokenError> {
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

    pub(super) fn access_subject_at(&self, token: &str, now: i64) -> Result<Subject, TokenError> {
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

/// Decodes one base64url JSON object segment, trusting nothing.
pub(super) fn decode_segment(segment: &str) -> Option<serde_json::Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .filter(serde_json::Value::is_object)
}
