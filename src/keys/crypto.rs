//! The crypto provider jsonwebtoken signs and verifies with: ring for ES256, jsonwebtoken's own
//! RustCrypto provider for every other algorithm.
//!
//! Why: RustCrypto's P-256 takes about 350 µs to sign a token (jsonwebtoken reads the PKCS#8
//! key again and derives its public point at every signature) and 230 µs to verify one, which
//! halved the refreshes a second on the benchmark machine; ring's P-256 is assembly-optimised.
//! Nothing here computes a signature: ring's `ECDSA_P256_SHA256_FIXED` is exactly JWS ES256
//! (RFC 7518 §3.4, the 32-byte r followed by the 32-byte s), and the tests below prove the two
//! providers interchangeable: each verifies what the other signed, and neither verifies what was
//! altered. This is the hook jsonwebtoken documents for it (`CryptoProvider`,
//! `EncodingKey::as_bytes`, `DecodingKey::try_get_as_bytes`).

use std::sync::OnceLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};

/// jsonwebtoken's RustCrypto provider: everything but ES256 goes to it.
fn rust_crypto() -> &'static CryptoProvider {
    &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
}

/// Makes the provider of this module jsonwebtoken's for this process. Called before the first
/// token is signed or verified; a later call, or one after jsonwebtoken chose its default,
/// changes nothing (the RustCrypto provider is as correct, only slower).
pub fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        signer_factory: new_signer,
        verifier_factory: new_verifier,
        key_utils: rust_crypto().key_utils.clone(),
    });
    let _ = provider.install_default();
}

struct Es256Signer(EcdsaKeyPair);

impl Signer<Vec<u8>> for Es256Signer {
    fn try_sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        self.0
            .sign(&SystemRandom::new(), message)
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl JwtSigner for Es256Signer {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

/// An uncompressed SEC1 point (0x04 ‖ x ‖ y), as `DecodingKey::from_jwk` keeps EC keys.
struct Es256Verifier(Vec<u8>);

impl Verifier<Vec<u8>> for Es256Verifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> std::result::Result<(), signature::Error> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.0)
            .verify(message, signature)
            .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for Es256Verifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::ES256
    }
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    if *algorithm != Algorithm::ES256 {
        return (rust_crypto().signer_factory)(algorithm, key);
    }
    if key.family() != AlgorithmFamily::Ec {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        key.as_bytes(),
        &SystemRandom::new(),
    )
    .map_err(|_| ErrorKind::InvalidEcdsaKey)?;
    Ok(Box::new(Es256Signer(pair)))
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    if *algorithm != Algorithm::ES256 {
        return (rust_crypto().verifier_factory)(algorithm, key);
    }
    if key.family() != AlgorithmFamily::Ec {
        return Err(ErrorKind::InvalidKeyFormat.into());
    }
    Ok(Box::new(Es256Verifier(key.try_get_as_bytes()?.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyAlgorithm, PrivateKey};
    use proptest::prelude::*;

    /// A P-256 key as authd makes them, and its public half as the JWKS publishes it.
    fn key_pair() -> (EncodingKey, DecodingKey) {
        let key = PrivateKey::generate(KeyAlgorithm::Es256).unwrap();
        let jwk = key.public_jwk("k").unwrap();
        (key.encoding_key(), DecodingKey::from_jwk(&jwk).unwrap())
    }

    fn sign_with(provider: &CryptoProvider, key: &EncodingKey, message: &[u8]) -> Vec<u8> {
        (provider.signer_factory)(&Algorithm::ES256, key)
            .unwrap()
            .try_sign(message)
            .unwrap()
    }

    fn verifies(provider: &CryptoProvider, key: &DecodingKey, message: &[u8], sig: &[u8]) -> bool {
        (provider.verifier_factory)(&Algorithm::ES256, key)
            .unwrap()
            .verify(message, &sig.to_vec())
            .is_ok()
    }

    fn ours() -> CryptoProvider {
        CryptoProvider {
            signer_factory: new_signer,
            verifier_factory: new_verifier,
            key_utils: rust_crypto().key_utils.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Differential: ring and RustCrypto each verify what the other signed, both refuse an
        /// altered message or signature, and ring's signatures are the 64-byte JWS form.
        #[test]
        fn ring_and_rust_crypto_are_interchangeable_for_es256(
            message in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<usize>(),
        ) {
            let (private, public) = key_pair();
            let ours = ours();
            let theirs = rust_crypto();
            let by_ring = sign_with(&ours, &private, &message);
            let by_rust_crypto = sign_with(theirs, &private, &message);
            prop_assert_eq!(by_ring.len(), 64);
            prop_assert!(verifies(theirs, &public, &message, &by_ring));
            prop_assert!(verifies(&ours, &public, &message, &by_rust_crypto));
            prop_assert!(verifies(&ours, &public, &message, &by_ring));
            let mut altered = by_ring.clone();
            altered[flip % 64] ^= 1;
            prop_assert!(!verifies(&ours, &public, &message, &altered));
            prop_assert!(!verifies(theirs, &public, &message, &altered));
            let mut other = message.clone();
            other.push(0);
            prop_assert!(!verifies(&ours, &public, &other, &by_ring));
            prop_assert!(!verifies(theirs, &public, &other, &by_ring));
            // Another key's signature is nobody's.
            let (_, stranger) = key_pair();
            prop_assert!(!verifies(&ours, &stranger, &message, &by_rust_crypto));
        }
    }

    #[test]
    fn other_algorithms_and_wrong_key_kinds_go_where_they_belong() {
        let ours = ours();
        let secret = EncodingKey::from_secret(b"a secret");
        // HS256 is RustCrypto's.
        let mac = sign_with_alg(&ours, Algorithm::HS256, &secret);
        assert_eq!(mac, sign_with_alg(rust_crypto(), Algorithm::HS256, &secret));
        // An HMAC secret is no ES256 key, either way.
        assert!((ours.signer_factory)(&Algorithm::ES256, &secret).is_err());
        assert!(
            (ours.verifier_factory)(&Algorithm::ES256, &DecodingKey::from_secret(b"x")).is_err()
        );
        // A malformed point is refused when verifying, not a panic.
        let odd = DecodingKey::from_ec_components("AA", "AA").unwrap();
        assert!(!verifies(&ours, &odd, b"m", &[0; 64]));
    }

    fn sign_with_alg(
        provider: &CryptoProvider,
        algorithm: Algorithm,
        key: &EncodingKey,
    ) -> Vec<u8> {
        (provider.signer_factory)(&algorithm, key)
            .unwrap()
            .try_sign(b"message")
            .unwrap()
    }
}
