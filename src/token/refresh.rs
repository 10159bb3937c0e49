//! Refresh tokens: what one is made of, how its secret is derived and how it is stored.
//!
//! A refresh token is `base64url(family ‖ generation ‖ secret)`: the `family` (16 bytes from the
//! operating system's CSPRNG, drawn once per session) names the session's chain, `generation`
//! (8 bytes, big-endian) is the token's place in it, and the secret is HMAC-SHA256 under a
//! server key of the family and the generation. The database keeps only SHA-256 of the current
//! secret.
//!
//! Why derived and not drawn afresh at each rotation: a client that sent two refreshes at once,
//! or lost the answer to one, presents a token that was just rotated; within
//! `session.reuse_grace_secs` it must get the session's *current* token back, the same one the
//! first answer carried, or the chain would fork. Deriving lets any instance recompute that
//! token without the database ever holding it. And because the secret authenticates the family
//! and generation, a token is either one this server issued for that place in the chain, or
//! nothing: knowing a family alone (from a log line, say) cannot make authd count a reuse.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::{TryRngCore, rngs::OsRng};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of the family: 128 bits of CSPRNG output.
pub const FAMILY_BYTES: usize = 16;
/// Bytes of the generation.
const GENERATION_BYTES: usize = 8;
/// Bytes of the secret: one HMAC-SHA256 output.
const SECRET_BYTES: usize = 32;
const TOKEN_BYTES: usize = FAMILY_BYTES + GENERATION_BYTES + SECRET_BYTES;
/// Characters of an encoded refresh token (unpadded base64url).
pub const TOKEN_CHARS: usize = (TOKEN_BYTES * 4).div_ceil(3);

/// A refresh token as presented, split into its parts (not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub family: [u8; FAMILY_BYTES],
    pub generation: i64,
    secret: [u8; SECRET_BYTES],
}

impl Presented {
    /// Reads a presented token; None for anything that is not one (wrong length or alphabet).
    pub fn parse(token: &str) -> Option<Presented> {
        if token.len() != TOKEN_CHARS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let (family, rest) = bytes.split_at_checked(FAMILY_BYTES)?;
        let (generation, secret) = rest.split_at_checked(GENERATION_BYTES)?;
        let generation = i64::from_be_bytes(generation.try_into().ok()?);
        (generation >= 0).then_some(())?;
        Some(Presented {
            family: family.try_into().ok()?,
            generation,
            secret: secret.try_into().ok()?,
        })
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
    /// The key of the refresh tokens issued before the key-encryption key keyed them (derived
    /// from the HS256 secret): still accepted, never used for a new token.
    legacy: Option<[u8; 32]>,
}

impl RefreshKeys {
    /// The refresh key, derived from the key-encryption key for this purpose alone; with
    /// `legacy_secret` (the HS256 secret), the tokens it keyed before this version still check.
    pub fn from_kek(kek: &[u8; 32], legacy_secret: Option<&[u8]>) -> RefreshKeys {
        RefreshKeys {
            key: crate::keys::derive_key(kek, "refresh-token hmac v1"),
            legacy: legacy_secret.map(|secret| {
                let mut mac =
                    HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
                mac.update(b"authd refresh-token key v1");
                mac.finalize().into_bytes().into()
            }),
        }
    }

    fn secret(&self, family: &[u8; FAMILY_BYTES], generation: i64) -> [u8; SECRET_BYTES] {
        secret_under(&self.key, family, generation)
    }

    /// The `generation`-th token of the chain `family`, and the hash the database keeps of it.
    pub fn token(&self, family: &[u8; FAMILY_BYTES], generation: i64) -> (String, [u8; 32]) {
        let secret = self.secret(family, generation);
        let mut bytes = Vec::with_capacity(TOKEN_BYTES);
        bytes.extend_from_slice(family);
        bytes.extend_from_slice(&generation.to_be_bytes());
        bytes.extend_from_slice(&secret);
        (URL_SAFE_NO_PAD.encode(bytes), hash_secret(&secret))
    }

