//! Password hashes made by other systems, which `authd user import` brings in so their users
//! keep their passwords: Argon2id PHC strings (Authelia, argon2-cffi, the reference `argon2`
//! tool) and Django's `pbkdf2_sha256`. They are verified with kept implementations (RustCrypto's
//! `argon2`, ring's PBKDF2) and replaced by a bcrypt at the first successful login.
//!
//! Their parameters are the importer's, not authd's, and every login of such an account runs
//! them on a hashing thread; so the parser is strict (one spelling per hash) and bounds them to
//! at most about a second of one core and a quarter of a gigabyte of memory per check. A stored
//! hash outside the bounds is verified by nobody: it is what a malformed hash is.

use std::num::NonZeroU32;

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use subtle::ConstantTimeEq;

/// Most memory an Argon2id check may take, in KiB (256 MiB): one check runs per hashing thread
/// (one per core), so a two-core server never holds more than half a gigabyte for them.
/// Authelia's and argon2-cffi's default (RFC 9106's second recommendation) is 64 MiB; RFC 9106's
/// first recommendation (2 GiB) is refused.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 262_144;
/// Most passes over that memory (`t`).
pub const ARGON2_MAX_TIME: u32 = 16;
/// Most lanes (`p`). authd computes them one after the other on one thread: the lanes change
/// the result, not what it costs here.
pub const ARGON2_MAX_LANES: u32 = 16;
/// Most memory times passes (KiB): what one check costs in CPU. 1 GiB of blocks to fill is
/// about a second of one core: the 256 MiB at 4 passes, 64 MiB at 16, and five times the
/// common 64 MiB at 3.
pub const ARGON2_MAX_WORK_KIB: u64 = 1_048_576;
/// Salt bytes an Argon2id hash may have (8 is Argon2's minimum; 16 is usual; 48 is the most a
/// PHC string holds).
const ARGON2_SALT_BYTES: std::ops::RangeInclusive<usize> = 8..=48;
/// Tag bytes an Argon2id hash may have: below 16 a wrong password matches too often (one in
/// 2^(8·len)); 64 is the most a PHC string holds.
const ARGON2_HASH_BYTES: std::ops::RangeInclusive<usize> = 16..=64;

/// Most PBKDF2 iterations a Django hash may have: five times Django 5.2's default (1,000,000),
/// about as long on one core as the costliest Argon2id above (ring's SHA-256 is assembly, as
/// fast in a debug build as in a release one).
pub const PBKDF2_MAX_ITERATIONS: u32 = 5_000_000;
/// Most characters of a Django salt (Django writes 22, older versions 12).
const PBKDF2_MAX_SALT_CHARS: usize = 128;
/// Django's pbkdf2_sha256 keeps the whole SHA-256 output.
const PBKDF2_HASH_BYTES: usize = 32;

const ARGON2ID_PREFIX: &str = "$argon2id$";
const PBKDF2_PREFIX: &str = "pbkdf2_sha256$";

/// A hash of another system, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Imported {
    Argon2id {
        memory_kib: u32,
        time: u32,
        lanes: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Pbkdf2Sha256 {
        iterations: NonZeroU32,
        /// Django hashes its salt's text, not a decoding of it.
        salt: String,
        hash: [u8; PBKDF2_HASH_BYTES],
    },
}

/// Whether `stored` names one of the schemes of this module (well formed or not).
pub(super) fn claims(stored: &str) -> bool {
    stored.starts_with("$argon2") || stored.starts_with("pbkdf2_")
}

/// `stored` taken apart, or the one-line reason it is not a hash this module verifies.
pub(super) fn parse(stored: &str) -> Result<Imported, String> {
    if let Some(rest) = stored.strip_prefix(ARGON2ID_PREFIX) {
        return parse_argon2id(rest);
    }
    if let Some(rest) = stored.strip_prefix(PBKDF2_PREFIX) {
        return parse_pbkdf2(rest);
    }
    for other in ["$argon2i$", "$argon2d$"] {
        if stored.starts_with(other) {
            let name = other.trim_matches('$');
            return Err(format!("{name} is not verified, only argon2id"));
        }
    }
    if let Some((scheme, _)) = stored.split_once('$')
        && scheme.starts_with("pbkdf2_")
    {
        return Err(format!("{scheme} is not verified, only pbkdf2_sha256"));
    }
    Err(super::NOT_A_HASH.into())
}

