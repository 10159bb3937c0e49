//! Signing keys: asymmetric key pairs that other services can verify with, the sealing of their
//! private halves (and of any other secret a row keeps, such as a TOTP secret) for the database,
//! and the keys derived from the key-encryption key.
//!
//! No cryptography of our own: `p256` and `ed25519-dalek` make the key pairs (from
//! operating-system randomness) and write them as PKCS#8, `jsonwebtoken` signs and verifies with
//! them and derives their public JWKs, `aes-gcm` seals the private halves and the other secrets
//! under the key-encryption key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use rand::{TryRngCore, rngs::OsRng};

/// The algorithms a signing key can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256: the widest library support.
    Es256,
    /// Ed25519.
    EdDsa,
}

impl KeyAlgorithm {
    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::Es256 => Algorithm::ES256,
            KeyAlgorithm::EdDsa => Algorithm::EdDSA,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Es256 => "ES256",
            KeyAlgorithm::EdDsa => "EdDSA",
        }
    }
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<KeyAlgorithm, KeyError> {
        match text {
            "ES256" => Ok(KeyAlgorithm::Es256),
            "EdDSA" => Ok(KeyAlgorithm::EdDsa),
            _ => Err(KeyError::Encoding),
        }
    }
}

/// Where a signing key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not signing yet: verifiers learn it before the first token it signs.
    Next,
    /// Signs every new token; exactly one.
    Current,
    /// No longer signs; published until every token it signed has expired.
    Retired,
    /// Never accepted again.
    Revoked,
    /// Read from a JWKS, not from the database: published, whichever of the first three.
    Published,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retired => "retired",
            KeyState::Revoked => "revoked",
            KeyState::Published => "published",
        }
    }

    /// The state a stored row names; None for anything else.
    pub fn parse(text: &str) -> Option<KeyState> {
        [
            KeyState::Next,
            KeyState::Current,
            KeyState::Retired,
            KeyState::Revoked,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A 32-byte key for `purpose`, derived from the key-encryption key with HKDF-SHA256
/// (RFC 5869), so no two purposes ever share a key and none of them is the KEK itself.
pub fn derive_key(kek: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(b"authd key-encryption-key v1"), kek)
        .expand(purpose.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    key
}

/// The key-encryption key's check value: a value derived from it under a label of its own
/// (HKDF-SHA256, see [`derive_key`]), so it tells whether two keys are the same without
/// revealing either, or any key derived for another purpose.
pub fn kek_check_value(kek: &[u8; 32]) -> [u8; 32] {
    derive_key(kek, "authd kek check value v1")
}

/// A new key id: 128 random bits, base64url (22 characters).
pub fn new_kid() -> Result<String, KeyError> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>()?))
}

/// A new key pair of `algorithm`, ready to be stored in `state`: a fresh `kid`, the public JWK
/// and the private half sealed under `kek`.
pub fn new_signing_key(
    kek: &[u8; 32],
    algorithm: KeyAlgorithm,
    state: KeyState,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<crate::store::NewSigningKey, KeyError> {
    let kid = new_kid()?;
    let key = PrivateKey::generate(algorithm)?;
    let public_jwk =
        serde_json::to_string(&key.public_jwk(&kid)?).map_err(|_| KeyError::Encoding)?;
    let sealed_private = key.seal(kek, &kid)?;
    Ok(crate::store::NewSigningKey {
        kid,
        algorithm: algorithm.as_str().to_owned(),
        public_jwk,
        sealed_private,
        state: state.as_str().to_owned(),
        created_at: now,
    })
}

/// Why a key could not be made, sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("the operating system's random number generator failed")]
    Random,
    #[error("the key could not be encoded")]
    Encoding,
    #[error("the sealed key does not open under this key-encryption key, or was altered")]
    Unsealing,
}

/// A private key as PKCS#8 DER: what `jsonwebtoken` signs with. Never printed.
pub struct PrivateKey {
    pub algorithm: KeyAlgorithm,
    der: Vec<u8>,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey({}, ..)", self.algorithm.as_str())
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut bytes = [0u8; N];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|_| KeyError::Random)?;
    Ok(bytes)
}

