//! Issuing, verification and the verified-token cache, tested together through `TokenKeys`.

use super::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

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

pub(super) fn keys(secret: &[u8]) -> TokenKeys {
    TokenKeys::new(secret, &Settings::defaults().jwt)
}

pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A token of `kind` for a new subject.
pub(super) fn fresh(keys: &TokenKeys, kind: TokenKind) -> IssuedToken {
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