/// `v=19$m=M,t=T,p=P$salt$hash` after `$argon2id$`, as argon2-cffi and Authelia write it:
/// parameters in that order, no other ones (no `keyid`, no `data`), numbers without sign or
/// leading zero, salt and hash in unpadded standard base64 whose spare bits are zero.
fn parse_argon2id(rest: &str) -> Result<Imported, String> {
    const SHAPE: &str =
        "argon2id hash must be $argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>";
    let parts: Vec<&str> = rest.split('$').collect();
    let [version, params, salt, hash] = parts[..] else {
        return Err(SHAPE.into());
    };
    match version.strip_prefix("v=") {
        Some("19") => {}
        Some(other) => return Err(format!("argon2id version {other} is not 19")),
        None => return Err(SHAPE.into()),
    }
    let mut numbers = params.split(',');
    let mut next = |name: &str| -> Result<u32, String> {
        numbers
            .next()
            .and_then(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(canonical_number)
            .ok_or_else(|| SHAPE.to_owned())
    };
    let (memory_kib, time, lanes) = (next("m")?, next("t")?, next("p")?);
    if numbers.next().is_some() {
        return Err(SHAPE.into());
    }
    if !(1..=ARGON2_MAX_LANES).contains(&lanes) {
        return Err(format!(
            "argon2id lanes {lanes} are not within 1..={ARGON2_MAX_LANES} authd verifies"
        ));
    }
    if memory_kib > ARGON2_MAX_MEMORY_KIB {
        return Err(format!(
            "argon2id memory {memory_kib} KiB is over the {ARGON2_MAX_MEMORY_KIB} KiB authd verifies"
        ));
    }
    if memory_kib < 8 * lanes {
        return Err(format!(
            "argon2id memory {memory_kib} KiB is below Argon2's 8 KiB per lane ({lanes} lanes)"
        ));
    }
    if !(1..=ARGON2_MAX_TIME).contains(&time) {
        return Err(format!(
            "argon2id time cost {time} is not within 1..={ARGON2_MAX_TIME} authd verifies"
        ));
    }
    let work = u64::from(memory_kib) * u64::from(time);
    if work > ARGON2_MAX_WORK_KIB {
        return Err(format!(
            "argon2id memory times time cost ({memory_kib} KiB x {time}) is over the {ARGON2_MAX_WORK_KIB} KiB authd verifies"
        ));
    }
    let salt = decode_canonical(&STANDARD_NO_PAD, salt)
        .filter(|salt| ARGON2_SALT_BYTES.contains(&salt.len()))
        .ok_or("argon2id salt must be 8 to 48 bytes of unpadded base64")?;
    let hash = decode_canonical(&STANDARD_NO_PAD, hash)
        .filter(|hash| ARGON2_HASH_BYTES.contains(&hash.len()))
        .ok_or("argon2id hash must be 16 to 64 bytes of unpadded base64")?;
    Ok(Imported::Argon2id {
        memory_kib,
        time,
        lanes,
        salt,
        hash,
    })
}

/// `<iterations>$<salt>$<hash>` after `pbkdf2_sha256$`, as Django writes it: the salt any
/// printable ASCII but `$`, the hash 32 bytes in padded standard base64.
fn parse_pbkdf2(rest: &str) -> Result<Imported, String> {
    const SHAPE: &str = "pbkdf2_sha256 hash must be pbkdf2_sha256$<iterations>$<salt>$<hash>";
    let parts: Vec<&str> = rest.split('$').collect();
    let [iterations, salt, hash] = parts[..] else {
        return Err(SHAPE.into());
    };
    let iterations = canonical_number(iterations).ok_or(SHAPE)?;
    let iterations = NonZeroU32::new(iterations)
        .filter(|n| n.get() <= PBKDF2_MAX_ITERATIONS)
        .ok_or_else(|| {
            format!(
                "pbkdf2_sha256 iterations {iterations} are not within 1..={PBKDF2_MAX_ITERATIONS} authd verifies"
            )
        })?;
    if salt.is_empty()
        || salt.len() > PBKDF2_MAX_SALT_CHARS
        || !salt.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(format!(
            "pbkdf2_sha256 salt must be 1 to {PBKDF2_MAX_SALT_CHARS} printable ASCII characters"
        ));
    }
    let hash = decode_canonical(&STANDARD, hash)
        .and_then(|hash| hash.try_into().ok())
        .ok_or("pbkdf2_sha256 hash must be 32 bytes of padded base64")?;
    Ok(Imported::Pbkdf2Sha256 {
        iterations,
        salt: salt.to_owned(),
        hash,
    })
}

