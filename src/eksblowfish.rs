//! bcrypt that yields the CPU while it works.
//!
//! A bcrypt at cost 12 is one uninterrupted quarter second of one core. While both cores hash,
//! the kernel lets a waking task of another process (PostgreSQL's backend answering a
//! `/users/me` query, a load balancer's health check) wait for the hashing thread's time slice,
//! up to a scheduler tick (4 ms here): its process is another scheduling group, so the hashing
//! thread's lower priority does not make the kernel preempt it. BENCHMARKS.md has the
//! measurements. This module runs the same algorithm as the `bcrypt` crate (the expensive
//! key setup of Provos and Mazières, on the Blowfish primitives RustCrypto's `blowfish` crate
//! exposes for it) and calls `sched_yield` after every round, so a waiting task gets the core
//! within a fraction of a millisecond. The output is byte for byte the `bcrypt` crate's
//! (`$2b$`), which the tests check, and `$2a$`/`$2b$`/`$2y$` hashes are all verified.

use base64::Engine;
use base64::alphabet::BCRYPT;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use blowfish::Blowfish;
use subtle::ConstantTimeEq;

/// bcrypt's own base64: the `./A-Za-z0-9` alphabet, no padding.
const BCRYPT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &BCRYPT,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone),
);

/// Bytes of the password bcrypt uses (with the NUL terminator when it fits).
const KEY_BYTES: usize = 72;

/// The 24-byte text bcrypt encrypts 64 times with the derived state.
const MAGIC: &[u8; 24] = b"OrpheanBeholderScryDoubt";

pub const MIN_COST: u32 = 4;
pub const MAX_COST: u32 = 31;

/// The raw bcrypt of `password` (truncated to 72 bytes, as every bcrypt does) with `salt`:
/// the 23 bytes that the hash string encodes.
fn raw_bcrypt(cost: u32, salt: &[u8; 16], password: &[u8]) -> [u8; 23] {
    let mut key = [0u8; KEY_BYTES];
    let used = password.len().min(KEY_BYTES);
    key[..used].copy_from_slice(&password[..used]);
    // The NUL terminator counts as a key byte when there is room for it.
    let key = &key[..(used + 1).min(KEY_BYTES)];

    let mut state = Blowfish::bc_init_state();
    state.salted_expand_key(salt, key);
    for _ in 0..(1u64 << cost) {
        state.bc_expand_key(key);
        state.bc_expand_key(salt);
        // One round at cost 12 takes about 60 µs here, so a waiting task waits about that long
        // at most; a yield with nothing waiting costs well under a microsecond (about 1 % of a
        // hash). Yielding every 4 rounds (0.25 ms) left `/users/me` a p99 about twice as high
        // while logins saturated the CPU (BENCHMARKS.md).
        std::thread::yield_now();
    }

    let mut words = [0u32; 6];
    for (word, bytes) in words.iter_mut().zip(MAGIC.chunks_exact(4)) {
        *word = u32::from_be_bytes(bytes.try_into().expect("chunks of 4 bytes"));
    }
    for pair in words.chunks_exact_mut(2) {
        let mut block = [pair[0], pair[1]];
        for _ in 0..64 {
            block = state.bc_encrypt(block);
        }
        pair.copy_from_slice(&block);
    }
    let mut out = [0u8; 24];
    for (bytes, word) in out.chunks_exact_mut(4).zip(words) {
        bytes.copy_from_slice(&word.to_be_bytes());
    }
    // bcrypt keeps 23 of the 24 bytes.
    out[..23].try_into().expect("23 of 24 bytes")
}

/// A `$2b$` hash string of `password` at `cost` with a fresh random salt.
pub fn hash(password: &[u8], cost: u32) -> anyhow::Result<String> {
    hash_with_salt(password, cost, &rand::random())
}