    /// The hash of a presented token's secret when it is the one this key derives for its
    /// family and generation (compared in constant time); None for anything forged.
    pub fn check(&self, presented: &Presented) -> Option<[u8; 32]> {
        let matches = |key: &[u8; 32]| {
            let expected = secret_under(key, &presented.family, presented.generation);
            bool::from(expected.ct_eq(&presented.secret))
        };
        (matches(&self.key) || self.legacy.as_ref().is_some_and(matches))
            .then(|| hash_secret(&presented.secret))
    }
}

/// HMAC-SHA256 under `key` of a family and a generation: a token's secret.
fn secret_under(
    key: &[u8; 32],
    family: &[u8; FAMILY_BYTES],
    generation: i64,
) -> [u8; SECRET_BYTES] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(family);
    mac.update(&generation.to_be_bytes());
    mac.finalize().into_bytes().into()
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
    fn a_token_reads_back_as_its_place_in_the_chain_and_each_generation_differs() {
        let keys = RefreshKeys::from_kek(&[1; 32], None);
        let family = new_family();
        let (first, first_hash) = keys.token(&family, 0);
        let (second, second_hash) = keys.token(&family, 1);
        assert_eq!(first.len(), TOKEN_CHARS);
        assert_ne!(first, second);
        assert_ne!(first_hash, second_hash);
        let presented = Presented::parse(&first).unwrap();
        assert_eq!((presented.family, presented.generation), (family, 0));
        assert_eq!(keys.check(&presented), Some(first_hash));
        // The same inputs give the same token: what lets any instance replay the current one.
        assert_eq!(keys.token(&family, 1).0, second);
        let other = RefreshKeys::from_kek(&[2; 32], None);
        assert_eq!(other.check(&presented), None);
    }

    #[test]
    fn a_token_keyed_by_the_legacy_secret_still_checks_and_new_ones_use_the_kek() {
        let old = b"the hs256 secret of the version before";
        let legacy = {
            let mut mac = HmacSha256::new_from_slice(old).unwrap();
            mac.update(b"authd refresh-token key v1");
            let key: [u8; 32] = mac.finalize().into_bytes().into();
            key
        };
        let family = new_family();
        let mut bytes = family.to_vec();
        bytes.extend_from_slice(&4i64.to_be_bytes());
        bytes.extend_from_slice(&secret_under(&legacy, &family, 4));
        let issued_before = Presented::parse(&URL_SAFE_NO_PAD.encode(bytes)).unwrap();
        let keys = RefreshKeys::from_kek(&[5; 32], Some(old));
        assert!(keys.check(&issued_before).is_some());
        assert!(
            RefreshKeys::from_kek(&[5; 32], None)
                .check(&issued_before)
                .is_none()
        );
        // The next token of the chain is keyed by the KEK alone.
        let (next, _) = keys.token(&family, 5);
        let next = Presented::parse(&next).unwrap();
        assert!(RefreshKeys::from_kek(&[5; 32], None).check(&next).is_some());
    }

    #[test]
    fn a_forged_secret_or_a_moved_generation_does_not_check() {
        let keys = RefreshKeys::from_kek(&[3; 32], None);
        let family = new_family();
        let (token, _) = keys.token(&family, 5);
        let mut forged = Presented::parse(&token).unwrap();
        forged.secret = [0; SECRET_BYTES];
        assert_eq!(keys.check(&forged), None);
        let mut moved = Presented::parse(&token).unwrap();
        moved.generation = 4;
        assert_eq!(keys.check(&moved), None);
    }

    #[test]
    fn families_are_random_and_anything_else_is_not_a_token() {
        assert_ne!(new_family(), new_family());
        let keys = RefreshKeys::from_kek(&[3; 32], None);
        let (token, _) = keys.token(&new_family(), 3);
        let negative = {
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            bytes[FAMILY_BYTES] = 0x80;
            URL_SAFE_NO_PAD.encode(bytes)
        };
        for bad in [
            String::new(),
            token[1..].to_owned(),
            format!("{token}A"),
            token.replace(|c: char| c.is_ascii_alphanumeric(), "+"),
            "é".repeat(TOKEN_CHARS),
            negative,
        ] {
            assert_eq!(Presented::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_derivation_is_hmac_sha256_of_family_and_generation() {
        // Against the `hmac` crate used directly, on the documented inputs.
        let kek = [9u8; 32];
        let keys = RefreshKeys::from_kek(&kek, None);
        let family = [7u8; FAMILY_BYTES];
        let mut key = [0u8; 32];
        hkdf::Hkdf::<Sha256>::new(Some(b"authd key-encryption-key v1"), &kek)
            .expand(b"refresh-token hmac v1", &mut key)
            .unwrap();
        let mut mac = HmacSha256::new_from_slice(&key).unwrap();
        mac.update(&family);
        mac.update(&42i64.to_be_bytes());
        let secret = mac.finalize().into_bytes();
        let (token, hash) = keys.token(&family, 42);
        let decoded = URL_SAFE_NO_PAD.decode(token).unwrap();
        assert_eq!(&decoded[..FAMILY_BYTES], &family[..]);
        assert_eq!(
            &decoded[FAMILY_BYTES..FAMILY_BYTES + 8],
            &42i64.to_be_bytes()[..]
        );
        assert_eq!(&decoded[FAMILY_BYTES + 8..], &secret[..]);
        assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(secret)));
    }
}
