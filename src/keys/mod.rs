//! Key material: the key-encryption key (KEK) and the HS256 secret (`kek`), the signing key
//! pairs and their sealing under the KEK, which also seals the other secrets a row keeps
//! (`sealed`), the key set one instance signs and verifies with (`key_set`), and the crypto
//! provider that computes the signatures (`crypto`).
//!
//! What is done with the keys (rotation, revocation, reloads) is a use case: `crate::auth`'s
//! `keys.rs`. What a token is and how it is checked: `crate::token`.

pub(crate) mod crypto;
mod kek;
mod key_set;
mod sealed;

pub use kek::{
    KeySource, SigningSecret, existing_signing_secret, load_key_encryption_key, load_signing_secret,
};
pub use key_set::{KeyMaterial, KeySet};
pub use sealed::{
    KeyAlgorithm, KeyError, KeyState, PrivateKey, derive_key, kek_check_value, new_kid,
    new_signing_key, seal_bytes, unseal_bytes,
};