/// A decimal number as a hash writes it: ASCII digits, no sign, no leading zero, fits a u32.
fn canonical_number(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

/// The bytes `text` encodes, if it is the one encoding `engine` writes for them (so no spare
/// bits set and the padding as the engine writes it).
fn decode_canonical(engine: &impl Engine, text: &str) -> Option<Vec<u8>> {
    let bytes = engine.decode(text).ok()?;
    (engine.encode(&bytes) == text).then_some(bytes)
}

impl Imported {
    /// Whether `candidate` is the password this hash was made from. The candidate is taken
    /// whole, as the system that made the hash took it: no 72-byte limit, which is bcrypt's.
    /// (PBKDF2, like bcrypt, takes "P\0" for "P": the caller refuses NULs.) The comparison
    /// takes constant time.
    pub(super) fn verify(&self, candidate: &[u8]) -> bool {
        match self {
            Imported::Argon2id {
                memory_kib,
                time,
                lanes,
                salt,
                hash,
            } => {
                let Ok(params) = Params::new(*memory_kib, *time, *lanes, Some(hash.len())) else {
                    return false;
                };
                let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut computed = vec![0u8; hash.len()];
                argon2
                    .hash_password_into(candidate, salt, &mut computed)
                    .is_ok()
                    && bool::from(computed.ct_eq(hash))
            }
            Imported::Pbkdf2Sha256 {
                iterations,
                salt,
                hash,
            } => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                *iterations,
                salt.as_bytes(),
                candidate,
                hash,
            )
            .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGON2: &str = "$argon2id$v=19$m=1024,t=1,p=1$IT9Up4d2Sx1S5kSh1crI0A$YGZ3NmxDi12u0typmobbHYfy+7EbFF7Qj6khDYKz9ek";
    const PBKDF2: &str =
        "pbkdf2_sha256$1000$PjVUeakK000RAa4iTCtgKF$CUHTbfXcKkMjDGPwBy1Au/1eIagtD2vQlddgS2YQKaM=";

    /// The reason `stored` is refused (panics when it is accepted).
    fn refusal(stored: &str) -> String {
        match parse(stored) {
            Ok(parsed) => panic!("{stored} accepted as {parsed:?}"),
            Err(why) => why,
        }
    }

    #[test]
    fn well_formed_hashes_of_other_systems_parse() {
        assert!(matches!(
            parse(ARGON2),
            Ok(Imported::Argon2id {
                memory_kib: 1024,
                time: 1,
                lanes: 1,
                ..
            })
        ));
        assert!(matches!(parse(PBKDF2), Ok(Imported::Pbkdf2Sha256 { .. })));
    }

    #[test]
    fn argon2i_and_argon2d_are_refused() {
        for (scheme, name) in [("$argon2i$", "argon2i"), ("$argon2d$", "argon2d")] {
            let other = ARGON2.replacen("$argon2id$", scheme, 1);
            assert_eq!(
                refusal(&other),
                format!("{name} is not verified, only argon2id")
            );
        }
    }

    #[test]
    fn an_argon2id_version_other_than_19_is_refused() {
        let old = ARGON2.replacen("v=19", "v=16", 1);
        assert_eq!(refusal(&old), "argon2id version 16 is not 19");
        // Argon2 1.0 strings have no version at all.
        let none = ARGON2.replacen("v=19$", "", 1);
        assert!(refusal(&none).starts_with("argon2id hash must be $argon2id$v=19$"));
    }

    fn argon2_with(params: &str) -> String {
        ARGON2.replacen("m=1024,t=1,p=1", params, 1)
    }

    #[test]
    fn argon2id_memory_over_256_mib_is_refused() {
        assert_eq!(
            refusal(&argon2_with("m=2097152,t=1,p=4")),
            "argon2id memory 2097152 KiB is over the 262144 KiB authd verifies"
        );
        assert!(parse(&argon2_with("m=262144,t=4,p=4")).is_ok());
        assert!(parse(&argon2_with("m=262145,t=1,p=4")).is_err());
    }

    #[test]
    fn argon2id_memory_below_8_kib_per_lane_is_refused() {
        assert_eq!(
            refusal(&argon2_with("m=31,t=1,p=4")),
            "argon2id memory 31 KiB is below Argon2's 8 KiB per lane (4 lanes)"
        );
        assert!(parse(&argon2_with("m=32,t=1,p=4")).is_ok());
    }

    #[test]
    fn argon2id_time_cost_outside_1_to_16_is_refused() {
        assert_eq!(
            refusal(&argon2_with("m=1024,t=17,p=1")),
            "argon2id time cost 17 is not within 1..=16 authd verifies"
        );
        assert!(refusal(&argon2_with("m=1024,t=0,p=1")).contains("time cost 0"));
        assert!(parse(&argon2_with("m=1024,t=16,p=1")).is_ok());
    }

    #[test]
    fn argon2id_lanes_outside_1_to_16_is_refused() {
        assert_eq!(
            refusal(&argon2_with("m=1024,t=1,p=17")),
            "argon2id lanes 17 are not within 1..=16 authd verifies"
        );
        assert!(refusal(&argon2_with("m=1024,t=1,p=0")).contains("lanes 0"));
        assert!(parse(&argon2_with("m=1024,t=1,p=16")).is_ok());
    }

    #[test]
    fn argon2id_memory_times_passes_over_1_gib_is_refused() {
        assert_eq!(
            refusal(&argon2_with("m=262144,t=5,p=4")),
            "argon2id memory times time cost (262144 KiB x 5) is over the 1048576 KiB authd verifies"
        );
        assert!(parse(&argon2_with("m=65536,t=16,p=4")).is_ok());
        assert!(parse(&argon2_with("m=65537,t=16,p=4")).is_err());
    }

    #[test]
    fn argon2id_parameters_spelled_otherwise_are_refused() {
        for params in [
            "t=1,m=1024,p=1",
            "m=1024,t=1",
            "m=1024,t=1,p=1,keyid=AAAA",
            "m=1024,t=1,p=1,data=AAAA",
            "m=01024,t=1,p=1",
            "m=+1024,t=1,p=1",
            "m=1024,t=1,p=1 ",
            "m=99999999999,t=1,p=1",
            "m=1024;t=1;p=1",
        ] {
            let other = argon2_with(params);
            assert!(
                refusal(&other).starts_with("argon2id hash must be"),
                "{other}"
            );
        }
        // A field more or less.
        assert!(refusal(&format!("{ARGON2}$x")).starts_with("argon2id hash must be"));
        let (head, _) = ARGON2.rsplit_once('$').unwrap();
        assert!(refusal(head).starts_with("argon2id hash must be"));
    }

    #[test]
    fn argon2id_salt_and_hash_must_be_canonical_unpadded_base64_of_the_right_length() {
        let (head, hash) = ARGON2.rsplit_once('$').unwrap();
        let (prefix, salt) = head.rsplit_once('$').unwrap();
        let salt_refused = "argon2id salt must be 8 to 48 bytes of unpadded base64";
        let hash_refused = "argon2id hash must be 16 to 64 bytes of unpadded base64";
        // Padded, a character outside the alphabet, too short, spare bits set.
        for bad in [
            format!("{salt}=="),
            format!("{}_", &salt[..21]),
            "AAAAAAA".to_owned(), // 5 bytes
            format!("{}x", &salt[..21]),
        ] {
            assert_eq!(
                refusal(&format!("{prefix}${bad}${hash}")),
                salt_refused,
                "{bad}"
            );
        }
        for bad in [
            format!("{hash}="),
            format!("{}-", &hash[..42]),
            "AAAAAAAAAAAAAAAAAAAA".to_owned(), // 15 bytes
            "A".repeat(88),                    // 66 bytes
            format!("{}B", &hash[..42]),
        ] {
            assert_eq!(
                refusal(&format!("{prefix}${salt}${bad}")),
                hash_refused,
                "{bad}"
            );
        }
    }

    fn pbkdf2_with(iterations: &str) -> String {
        PBKDF2.replacen("$1000$", &format!("${iterations}$"), 1)
    }

    #[test]
    fn pbkdf2_iterations_outside_1_to_5_million_are_refused() {
        assert_eq!(
            refusal(&pbkdf2_with("5000001")),
            "pbkdf2_sha256 iterations 5000001 are not within 1..=5000000 authd verifies"
        );
        assert!(refusal(&pbkdf2_with("0")).contains("iterations 0"));
        assert!(parse(&pbkdf2_with("5000000")).is_ok());
        assert!(parse(&pbkdf2_with("1")).is_ok());
        for bad in ["", "01000", "+1000", "1e3", "99999999999"] {
            assert!(
                refusal(&pbkdf2_with(bad)).starts_with("pbkdf2_sha256 hash must be"),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_pbkdf2_salt_must_be_printable_ascii() {
        let refused = "pbkdf2_sha256 salt must be 1 to 128 printable ASCII characters";
        for salt in ["", "with space", "é", "tab\there", &"s".repeat(129)] {
            let other = PBKDF2.replacen("PjVUeakK000RAa4iTCtgKF", salt, 1);
            assert_eq!(refusal(&other), refused, "{salt}");
        }
    }

    #[test]
    fn a_pbkdf2_hash_must_be_32_bytes_of_canonical_padded_base64() {
        let refused = "pbkdf2_sha256 hash must be 32 bytes of padded base64";
        let (head, hash) = PBKDF2.rsplit_once('$').unwrap();
        for bad in [
            hash.trim_end_matches('='),
            &hash[..40],
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 36 bytes
            &format!("{}h=", &hash[..42]),                      // spare bits set
            &format!("{}_=", &hash[..42]),
        ] {
            assert_eq!(refusal(&format!("{head}${bad}")), refused, "{bad}");
        }
        assert!(refusal(&format!("{PBKDF2}$x")).starts_with("pbkdf2_sha256 hash must be"));
    }

    #[test]
    fn other_django_hashers_are_refused_by_name() {
        assert_eq!(
            refusal("pbkdf2_sha1$260000$salt$AAAA"),
            "pbkdf2_sha1 is not verified, only pbkdf2_sha256"
        );
        assert_eq!(refusal("md5$salt$abc"), super::super::NOT_A_HASH);
    }

    #[test]
    fn the_candidate_is_taken_whole() {
        let Ok(argon2) = parse(ARGON2) else { panic!() };
        assert!(argon2.verify(b"correct horse battery"));
        assert!(!argon2.verify(b"correct horse battery!"));
        assert!(!argon2.verify(b"correct horse batter"));
        let Ok(pbkdf2) = parse(PBKDF2) else { panic!() };
        assert!(pbkdf2.verify(b"correct horse battery"));
        assert!(!pbkdf2.verify(b"correct horse battery!"));
        assert!(!pbkdf2.verify(b"correct horse batter"));
        // HMAC pads its key with NULs to 64 bytes, so PBKDF2 takes "P\0" for "P": why the
        // login check refuses every NUL (`verify_hash_at_least`), imported hash or not.
        assert!(pbkdf2.verify(b"correct horse battery\0"));
    }
}