impl PrivateKey {
    /// A new key pair from the operating system's randomness.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<PrivateKey, KeyError> {
        use p256::pkcs8::EncodePrivateKey;
        let der = match algorithm {
            KeyAlgorithm::Es256 => {
                // A random scalar is a valid key unless it is zero or not below the group
                // order, which happens with probability about 2^-32; draw again then.
                let secret = loop {
                    if let Ok(secret) = p256::SecretKey::from_slice(&random_bytes::<32>()?) {
                        break secret;
                    }
                };
                secret.to_pkcs8_der().map_err(|_| KeyError::Encoding)?
            }
            // PKCS#8 v1 (the seed alone), the form `jsonwebtoken` reads Ed25519 keys in.
            KeyAlgorithm::EdDsa => ed25519_dalek::pkcs8::KeypairBytes {
                secret_key: random_bytes::<32>()?,
                public_key: None,
            }
            .to_pkcs8_der()
            .map_err(|_| KeyError::Encoding)?,
        };
        Ok(PrivateKey {
            algorithm,
            der: der.as_bytes().to_vec(),
        })
    }

    /// The key `jsonwebtoken` signs with.
    pub fn encoding_key(&self) -> EncodingKey {
        match self.algorithm {
            KeyAlgorithm::Es256 => EncodingKey::from_ec_der(&self.der),
            KeyAlgorithm::EdDsa => EncodingKey::from_ed_der(&self.der),
        }
    }

    /// The public half as a JWK (RFC 7517) with `kid`, `alg` and `use: "sig"`: what the JWKS
    /// publishes. Made by `jsonwebtoken` from the private key; it holds no private member.
    pub fn public_jwk(&self, kid: &str) -> Result<Jwk, KeyError> {
        super::crypto::install();
        let mut jwk = Jwk::from_encoding_key(&self.encoding_key(), self.algorithm.jwt())
            .map_err(|_| KeyError::Encoding)?;
        jwk.common.key_id = Some(kid.to_owned());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }

    /// The private half sealed for storage by [`seal_bytes`], with the key's id and algorithm
    /// as associated data (so a sealed key cannot be passed off as another row's).
    pub fn seal(&self, kek: &[u8; 32], kid: &str) -> Result<Vec<u8>, KeyError> {
        seal_bytes(kek, &associated_data(kid, self.algorithm), &self.der)
    }

    /// Opens what [`PrivateKey::seal`] made, for the same id and algorithm.
    pub fn unseal(
        sealed: &[u8],
        kek: &[u8; 32],
        kid: &str,
        algorithm: KeyAlgorithm,
    ) -> Result<PrivateKey, KeyError> {
        let der = unseal_bytes(kek, &associated_data(kid, algorithm), sealed)?;
        Ok(PrivateKey { algorithm, der })
    }
}

/// The length of the nonce in front of every sealed value: 96 bits, AES-GCM's own size.
const NONCE_LEN: usize = 12;

/// `plain` sealed for storage: AES-256-GCM under the key-encryption key, with a random 96-bit
/// nonce in front (`nonce || ciphertext || tag`). `aad` binds the ciphertext to its row: it
/// opens only with the same `aad`, so a sealed value copied into another row does not.
pub fn seal_bytes(kek: &[u8; 32], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyError> {
    let cipher = Aes256Gcm::new(kek.into());
    let nonce = random_bytes::<NONCE_LEN>()?;
    let sealed = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
        .map_err(|_| KeyError::Encoding)?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens what [`seal_bytes`] made under the same KEK and `aad`; [`KeyError::Unsealing`] for
/// another KEK, another `aad`, or a value altered or cut short.
pub fn unseal_bytes(kek: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    let (nonce, ciphertext) = sealed
        .split_at_checked(NONCE_LEN)
        .ok_or(KeyError::Unsealing)?;
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyError::Unsealing)?;
    Aes256Gcm::new(kek.into())
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| KeyError::Unsealing)
}

