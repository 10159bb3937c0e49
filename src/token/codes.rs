//! One-time codes: uniform generation from the OS CSPRNG and keyed hashing for storage (of the
//! emailed codes, the link tokens and the recovery codes of `totp`).

use hmac::{Hmac, Mac};
use rand::{Rng, RngCore, TryRngCore, rngs::OsRng};
use sha2::Sha256;
use uuid::Uuid;

use super::totp::RecoveryCode;
use crate::domain::{OTP_DIGITS, Otp};

type HmacSha256 = Hmac<Sha256>;

/// A freshly generated code. Only the mail ever sees it; the store keeps its keyed hash.
pub struct Code(String);

impl Code {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Code(******)")
    }
}

/// Draws a code uniformly from 000000..=999999 using the operating system's CSPRNG.
pub fn generate_code() -> Code {
    let n: u32 = OsRng
        .unwrap_err()
        .random_range(0..10u32.pow(OTP_DIGITS as u32));
    Code(format!("{n:0width$}", width = OTP_DIGITS))
}

/// The secret of an emailed link: 32 bytes from the OS CSPRNG, base64url without padding (43
/// characters). Only the mail sees it; the store keeps its keyed hash.
pub struct LinkToken(String);

impl LinkToken {
    pub fn generate() -> LinkToken {
        use base64::Engine;
        let mut bytes = [0u8; 32];
        OsRng.unwrap_err().fill_bytes(&mut bytes);
        LinkToken(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for LinkToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkToken(..)")
    }
}

/// Hashes codes with a server-side key, bound to the challenge they belong to.
/// Without the key a stolen hash cannot be brute-forced offline.
#[derive(Clone)]
pub struct CodeHasher {
    key: [u8; 32],
}

impl CodeHasher {
    /// The code key, derived from the key-encryption key for this purpose alone.
    pub fn from_kek(kek: &[u8; 32]) -> CodeHasher {
        CodeHasher {
            key: crate::keys::derive_key(kek, "one-time-code hmac v1"),
        }
    }

    pub fn hash(&self, challenge_id: Uuid, code: &str) -> Vec<u8> {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(challenge_id.as_bytes());
        mac.update(code.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    pub fn hash_otp(&self, challenge_id: Uuid, otp: &Otp) -> Vec<u8> {
        self.hash(challenge_id, otp.as_str())
    }

    /// The keyed hash a link's token is stored and looked up by. Domain-separated from the
    /// codes' hashes (which start with a 16-byte id, never with this label).
    pub fn hash_link_token(&self, token: &str) -> Vec<u8> {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(b"account link token v1\0");
        mac.update(token.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The keyed hash a recovery code is stored and looked up by, bound to its user: a code
    /// of one user never matches a row of another. Domain-separated from the codes' hashes
    /// (which start with a challenge id, whose ninth byte, a UUID's variant, is never ASCII)
    /// and from the link tokens' (another label; both labels end in NUL, so neither is a
    /// prefix of the other).
    pub fn hash_recovery_code(&self, user_id: Uuid, code: &RecoveryCode) -> Vec<u8> {
        let mut mac =
            HmacSha256::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(b"recovery code v1\0");
        mac.update(user_id.as_bytes());
        mac.update(code.as_str().as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

impl std::fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeHasher(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_vary() {
        let codes: Vec<String> = (0..200).map(|_| generate_code().0).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert!(
            distinct.len() > 190,
            "only {} distinct codes",
            distinct.len()
        );
    }

    #[test]
    fn codes_cover_leading_zeros() {
        // With 20,000 draws the chance of never seeing a leading zero is (0.9)^20000.
        assert!((0..20_000).any(|_| generate_code().0.starts_with('0')));
    }

    #[test]
    fn link_tokens_are_43_url_safe_characters_and_vary() {
        let a = LinkToken::generate();
        let b = LinkToken::generate();
        assert_eq!(a.as_str().len(), 43);
        assert!(
            a.as_str()
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert_ne!(a.as_str(), b.as_str());
        let hasher = CodeHasher::from_kek(&[1; 32]);
        assert_eq!(
            hasher.hash_link_token(a.as_str()),
            hasher.hash_link_token(a.as_str())
        );
        assert_ne!(
            hasher.hash_link_token(a.as_str()),
            hasher.hash_link_token(b.as_str())
        );
    }

    #[test]
    fn recovery_code_hashes_depend_on_key_user_and_code_and_match_no_other_kind_of_hash() {
        let a = CodeHasher::from_kek(&[1; 32]);
        let b = CodeHasher::from_kek(&[2; 32]);
        let user = Uuid::new_v4();
        let code = RecoveryCode::parse("ABCDE-FGHJK").unwrap();
        let same = RecoveryCode::parse(" abcdefghjk ").unwrap();
        let hash = a.hash_recovery_code(user, &code);
        assert_eq!(hash.len(), 32);
        // What the user types, in whichever form, hashes as the one stored form.
        assert_eq!(a.hash_recovery_code(user, &same), hash);
        assert_ne!(b.hash_recovery_code(user, &code), hash);
        assert_ne!(a.hash_recovery_code(Uuid::new_v4(), &code), hash);
        let other = RecoveryCode::parse("ABCDE-FGHJM").unwrap();
        assert_ne!(a.hash_recovery_code(user, &other), hash);
        assert_ne!(a.hash(user, code.as_str()), hash);
        assert_ne!(a.hash_link_token(code.as_str()), hash);
    }

    #[test]
    fn hash_depends_on_key_challenge_and_code() {
        let a = CodeHasher::from_kek(&[1; 32]);
        let b = CodeHasher::from_kek(&[2; 32]);
        let id = Uuid::new_v4();
        assert_eq!(a.hash(id, "123456"), a.hash(id, "123456"));
        assert_ne!(a.hash(id, "123456"), b.hash(id, "123456"));
        assert_ne!(a.hash(id, "123456"), a.hash(Uuid::new_v4(), "123456"));
        assert_ne!(a.hash(id, "123456"), a.hash(id, "123457"));
    }
}
