//! Inspection (`authd token inspect`): what a token says about itself, trusting nothing, and
//! whether authd would accept it.

use chrono::{DateTime, Utc};

use super::verify::decode_segment;
use super::{Claims, TokenError, TokenKeys, TokenKind};
use crate::keys::KeyState;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::tests::{SECRET, fresh, keys};
    use uuid::Uuid;

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
}