fn associated_data(kid: &str, algorithm: KeyAlgorithm) -> Vec<u8> {
    format!("authd signing key v1\0{kid}\0{}", algorithm.as_str()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Header, Validation};

    #[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: i64,
    }

    fn claims() -> Claims {
        Claims {
            sub: "someone".into(),
            exp: chrono::Utc::now().timestamp() + 60,
        }
    }

    #[test]
    fn generated_keys_sign_tokens_their_public_jwk_verifies_and_no_private_member_is_published() {
        crate::keys::crypto::install();
        for algorithm in [KeyAlgorithm::Es256, KeyAlgorithm::EdDsa] {
            let key = PrivateKey::generate(algorithm).unwrap();
            let mut header = Header::new(algorithm.jwt());
            header.kid = Some("k1".into());
            let token = jsonwebtoken::encode(&header, &claims(), &key.encoding_key()).unwrap();
            let jwk = key.public_jwk("k1").unwrap();
            let published = serde_json::to_value(&jwk).unwrap();
            assert_eq!(published["kid"], "k1");
            assert_eq!(published["use"], "sig");
            assert_eq!(published["alg"], algorithm.as_str());
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(
                    published.get(private).is_none(),
                    "{algorithm:?}: {published}"
                );
            }
            let decoding = DecodingKey::from_jwk(&jwk).unwrap();
            let verified = jsonwebtoken::decode::<Claims>(
                &token,
                &decoding,
                &Validation::new(algorithm.jwt()),
            )
            .unwrap();
            assert_eq!(verified.claims, claims());
            // Another key of the same kind does not verify it.
            let other = PrivateKey::generate(algorithm)
                .unwrap()
                .public_jwk("k2")
                .unwrap();
            let other = DecodingKey::from_jwk(&other).unwrap();
            assert!(
                jsonwebtoken::decode::<Claims>(&token, &other, &Validation::new(algorithm.jwt()))
                    .is_err()
            );
        }
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_kek_id_and_algorithm_and_unaltered() {
        let key = PrivateKey::generate(KeyAlgorithm::Es256).unwrap();
        let kek = [7u8; 32];
        let sealed = key.seal(&kek, "k1").unwrap();
        assert!(
            !sealed
                .windows(key.der.len())
                .any(|w| w == key.der.as_slice())
        );
        let opened = PrivateKey::unseal(&sealed, &kek, "k1", KeyAlgorithm::Es256).unwrap();
        assert_eq!(opened.der, key.der);
        let refused = [
            PrivateKey::unseal(&sealed, &[8u8; 32], "k1", KeyAlgorithm::Es256),
            PrivateKey::unseal(&sealed, &kek, "k2", KeyAlgorithm::Es256),
            PrivateKey::unseal(&sealed, &kek, "k1", KeyAlgorithm::EdDsa),
            PrivateKey::unseal(&sealed[..11], &kek, "k1", KeyAlgorithm::Es256),
        ];
        for result in refused {
            assert_eq!(result.unwrap_err(), KeyError::Unsealing);
        }
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert_eq!(
            PrivateKey::unseal(&altered, &kek, "k1", KeyAlgorithm::Es256).unwrap_err(),
            KeyError::Unsealing
        );
        // Two seals of one key differ (fresh nonce each time).
        assert_ne!(key.seal(&kek, "k1").unwrap(), sealed);
    }

    #[test]
    fn sealed_bytes_open_only_with_their_kek_and_associated_data_and_unaltered() {
        let kek = [7u8; 32];
        let plain = b"a TOTP secret of twenty bytes".to_vec();
        let sealed = seal_bytes(&kek, b"user 1", &plain).unwrap();
        assert_eq!(sealed.len(), NONCE_LEN + plain.len() + 16);
        assert!(!sealed.windows(plain.len()).any(|w| w == plain.as_slice()));
        assert_eq!(unseal_bytes(&kek, b"user 1", &sealed).unwrap(), plain);
        let mut refused = vec![
            unseal_bytes(&[8u8; 32], b"user 1", &sealed),
            unseal_bytes(&kek, b"user 2", &sealed),
            unseal_bytes(&kek, b"", &sealed),
            unseal_bytes(&kek, b"user 1", &sealed[..NONCE_LEN - 1]),
            unseal_bytes(&kek, b"user 1", &sealed[..sealed.len() - 1]),
            unseal_bytes(&kek, b"user 1", &[]),
        ];
        for i in 0..sealed.len() {
            let mut altered = sealed.clone();
            altered[i] ^= 0x80;
            refused.push(unseal_bytes(&kek, b"user 1", &altered));
        }
        for result in refused {
            assert_eq!(result.unwrap_err(), KeyError::Unsealing);
        }
        // An empty secret seals and opens too (nothing but the tag after the nonce).
        let empty = seal_bytes(&kek, b"row", b"").unwrap();
        assert_eq!(unseal_bytes(&kek, b"row", &empty).unwrap(), b"");
        // Two seals of one value differ (fresh nonce each time).
        assert_ne!(seal_bytes(&kek, b"user 1", &plain).unwrap(), sealed);
    }

    /// The stored format of a signing key, written out here independently of `seal`: keys
    /// sealed before `seal_bytes` existed must go on opening, and new ones must be readable by
    /// anything that reads the old layout.
    #[test]
    fn sealed_signing_keys_keep_their_stored_layout_and_associated_data() {
        let kek = [9u8; 32];
        let key = PrivateKey::generate(KeyAlgorithm::EdDsa).unwrap();
        let aad = b"authd signing key v1\0k1\0EdDSA";
        let nonce = [3u8; 12];
        let mut stored = nonce.to_vec();
        stored.extend(
            Aes256Gcm::new(&kek.into())
                .encrypt(&Nonce::from(nonce), Payload { msg: &key.der, aad })
                .unwrap(),
        );
        let opened = PrivateKey::unseal(&stored, &kek, "k1", KeyAlgorithm::EdDsa).unwrap();
        assert_eq!(opened.der, key.der);

        let sealed = key.seal(&kek, "k1").unwrap();
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().unwrap();
        let plain = Aes256Gcm::new(&kek.into())
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .unwrap();
        assert_eq!(plain, key.der);
    }
}
