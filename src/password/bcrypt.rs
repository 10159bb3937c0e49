//! bcrypt that yields the CPU while it works.
//!
//! A bcrypt at cost 12 is one uninterrupted quarter second of one core. While both cores hash,
//! the kernel lets a waking task of another process (PostgreSQL's backend answering a
//! `/users/me` query, a load balancer's health check) wait for the hashing thread's time slice,
//! up to a scheduler tick: its process is another scheduling group, so the hashing thread's
//! lower priority does not make the kernel preempt it. BENCHMARKS.md has the measurements. This module runs the same algorithm as the `bcrypt` crate (the expensive
//! key setup of Provos and Mazières, on the Blowfish primitives RustCrypto's `blowfish` crate
//! exposes for it) and calls `sched_yield` after every round, so a waiting task gets the core
//! within a fraction of a millisecond. The output is byte for byte the `bcrypt` crate's
//! (`$2b$`), and `$2a$`/`$2b$`/`$2y$` hashes are all verified: the tests below check both
//! against the crate on random input and against the published test vectors.
//!
//! The parser is strict: a hash string that is not exactly what bcrypt would write (a cost of
//! other than two digits, a salt or hash whose last character carries bits bcrypt never sets)
//! is refused, so one password hash has exactly one spelling.

use base64::Engine;
use base64::alphabet::BCRYPT;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use blowfish::Blowfish;
use subtle::ConstantTimeEq;

use crate::domain::{BCRYPT_MAX_COST as MAX_COST, BCRYPT_MIN_COST as MIN_COST};

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

/// The versions of the hash string. On the first 72 bytes of a password, all bcrypt reads,
/// they are one algorithm (OpenBSD's `$2a$` differed from `$2b$` only for passwords of 256
/// bytes or more; `$2y$` is crypt_blowfish's name for its corrected `$2a$`), so they differ only
/// in how the hash is written. As in the `bcrypt` crate, `$2a$` is OpenBSD's: crypt_blowfish's
/// `$2a$` differs for a few passwords with bytes past 0x7f (its guard against its old
/// sign-extension bug), and such a hash does not verify here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    TwoA,
    TwoB,
    TwoY,
}

impl Version {
    fn prefix(self) -> &'static str {
        match self {
            Version::TwoA => "$2a$",
            Version::TwoB => "$2b$",
            Version::TwoY => "$2y$",
        }
    }
}

/// A hash string taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    version: Version,
    cost: u32,
    salt: [u8; 16],
    hash: [u8; 23],
}

/// The salt of the check an unknown email gets. Any salt does: its result is never compared.
const NO_USER_SALT: &[u8; 16] = b"authd-no-user-16";

/// The raw bcrypt of `password` (truncated to 72 bytes, as every bcrypt does) with `salt`:
/// the 23 bytes that the hash string encodes.
fn raw_bcrypt(cost: u32, salt: &[u8; 16], password: &[u8]) -> [u8; 23] {
    raw_bcrypt_padded(cost, salt, password, 0)
}