fn hash_with_salt(password: &[u8], cost: u32, salt: &[u8; 16]) -> anyhow::Result<String> {
    anyhow::ensure!(
        (MIN_COST..=MAX_COST).contains(&cost),
        "bcrypt cost must be between {MIN_COST} and {MAX_COST}"
    );
    let raw = raw_bcrypt(cost, salt, password);
    Ok(format!(
        "$2b${cost:02}${}{}",
        BCRYPT_BASE64.encode(salt),
        BCRYPT_BASE64.encode(raw)
    ))
}

/// Whether `password` matches the hash string `stored` (`$2a$`, `$2b$` or `$2y$`); false for
/// anything that is not a well-formed bcrypt hash. The comparison takes constant time.
pub fn verify(password: &[u8], stored: &str) -> bool {
    let Some((cost, salt, expected)) = parse(stored) else {
        return false;
    };
    raw_bcrypt(cost, &salt, password).ct_eq(&expected).into()
}

/// The cost of a well-formed bcrypt hash string.
pub fn cost_of(stored: &str) -> Option<u32> {
    parse(stored).map(|(cost, _, _)| cost)
}

/// `$2?$CC$` + 22 characters of salt + 31 of hash.
fn parse(stored: &str) -> Option<(u32, [u8; 16], [u8; 23])> {
    let rest = stored
        .strip_prefix("$2b$")
        .or_else(|| stored.strip_prefix("$2a$"))
        .or_else(|| stored.strip_prefix("$2y$"))?;
    let (cost, rest) = rest.split_once('$')?;
    if cost.len() != 2 || rest.len() != 53 || !rest.is_ascii() {
        return None;
    }
    let cost: u32 = cost.parse().ok()?;
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return None;
    }
    let (salt, hash) = rest.split_at(22);
    let salt = BCRYPT_BASE64.decode(salt).ok()?.try_into().ok()?;
    let hash = BCRYPT_BASE64.decode(hash).ok()?.try_into().ok()?;
    Some((cost, salt, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords() -> Vec<Vec<u8>> {
        vec![
            Vec::new(),
            b"a".to_vec(),
            b"correct horse battery".to_vec(),
            "pässwörd ✓".as_bytes().to_vec(),
            vec![b'x'; 71],
            vec![b'x'; 72],
            vec![b'x'; 73],
            (0..=255u8).collect(),
        ]
    }

    #[test]
    fn hashes_are_those_of_the_bcrypt_crate() {
        for (index, password) in passwords().iter().enumerate() {
            let salt: [u8; 16] = rand::random();
            let cost = 4 + (index as u32 % 3);
            let ours = hash_with_salt(password, cost, &salt).unwrap();
            let theirs = bcrypt::hash_with_salt(password, cost, salt)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoB);
            assert_eq!(ours, theirs, "password #{index}");
        }
    }

    #[test]
    fn verifies_hashes_of_the_bcrypt_crate_in_every_version_and_refuses_others() {
        for password in passwords() {
            for version in [
                bcrypt::Version::TwoA,
                bcrypt::Version::TwoB,
                bcrypt::Version::TwoY,
            ] {
                let stored = bcrypt::hash_with_result(&password, 4)
                    .unwrap()
                    .format_for_version(version);
                assert!(verify(&password, &stored), "{stored}");
                let mut other = password.clone();
                other.push(b'!');
                // Past 72 bytes bcrypt ignores the rest: an extra byte there still matches.
                assert_eq!(verify(&other, &stored), password.len() >= 72, "{stored}");
            }
        }
        let stored = hash(b"secret", 4).unwrap();
        assert!(bcrypt::verify("secret", &stored).unwrap());
        for broken in [
            "",
            "not a hash",
            &stored[..59],
            &stored.replacen("$04$", "$03$", 1),
            &stored.replacen("$2b$", "$2x$", 1),
            &format!("{stored}x"),
        ] {
            assert!(!verify(b"secret", broken), "{broken}");
        }
    }

    #[test]
    fn costs_outside_bcrypts_range_are_refused() {
        assert!(hash(b"x", 3).is_err());
        assert!(hash(b"x", 32).is_err());
    }
}
