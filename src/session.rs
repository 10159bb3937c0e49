//! Refresh tokens: what one is made of, how its secret is derived and how it is stored.
//!
//! A refresh token is `base64url(family ‖ secret)`: the `family` (16 bytes from the operating
//! system's CSPRNG, drawn once per session) names the session's chain, and the secret of the
//! chain's n-th token is HMAC-SHA256 under a server key of the family and n. The database keeps
//! only SHA-256 of the current and the previous secret.
//!
//! Why derived and not drawn afresh at each rotation: a client that sent two refreshes at once,
//! or lost the answer to one, presents the token that was just rotated; within
//! `session.reuse_grace_secs` it must get the session's *current* token back, the same one the
//! first answer carried, or the chain would fork. Deriving lets any instance recompute that
//! token without the database ever holding it. Knowing a family alone gives nothing: the secret
//! needs the server key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the family: 128 bits of CSPRNG output.
pub const FAMILY_BYTES: usize = 16;
/// Bytes of the secret: one HMAC-SHA256 output.
const SECRET_BYTES: usize = 32;
/// Characters of an encoded refresh token.
pub const TOKEN_CHARS: usize = (FAMILY_BYTES + SECRET_BYTES) * 4 / 3;

/// A refresh token as presented: its family and the SHA-256 of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub family: [u8; FAMILY_BYTES],
    pub hash: [u8; 32],
}

impl Presented {
    /// Reads a presented token; None for anything that is not one (wrong length or alphabet).
    pub fn parse(token: &str) -> Option<Presented> {
        if token.len() != TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (family, secret) = bytes.split_at_checked(FAMILY_BYTES)?;
        Some(Presented {
            family: family.try_into().ok()?,
            hash: hash_secret(secret),
        })
    }

    /// Whether this token's secret is the one `stored` is the hash of (in constant time).
    pub fn matches(&self, stored: &[u8]) -> bool {
        bool::from(self.hash.as_slice().ct_eq(stored))
    }
}

/// A new family for a new session.
pub fn new_family() -> [u8; FAMILY_BYTES] {
    let mut family = [0u8; FAMILY_BYTES];
    OsRng
        .try_fill_bytes(&mut family)
        .expect("the operating system's random number generator works");
    family
}

/// Derives the secrets of refresh chains from a server key.
#[derive(Clone)]
pub struct RefreshKeys {
    key: [u8; 32],
}

impl RefreshKeys {
    /// The refresh key, derived from the server's secret under its own label, so it never
    /// equals the token-signing or the code-hashing key.
    pub fn from_secret(secret: &[u8]) -> RefreshKeys {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
        mac.update(b"authd refresh-token key v1");
        RefreshKeys {
            key: mac.finalize().into_bytes().into(),
        }
    }

    /// The `generation`-th token of the chain `family`, and the hash the database keeps of it.
    pub fn token(&self, family: &[u8; FAMILY_BYTES], generation: i64) -> (String, [u8; 32]) {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(family);
        mac.update(&generation.to_be_bytes());
        let secret = mac.finalize().into_bytes();
        let mut bytes = Vec::with_capacity(FAMILY_BYTES + SECRET_BYTES);
        bytes.extend_from_slice(family);
        bytes.extend_from_slice(&secret);
        (URL_SAFE_NO_PAD.encode(bytes), hash_secret(&secret))
    }
}

impl std::fmt::Debug for RefreshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshKeys(..)")
    }
}

fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_as_its_family_and_hash_and_each_generation_differs() {
        let keys = RefreshKeys::from_secret(b"a server secret of enough length!!");
        let family = new_family();
        let (first, first_hash) = keys.token(&family, 0);
        let (second, second_hash) = keys.token(&family, 1);
        assert_eq!(first.len(), TOKEN_CHARS);
        assert_ne!(first, second);
        let presented = Presented::parse(&first).unwrap();
        assert_eq!(presented.family, family);
        assert!(presented.matches(&first_hash));
        assert!(!presented.matches(&second_hash));
        // The same inputs give the same token: what lets any instance replay the current one.
        assert_eq!(keys.token(&family, 1).0, second);
        let other = RefreshKeys::from_secret(b"another server secret, also long!!");
        assert_ne!(other.token(&family, 0).0, first);
    }

    #[test]
    fn families_are_random_and_anything_else_is_not_a_token() {
        assert_ne!(new_family(), new_family());
        let keys = RefreshKeys::from_secret(b"k");
        let (token, _) = keys.token(&new_family(), 3);
        for bad in [
            String::new(),
            token[1..].to_owned(),
            format!("{token}A"),
            token.replace(|c: char| c.is_ascii_alphanumeric(), "+"),
            "é".repeat(TOKEN_CHARS / 2),
        ] {
            assert_eq!(Presented::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_derivation_is_hmac_sha256_of_family_and_generation() {
        // Differential check against the `hmac` crate used directly, on the documented inputs.
        let server = b"differential secret";
        let keys = RefreshKeys::from_secret(server);
        let family = [7u8; FAMILY_BYTES];
        let mut kdf = HmacSha256::new_from_slice(server).unwrap();
        kdf.update(b"authd refresh-token key v1");
        let key = kdf.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(&family);
        mac.update(&42i64.to_be_bytes());
        let secret = mac.finalize().into_bytes();
        let (token, hash) = keys.token(&family, 42);
        let decoded = URL_SAFE_NO_PAD.decode(token).unwrap();
        assert_eq!(&decoded[FAMILY_BYTES..], &secret[..]);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(secret)));
    }
}