/// [`raw_bcrypt`], then `padding` more rounds of the key setup whose result nobody reads, so
/// the call costs what a bcrypt at a higher cost costs.
fn raw_bcrypt_padded(cost: u32, salt: &[u8; 16], password: &[u8], padding: u64) -> [u8; 23] {
    let mut key = [0u8; KEY_BYTES];
    let used = password.len().min(KEY_BYTES);
    key[..used].copy_from_slice(&password[..used]);
    // The NUL terminator counts as a key byte when there is room for it.
    let key = &key[..(used + 1).min(KEY_BYTES)];

    let mut state = Blowfish::bc_init_state();
    state.salted_expand_key(salt, key);
    for _ in 0..(1u64 << cost) {
        expensive_round(&mut state, key, salt);
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
    for _ in 0..padding {
        expensive_round(&mut state, key, salt);
    }
    // The padding's result is unused: keep the compiler from dropping the work.
    std::hint::black_box(&state);
    // bcrypt keeps 23 of the 24 bytes.
    out[..23].try_into().expect("23 of 24 bytes")
}

#[cfg(test)]
thread_local! {
    /// Rounds of the key setup this thread has run: what the tests count instead of timing.
    static ROUNDS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Rounds of bcrypt's key setup the calling thread has run so far (tests only).
#[cfg(test)]
pub(super) fn rounds_on_this_thread() -> u64 {
    ROUNDS.with(std::cell::Cell::get)
}

/// One round of bcrypt's expensive key setup: `2^cost` of them make a bcrypt.
fn expensive_round(state: &mut Blowfish, key: &[u8], salt: &[u8; 16]) {
    #[cfg(test)]
    ROUNDS.with(|rounds| rounds.set(rounds.get() + 1));
    state.bc_expand_key(key);
    state.bc_expand_key(salt);
    // A waiting task waits at most one round; a yield with nothing waiting costs next to
    // nothing beside a round. Yielding less often (every few rounds) left `/users/me` a
    // clearly higher p99 while logins saturated the CPU (BENCHMARKS.md).
    std::thread::yield_now();
}

/// Rounds a check of a hash at `cost` adds so that it spends `2^floor` rounds in all, as a
/// bcrypt at `floor` does; none when `cost` is `floor` or more.
fn padding_rounds(cost: u32, floor: u32) -> u64 {
    (1u64 << floor.min(MAX_COST)).saturating_sub(1u64 << cost.min(MAX_COST))
}

/// A `$2b$` hash string of `password` at `cost` with a fresh random salt.
pub(super) fn hash(password: &[u8], cost: u32) -> anyhow::Result<String> {
    hash_with_salt(Version::TwoB, password, cost, &rand::random())
}

fn hash_with_salt(
    version: Version,
    password: &[u8],
    cost: u32,
    salt: &[u8; 16],
) -> anyhow::Result<String> {
    anyhow::ensure!(
        (MIN_COST..=MAX_COST).contains(&cost),
        "bcrypt cost must be between {MIN_COST} and {MAX_COST}"
    );
    let raw = raw_bcrypt(cost, salt, password);
    Ok(format!(
        "{}{cost:02}${}{}",
        version.prefix(),
        BCRYPT_BASE64.encode(salt),
        BCRYPT_BASE64.encode(raw)
    ))
}

/// Whether `password` matches the hash string `stored` (`$2a$`, `$2b$` or `$2y$`); false for
/// no hash and for anything that is not a well-formed bcrypt hash. The comparison takes
/// constant time, and the check costs at least what a bcrypt at `floor` costs whatever
/// `stored` is: a hash at a lower cost is padded with the rounds it lacks, and no hash (an
/// unknown email) or one that does not parse gets a whole bcrypt at `floor` whose result is
/// not compared. So its time tells neither whether there was a hash nor which lower cost it had.
pub(super) fn verify_at_least(password: &[u8], stored: Option<&str>, floor: u32) -> bool {
    let floor = floor.clamp(MIN_COST, MAX_COST);
    let Some(parsed) = stored.and_then(parse) else {
        std::hint::black_box(raw_bcrypt(floor, NO_USER_SALT, password));
        return false;
    };
    let padding = padding_rounds(parsed.cost, floor);
    raw_bcrypt_padded(parsed.cost, &parsed.salt, password, padding)
        .ct_eq(&parsed.hash)
        .into()
}

/// One bcrypt at `floor` whose result nobody reads: what a check of something that is not a
/// bcrypt hash adds, so that it costs at least what a bcrypt at `floor` costs.
pub(super) fn spend(floor: u32) {
    std::hint::black_box(raw_bcrypt(
        floor.clamp(MIN_COST, MAX_COST),
        NO_USER_SALT,
        b"",
    ));
}

/// Whether `stored` is a well-formed bcrypt hash, or the one-line reason it is not. The
/// decision is [`parse`]'s; the reasons only say which part of it failed.
pub(super) fn check(stored: &str) -> Result<(), String> {
    if parse(stored).is_some() {
        return Ok(());
    }
    let Some(rest) = [Version::TwoA, Version::TwoB, Version::TwoY]
        .into_iter()
        .find_map(|version| stored.strip_prefix(version.prefix()))
    else {
        let version = stored.get(..4).unwrap_or(stored);
        return Err(format!(
            "bcrypt version {version} is not verified, only $2a$, $2b$ and $2y$"
        ));
    };
    let Some((cost, rest)) = rest
        .split_once('$')
        .filter(|(cost, _)| cost.len() == 2 && cost.bytes().all(|b| b.is_ascii_digit()))
    else {
        return Err("bcrypt cost must be two digits".into());
    };
    let cost: u32 = cost.parse().unwrap_or(0);
    if cost < MIN_COST {
        return Err(format!("bcrypt cost {cost} is below {MIN_COST}"));
    }
    if cost > MAX_COST {
        return Err(format!("bcrypt cost {cost} is over {MAX_COST}"));
    }
    if rest.len() != 53 {
        return Err(format!(
            "bcrypt salt and hash must be 53 characters, not {}",
            rest.chars().count()
        ));
    }
    Err("bcrypt salt or hash is not bcrypt's base64 as bcrypt writes it".into())
}

/// The cost of a well-formed bcrypt hash string.
pub(super) fn cost_of(stored: &str) -> Option<u32> {
    parse(stored).map(|parsed| parsed.cost)
}

/// `$2?$CC$` + 22 characters of salt + 31 of hash, exactly as bcrypt writes them: the cost is
/// two ASCII digits (`str::parse` alone would take `+4`), and the salt and hash must be the
/// canonical encoding of their bytes. 22 characters carry 132 bits for the salt's 128, 31 carry
/// 186 for the hash's 184; bcrypt writes the spare bits as zeros, and a string with them set
/// would be a second spelling of the same hash.
fn parse(stored: &str) -> Option<Parsed> {
    let (version, rest) = [Version::TwoA, Version::TwoB, Version::TwoY]
        .into_iter()
        .find_map(|version| Some((version, stored.strip_prefix(version.prefix())?)))?;
    let (cost, rest) = rest.split_once('$')?;
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if rest.len() != 53 || !rest.is_ascii() {
        return None;
    }
    let cost: u32 = cost.parse().ok()?;
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return None;
    }
    let (salt, hash) = rest.split_at(22);
    Some(Parsed {
        version,
        cost,
        salt: decode_canonical(salt)?,
        hash: decode_canonical(hash)?,
    })
}

/// The `N` bytes `text` encodes, if it is the one encoding bcrypt would write for them.
fn decode_canonical<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes: [u8; N] = BCRYPT_BASE64.decode(text).ok()?.try_into().ok()?;
    // The engine already refuses set spare bits; checked here too, so the rule does not hang on
    // a default of the base64 crate.
    (BCRYPT_BASE64.encode(bytes) == text).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The plain check: padded to nothing, since no cost is below the lowest.
    fn verify(password: &[u8], stored: &str) -> bool {
        verify_at_least(password, Some(stored), MIN_COST)
    }

    const VERSIONS: [Version; 3] = [Version::TwoA, Version::TwoB, Version::TwoY];

    /// The `bcrypt` crate's name for `version`.
    fn crate_version(version: Version) -> bcrypt::Version {
        match version {
            Version::TwoA => bcrypt::Version::TwoA,
            Version::TwoB => bcrypt::Version::TwoB,
            Version::TwoY => bcrypt::Version::TwoY,
        }
    }

    /// Published known-answer vectors, as (password, hash).
    ///
    /// - Openwall's crypt_blowfish test suite (`wrapper.c`), as carried by PHP in
    ///   php-src `ext/standard/tests/strings/crypt_blowfish.phpt` ("Official blowfish tests").
    ///   Left out: the `$2x$` vectors (crypt_blowfish's emulation of its old sign-extension
    ///   bug, which authd never verifies), and the two `$2a$` vectors whose value is
    ///   crypt_blowfish's own countermeasure for that bug (`\xff\xff\xa3` ->
    ///   `...nqd1wy...`, `\xff\xa334\xff\xff\xff\xa3345` -> `...ZC1JEJ8...`): OpenBSD's `$2a$`,
    ///   which the `bcrypt` crate and this module follow, gives them the `$2b$`/`$2y$` value.
    ///   The two vectors with passwords past 72 bytes are given their first 72 bytes, all
    ///   that bcrypt reads (and all a `Password` can hold).
    /// - pyca/bcrypt's `tests/test_bcrypt.py` (`_test_vectors`): some of its `$2b$04$`
    ///   vectors and the two with binary passwords (NUL bytes included).
    const VECTORS: &[(&[u8], &str)] = &[
        // Openwall crypt_blowfish.
        (
            b"U*U",
            "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW",
        ),
        (
            b"U*U*",
            "$2a$05$CCCCCCCCCCCCCCCCCCCCC.VGOzA784oUp/Z0DY336zx7pLYAy0lwK",
        ),
        (
            b"U*U*U",
            "$2a$05$XXXXXXXXXXXXXXXXXXXXXOAcXxm9kjPGEMsLznoKqmqw7tc8WCx4a",
        ),
        (
            b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
            "$2a$05$abcdefghijklmnopqrstuu5s2v8.iXieOjg/.AySBTTZIIVFJeBui",
        ),
        (
            b"\xff\xff\xa3",
            "$2y$05$/OK.fbVrR/bpIqNJ5ianF.CE5elHaaO4EbggVDjb8P19RukzXSM3e",
        ),
        (
            b"\xff\xff\xa3",
            "$2b$05$/OK.fbVrR/bpIqNJ5ianF.CE5elHaaO4EbggVDjb8P19RukzXSM3e",
        ),
        (
            b"\xa3",
            "$2y$05$/OK.fbVrR/bpIqNJ5ianF.Sa7shbm4.OzKpvFnX1pQLmQW96oUlCq",
        ),
        (
            b"\xa3",
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.Sa7shbm4.OzKpvFnX1pQLmQW96oUlCq",
        ),
        (
            b"\xa3",
            "$2b$05$/OK.fbVrR/bpIqNJ5ianF.Sa7shbm4.OzKpvFnX1pQLmQW96oUlCq",
        ),
        (
            b"\xff\xa334\xff\xff\xff\xa3345",
            "$2y$05$/OK.fbVrR/bpIqNJ5ianF.o./n25XVfn6oAPaUvHe.Csk4zRfsYPi",
        ),
        (
            b"\xff\xa3345",
            "$2y$05$/OK.fbVrR/bpIqNJ5ianF.nRht2l/HRhr6zmCp9vYUvvsqynflf9e",
        ),
        (
            b"\xff\xa3345",
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.nRht2l/HRhr6zmCp9vYUvvsqynflf9e",
        ),
        (
            b"\xa3ab",
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.6IflQkJytoRVc1yuaNtHfiuq.FRlSIS",
        ),
        (
            b"\xa3ab",
            "$2y$05$/OK.fbVrR/bpIqNJ5ianF.6IflQkJytoRVc1yuaNtHfiuq.FRlSIS",
        ),
        (
            &[0xaa; 72],
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.swQOIzjOiJ9GHEPuhEkvqrUyvWhEMx6",
        ),
        (
            &AA55,
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.R9xrDjiycxMbQE2bp.vgqlYpW5wx2yy",
        ),
        (
            &X55AAFF,
            "$2a$05$/OK.fbVrR/bpIqNJ5ianF.9tQZzcJfm3uj2NvJ/n5xkhpqLrMpWCe",
        ),
        (
            b"",
            "$2a$05$CCCCCCCCCCCCCCCCCCCCC.7uG0VCzI2bS7j6ymqJi9CdcdxiRTWNy",
        ),
        // pyca/bcrypt.
        (
            b"Kk4DQuMMfZL9o",
            "$2b$04$cVWp4XaNU8a4v1uMRum2SO026BWLIoQMD/TXg5uZV.0P.uO8m3YEm",
        ),
        (
            b"9IeRXmnGxMYbs",
            "$2b$04$pQ7gRO7e6wx/936oXhNjrOUNOHL1D0h1N2IDbJZYs.1ppzSof6SPy",
        ),
        (
            b"xVQVbwa1S0M8r",
            "$2b$04$SQe9knOzepOVKoYXo9xTteNYr6MBwVz4tpriJVe3PNgYufGIsgKcW",
        ),
        (
            b"Zfgr26LWd22Za",
            "$2b$04$eH8zX.q5Q.j2hO1NkVYJQOM6KxntS/ow3.YzVmFrE4t//CoF4fvne",
        ),
        (
            b"Tg4daC27epFBE",
            "$2b$04$ahiTdwRXpUG2JLRcIznxc.s1.ydaPGD372bsGs8NqyYjLY1inG5n2",
        ),
        (
            b"dEe6XfVGrrfSH",
            "$2b$04$2Siw3Nv3Q/gTOIPetAyPr.GNj3aO0lb1E5E9UumYGKjP9BYqlNWJe",
        ),
        (
            b"J8eHUDuxBB520",
            "$2b$04$VvlCUKbTMjaxaYJ.k5juoecpG/7IzcH1AkmqKi.lIZMVIOLClWAk.",
        ),
        (
            b"\x7d\x3e\xb3\xfe\xf1\x8b\xa0\xe6\x28\xa2\x4c\x7a\x71\xc3\x50\x7f\xcc\xc8\x62\x7b\
              \xf9\x14\xf6\xf6\x60\x81\x47\x35\xec\x1d\x87\x10\xbf\xa7\xe1\x7d\x49\x37\x20\x96\
              \xdf\x63\xf2\xbf\xb3\x56\x68\xdf\x4d\x88\x71\xf7\xff\x1b\x82\x7e\x7a\x13\xdd\xe9\
              \x84\x00\xdd\x34",
            "$2b$10$keO.ZZs22YtygVF6BLfhGOI/JjshJYPp8DZsUtym6mJV2Eha2Hdd.",
        ),
        (
            b"\x67\x37\x0d\x01\xf3\xd4\xd0\xa9\x4a\x42\x5e\x18\x00\x37\x50\xb2\x4e\xc7\x1c\xee\
              \x87\x26\x83\x43\x8b\xe8\x18\xc5\x3e\x86\x14\x2f\xd6\xcc\x1c\x4a\xde\xd7\x69\x78\
              \xeb\xde\x4f\xef\xe1\x69\xac\xcb\x03\x96\x76\x31\x27\x20\xd6\x40\x2e\x6d\xa5\x21\
              \xa0\xef\xc0\x28",
            "$2a$04$tecY.9ylRInW/rAAzXCXPOOlyYeCNzmNTzPDNSIFztFMKbvs/s5XG",
        ),
    ];

    /// `\xaa\x55` 36 times (Openwall's 72-byte vector with alternating high and low bytes).
    const AA55: [u8; 72] = {
        let mut bytes = [0x55; 72];
        let mut i = 0;
        while i < 72 {
            bytes[i] = 0xaa;
            i += 2;
        }
        bytes
    };

    /// `\x55\xaa\xff` 24 times.
    const X55AAFF: [u8; 72] = {
        let mut bytes = [0; 72];
        let mut i = 0;
        while i < 72 {
            bytes[i] = [0x55, 0xaa, 0xff][i % 3];
            i += 1;
        }
        bytes
    };

    /// Some other password than `password`: one byte changed (never to or from the same
    /// value), or one byte for the empty one. Not a NUL for the empty password: bcrypt
    /// appends a NUL to the key, so "" and "\0" are the same key.
    fn mutated(password: &[u8], at: usize, flip: u8) -> Vec<u8> {
        let flip = flip.max(1);
        if password.is_empty() {
            return vec![flip];
        }
        let mut other = password.to_vec();
        other[at % password.len()] ^= flip;
        other
    }

    #[test]
    fn the_published_vectors_verify_and_hash_to_themselves() {
        for (password, expected) in VECTORS {
            assert!(password.len() <= KEY_BYTES, "{expected}");
            assert!(verify(password, expected), "{expected}");
            let parsed = parse(expected).expect(expected);
            let ours = hash_with_salt(parsed.version, password, parsed.cost, &parsed.salt).unwrap();
            assert_eq!(&ours, expected);
            assert!(!verify(&mutated(password, 0, 1), expected), "{expected}");
            // The reference agrees, so the vectors are read as the crate reads them.
            assert!(bcrypt::verify(password, expected).unwrap(), "{expected}");
        }
    }

    #[test]
    fn crypt_blowfish_s_own_2a_values_are_not_openbsd_s_and_do_not_verify() {
        // The two `$2a$` vectors of Openwall's suite left out of `VECTORS`: their value is
        // crypt_blowfish's countermeasure; OpenBSD's `$2a$` (the crate's and ours) gives the
        // `$2b$` value for these passwords.
        for (password, theirs, openbsd) in [
            (
                &b"\xff\xff\xa3"[..],
                "$2a$05$/OK.fbVrR/bpIqNJ5ianF.nqd1wy.pTMdcvrRWxyiGL2eMz.2a85.",
                "$2a$05$/OK.fbVrR/bpIqNJ5ianF.CE5elHaaO4EbggVDjb8P19RukzXSM3e",
            ),
            (
                &b"\xff\xa334\xff\xff\xff\xa3345"[..],
                "$2a$05$/OK.fbVrR/bpIqNJ5ianF.ZC1JEJ8Z4gPfpe1JOr/oyPXTWl9EFd.",
                "$2a$05$/OK.fbVrR/bpIqNJ5ianF.o./n25XVfn6oAPaUvHe.Csk4zRfsYPi",
            ),
        ] {
            assert!(!verify(password, theirs), "{theirs}");
            assert!(!bcrypt::verify(password, theirs).unwrap(), "{theirs}");
            assert!(verify(password, openbsd), "{openbsd}");
        }
    }

    proptest! {
        // Each case is a handful of bcrypts at cost 4 to 6 (a few ms each with blowfish built
        // at opt-level 3): about a second or two in a debug build.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn hashes_and_verification_agree_with_the_bcrypt_crate(
            password in proptest::collection::vec(any::<u8>(), 0..=KEY_BYTES),
            salt in any::<[u8; 16]>(),
            cost in MIN_COST..=6u32,
            version in 0..VERSIONS.len(),
            at in any::<usize>(),
            flip in any::<u8>(),
        ) {
            let version = VERSIONS[version];
            let ours = hash_with_salt(version, &password, cost, &salt).unwrap();
            let theirs = bcrypt::hash_with_salt(&password, cost, salt)
                .unwrap()
                .format_for_version(crate_version(version));
            prop_assert_eq!(&ours, &theirs);
            // Each verifies the other's hash of a fresh salt, not only the same string.
            let theirs = bcrypt::hash_with_result(&password, cost)
                .unwrap()
                .format_for_version(crate_version(version));
            prop_assert!(verify(&password, &theirs), "{}", theirs);
            prop_assert!(bcrypt::verify(&password, &ours).unwrap(), "{}", ours);
            let other = mutated(&password, at, flip);
            prop_assert!(!verify(&other, &ours), "{}", ours);
            prop_assert!(!verify(&other, &theirs), "{}", theirs);
        }
    }

    #[test]
    fn past_72_bytes_bcrypt_reads_no_further() {
        let password = [b'x'; KEY_BYTES];
        let stored = hash(&password, 4).unwrap();
        let mut longer = password.to_vec();
        longer.push(b'!');
        assert!(verify(&longer, &stored));
        assert!(!verify(&password[..71], &stored));
    }

    #[test]
    fn a_check_below_the_floor_is_padded_to_the_floor_s_rounds() {
        assert_eq!(padding_rounds(4, 9), 512 - 16);
        assert_eq!(padding_rounds(11, 12), 4096 - 2048);
        assert_eq!(padding_rounds(9, 9), 0);
        assert_eq!(padding_rounds(12, 9), 0);
    }

    #[test]
    fn a_padded_check_answers_as_the_plain_one() {
        let stored = hash(b"password", 4).unwrap();
        for floor in [MIN_COST, 5, 6] {
            assert!(verify_at_least(b"password", Some(&stored), floor));
            assert!(!verify_at_least(b"passwore", Some(&stored), floor));
        }
        let stored = hash(b"password", 5).unwrap();
        assert!(verify_at_least(b"password", Some(&stored), MIN_COST));
        assert!(!verify_at_least(b"password", None, 5));
        assert!(!verify_at_least(b"password", Some("not a hash"), 5));
    }

    #[test]
    fn a_nul_and_the_password_again_is_the_same_key() {
        // Why authd refuses NULs in passwords: the key schedule cycles "P\0".
        let stored = hash(b"password", 4).unwrap();
        assert!(verify(b"password\0password", &stored));
    }

    fn canonical() -> String {
        hash(b"secret", 4).unwrap()
    }

    #[test]
    fn a_well_formed_hash_parses_in_every_version() {
        let stored = canonical();
        for version in VERSIONS {
            let spelled = stored.replacen("$2b$", version.prefix(), 1);
            assert_eq!(parse(&spelled).map(|p| p.version), Some(version));
            assert!(verify(b"secret", &spelled));
        }
        assert_eq!(cost_of(&stored), Some(4));
    }

    #[test]
    fn a_cost_that_is_not_two_ascii_digits_is_refused() {
        let stored = canonical();
        for cost in ["+4", " 4", "4 ", "4", "004", "-4", "0x", "٠٤"] {
            let broken = stored.replacen("$04$", &format!("${cost}$"), 1);
            assert_eq!(parse(&broken), None, "{broken}");
            assert!(!verify(b"secret", &broken), "{broken}");
            assert_eq!(cost_of(&broken), None, "{broken}");
        }
    }

    #[test]
    fn costs_outside_bcrypts_range_are_refused() {
        assert!(hash(b"x", 3).is_err());
        assert!(hash(b"x", 32).is_err());
        let stored = canonical();
        for cost in ["00", "03", "32", "99"] {
            let broken = stored.replacen("$04$", &format!("${cost}$"), 1);
            assert_eq!(parse(&broken), None, "{broken}");
        }
    }

    /// `stored` with the character at `index` replaced by the next one of bcrypt's alphabet.
    fn with_next_character(stored: &str, index: usize) -> String {
        const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut bytes = stored.as_bytes().to_vec();
        let position = ALPHABET.iter().position(|&c| c == bytes[index]).unwrap();
        bytes[index] = ALPHABET[position + 1];
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_salt_with_spare_bits_set_is_refused() {
        // The salt's last character (index 7 + 21) carries 2 bits and 4 zeros: a canonical one
        // is one of `.Oeu`, and the next letter of the alphabet sets the lowest spare bit
        // while still decoding to 16 bytes in a lenient decoder.
        for _ in 0..8 {
            let stored = canonical();
            let last = 7 + 21;
            assert!(b".Oeu".contains(&stored.as_bytes()[last]), "{stored}");
            let broken = with_next_character(&stored, last);
            assert_eq!(parse(&broken), None, "{broken}");
            assert!(!verify(b"secret", &broken), "{broken}");
            assert_eq!(cost_of(&broken), None, "{broken}");
        }
    }

    #[test]
    fn a_hash_with_spare_bits_set_is_refused() {
        // The hash's last character carries 4 bits and 2 zeros: its index in the alphabet is a
        // multiple of 4, and the next one sets the lowest spare bit.
        let stored = canonical();
        let last = stored.len() - 1;
        let broken = with_next_character(&stored, last);
        assert_eq!(parse(&broken), None, "{broken}");
        assert!(!verify(b"secret", &broken), "{broken}");
        assert_eq!(cost_of(&broken), None, "{broken}");
    }

    #[test]
    fn strings_that_are_not_bcrypt_hashes_are_refused() {
        let stored = canonical();
        for broken in [
            String::new(),
            "not a hash".to_owned(),
            stored[..59].to_owned(),
            format!("{stored}x"),
            stored.replacen("$2b$", "$2x$", 1),
            stored.replacen("$2b$", "$2$", 1),
            stored.replacen("$2b$", "$2c$", 1),
            stored.replacen("$04$", "$04", 1),
            // A character outside the alphabet in the salt, then in the hash.
            format!("{}+{}", &stored[..10], &stored[11..]),
            format!("{}+{}", &stored[..40], &stored[41..]),
            // Non-ASCII where the 53 characters of salt and hash go (byte length kept).
            format!("{}é{}", &stored[..40], &stored[42..]),
        ] {
            assert_eq!(parse(&broken), None, "{broken}");
            assert!(!verify(b"secret", &broken), "{broken}");
        }
    }
}
