//! Authenticator apps and recovery codes: the TOTP secret (RFC 6238: HMAC-SHA-1, 6 digits,
//! 30-second steps, one step of skew) with its otpauth URI and QR codes, and the recovery codes
//! that stand in for a lost phone.
//!
//! No one-time-password arithmetic of our own: `totp-rs` computes and checks the codes, `qrcode`
//! draws the QR codes, `percent-encoding` writes the URI. What is kept here is which parameters
//! authd uses, and how a secret and a recovery code look to the rest of the server. Replay
//! protection (a code accepted at most once) is the caller's: [`TotpSecret::check`] returns the
//! time step it matched, for the store to accept only a later one.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use qrcode::QrCode;
use qrcode::render::{svg, unicode};
use rand::{Rng, RngCore, TryRngCore, rngs::OsRng};
use totp_rs::{Algorithm, Builder, Totp};

/// Digits in a code: what every common authenticator app shows.
pub const TOTP_DIGITS: u8 = 6;
/// Seconds in a time step (RFC 6238's default, and the one apps assume).
pub const TOTP_STEP_SECS: u64 = 30;
/// Steps accepted either side of the current one, for clocks and typing that run late
/// (RFC 6238 section 5.2 recommends at most one).
pub const TOTP_SKEW_STEPS: u16 = 1;

/// Bytes in a new secret: 160 bits, RFC 4226's recommendation (section 4) and SHA-1's size.
const SECRET_BYTES: usize = 20;
/// Secrets [`TotpSecret::from_bytes`] takes: RFC 4226's minimum of 128 bits, and at most one
/// SHA-1 block (longer keys are hashed first by HMAC, so they add nothing).
const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// A user's TOTP secret: 20 random bytes (160 bits, RFC 4226's recommendation) from the OS
/// CSPRNG, or the bytes of one stored earlier. Debug prints nothing of it.
#[derive(Clone)]
pub struct TotpSecret(Totp);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(..)")
    }
}

impl TotpSecret {
    /// A new secret from the operating system's CSPRNG.
    pub fn generate() -> TotpSecret {
        let mut bytes = vec![0u8; SECRET_BYTES];
        OsRng.unwrap_err().fill_bytes(&mut bytes);
        TotpSecret::with_valid_length(bytes)
    }

    /// The secret of `bytes` (as stored, after unsealing); None unless 16 to 64 bytes long.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<TotpSecret> {
        SECRET_LEN
            .contains(&bytes.len())
            .then(|| TotpSecret::with_valid_length(bytes))
    }

    /// `Builder::build` would refuse only a secret under 128 bits (checked by the callers),
    /// digits outside 6..=8, a zero step, or a ':' in a name (none is set here): all constants
    /// here, and `totp_parameters_are_ones_totp_rs_accepts` holds them to that.
    fn with_valid_length(bytes: Vec<u8>) -> TotpSecret {
        TotpSecret(builder(bytes).build_noncompliant())
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.secret().as_bytes()
    }

    /// RFC 4648 base32 without padding, as authenticator apps take it when typed in.
    pub fn to_base32(&self) -> String {
        self.0.secret().to_base32()
    }

    /// The time step (`unix_secs / 30`) a 6-digit `code` is valid for at `unix_secs`, within
    /// one step either side; None otherwise, and for anything that is not 6 ASCII digits (no
    /// space, sign or other script's digits). Should two steps of the window share the code,
    /// the earliest is returned.
    pub fn check(&self, code: &str, unix_secs: u64) -> Option<u64> {
        self.0.check(code, unix_secs)
    }

    /// The code of the time step `step` (for tests and the admin's own check). A step past
    /// `u64::MAX / 30` (no clock reaches one) gives the code of the last one that exists.
    pub fn code_at_step(&self, step: u64) -> String {
        self.0
            .generate(step.saturating_mul(TOTP_STEP_SECS))
            .to_string()
    }

    /// The Key URI an authenticator app reads (from the QR code of it):
    /// `otpauth://totp/<issuer>:<account>?secret=<base32>&issuer=<issuer>&algorithm=SHA1&digits=6&period=30`.
    ///
    /// Issuer and account are percent-encoded (UTF-8, every byte but RFC 3986's unreserved
    /// `A-Z a-z 0-9 - . _ ~`), so any character, control characters included, travels intact.
    /// The one exception is ':', which the Key URI format forbids in both (it separates them,
    /// encoded or not): each ':' is written as U+FF1A FULLWIDTH COLON '：', which reads the
    /// same in the app. An empty issuer leaves the label as the account alone, without an
    /// `issuer` parameter (an account of "." or ".." then is a path segment URI parsers drop:
    /// give an issuer).
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let account = encode_label_part(account);
        let secret = self.to_base32();
        let parameters = format!("algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECS}");
        if issuer.is_empty() {
            format!("otpauth://totp/{account}?secret={secret}&{parameters}")
        } else {
            let issuer = encode_label_part(issuer);
            format!(
                "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&{parameters}"
            )
        }
    }
}

fn builder(secret: Vec<u8>) -> Builder {
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(TOTP_DIGITS)
        .with_skew(TOTP_SKEW_STEPS)
        .with_step_duration(TOTP_STEP_SECS)
        .with_secret(secret)
}

/// Every byte but RFC 3986's unreserved characters is percent-encoded.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode_label_part(text: &str) -> String {
    let text = text.replace(':', "\u{FF1A}");
    utf8_percent_encode(&text, URI_COMPONENT).to_string()
}

/// A QR code of `data` as a standalone SVG document: black modules on white with the standard
/// quiet zone, at least 200 pixels wide, no external resource, no script, no link. None when
/// `data` is too long for any QR code (over 2,331 bytes at the medium error correction used).
pub fn qr_svg(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(
        code.render::<svg::Color<'_>>()
            .dark_color(svg::Color("#000000"))
            .light_color(svg::Color("#ffffff"))
            .min_dimensions(200, 200)
            .build(),
    )
}

/// The same QR code drawn for a terminal: Unicode half blocks, two modules a character, lines
/// joined by '\n', with the quiet zone. Drawn for light text on a dark background (the usual
/// terminal): the light modules are the blocks, so the code reads the right way round there;
/// None as for [`qr_svg`].
pub fn qr_terminal(data: &str) -> Option<String> {
    let code = QrCode::new(data.as_bytes()).ok()?;
    Some(
        code.render::<unicode::Dense1x2>()
            .dark_color(unicode::Dense1x2::Light)
            .light_color(unicode::Dense1x2::Dark)
            .build(),
    )
}

/// The alphabet of recovery codes: the digits and uppercase Latin letters without the five
/// that are read or typed for one another (0/O and 1/I/L). The remaining pairs sometimes
/// named (2/Z, 5/S, 8/B, U/V) are told apart in the monospace type codes are shown in, and
/// keeping them gives 31 symbols: 4.95 bits a character, 49.5 bits a code.
pub const RECOVERY_ALPHABET: &str = "23456789ABCDEFGHJKMNPQRSTUVWXYZ";
/// Characters in a recovery code (without the dash it is shown with).
pub const RECOVERY_CODE_CHARS: usize = 10;
/// Where the dash goes when a code is shown: after this many characters.
const RECOVERY_GROUP: usize = RECOVERY_CODE_CHARS / 2;

/// A recovery code in its one stored form: 10 characters of [`RECOVERY_ALPHABET`], uppercase,
/// no dash. Debug prints nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode(String);

impl std::fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryCode(..)")
    }
}

impl RecoveryCode {
    /// A new code, each character drawn uniformly from the alphabet with the OS CSPRNG.
    pub fn generate() -> RecoveryCode {
        let alphabet = RECOVERY_ALPHABET.as_bytes();
        let mut rng = OsRng.unwrap_err();
        RecoveryCode(
            (0..RECOVERY_CODE_CHARS)
                .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
                .collect(),
        )
    }

    /// Accepts what a person types: any letter case, with or without the dash after the fifth
    /// character, surrounding whitespace trimmed; None for anything else (a look-alike such
    /// as 0, O, 1, I or L included: it is no character of any code, so guessing which was
    /// meant would only spend one of the attempts the caller counts).
    pub fn parse(raw: &str) -> Option<RecoveryCode> {
        let text = raw.trim();
        let compact =
            if text.len() == RECOVERY_CODE_CHARS + 1 && text.as_bytes()[RECOVERY_GROUP] == b'-' {
                // The byte before and after an ASCII '-' are character boundaries in UTF-8.
                format!("{}{}", &text[..RECOVERY_GROUP], &text[RECOVERY_GROUP + 1..])
            } else {
                text.to_owned()
            };
        let code = compact.to_ascii_uppercase();
        (code.len() == RECOVERY_CODE_CHARS
            && code
                .bytes()
                .all(|b| RECOVERY_ALPHABET.as_bytes().contains(&b)))
        .then_some(RecoveryCode(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `XXXXX-XXXXX`, as shown to the user.
    pub fn display(&self) -> String {
        let (first, second) = self.0.split_at(RECOVERY_GROUP);
        format!("{first}-{second}")
    }
}

/// `count` new recovery codes, no two alike.
pub fn generate_recovery_codes(count: usize) -> Vec<RecoveryCode> {
    let mut seen = std::collections::HashSet::with_capacity(count);
    let mut codes = Vec::with_capacity(count);
    // A repeat has a chance of about count / 31^10 a draw: the loop ends after `count` draws
    // all but always.
    while codes.len() < count {
        let code = RecoveryCode::generate();
        if seen.insert(code.0.clone()) {
            codes.push(code);
        }
    }
    codes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use totp_lite::{Sha1, totp_custom};

    /// RFC 6238's SHA-1 seed: the ASCII of "12345678901234567890".
    const RFC_SECRET: &[u8] = b"12345678901234567890";

    fn independent_code(secret: &[u8], unix_secs: u64) -> String {
        totp_custom::<Sha1>(TOTP_STEP_SECS, TOTP_DIGITS.into(), secret, unix_secs)
    }

    #[test]
    fn totp_parameters_are_ones_totp_rs_accepts() {
        for len in [16, 20, 64] {
            assert!(builder(vec![7; len]).build().is_ok(), "{len} bytes");
        }
        assert!(builder(vec![7; 15]).build().is_err());
    }

    /// RFC 6238 appendix B gives 8-digit codes. A code of d digits is the truncated value
    /// modulo 10^d, and 10^6 divides 10^8, so the 6-digit code is exactly the last six digits
    /// of the 8-digit one. Checked both ways: totp-rs with 8 digits gives the RFC's codes, and
    /// ours (6 digits) gives their last six, and accepts them at the RFC's time.
    #[test]
    fn codes_are_the_last_six_digits_of_rfc_6238_sha1_test_vectors() {
        let vectors = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let eight = builder(RFC_SECRET.to_vec()).with_digits(8).build().unwrap();
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec()).unwrap();
        for (time, rfc) in vectors {
            assert_eq!(eight.generate(time).to_string(), rfc, "t={time}");
            let step = time / TOTP_STEP_SECS;
            assert_eq!(secret.code_at_step(step), rfc[2..], "t={time}");
            assert_eq!(secret.check(&rfc[2..], time), Some(step), "t={time}");
            assert_eq!(secret.check(rfc, time), None, "8 digits at t={time}");
        }
    }

    #[test]
    fn codes_accepted_one_step_either_side_and_refused_two_steps_away() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec()).unwrap();
        let now = 1_234_567_890;
        let step = now / TOTP_STEP_SECS;
        for accepted in [step - 1, step, step + 1] {
            assert_eq!(
                secret.check(&secret.code_at_step(accepted), now),
                Some(accepted)
            );
        }
        for refused in [step - 2, step + 2] {
            assert_eq!(secret.check(&secret.code_at_step(refused), now), None);
        }
        // At the start of time, the window is cut short rather than wrapping round.
        assert_eq!(secret.check(&secret.code_at_step(0), 0), Some(0));
    }

    #[test]
    fn check_refuses_anything_but_six_ascii_digits() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec()).unwrap();
        let time = 59;
        let code = secret.code_at_step(time / TOTP_STEP_SECS);
        assert_eq!(code, "287082");
        assert!(secret.check(&code, time).is_some());
        for refused in [
            "",
            "28708",
            "2870820",
            " 287082",
            "287082 ",
            "287 082",
            "+87082",
            "-87082",
            "28708a",
            "２８７０８２",
            "٢٨٧٠٨٢",
        ] {
            assert_eq!(secret.check(refused, time), None, "{refused:?}");
        }
    }

    #[test]
    fn secrets_are_20_random_bytes_kept_out_of_debug_and_16_to_64_bytes_are_taken_back() {
        let a = TotpSecret::generate();
        let b = TotpSecret::generate();
        assert_eq!(a.as_bytes().len(), 20);
        assert_ne!(a.as_bytes(), b.as_bytes());
        let printed = format!("{a:?} {:?}", Some(&a));
        assert!(!printed.contains(&a.to_base32()), "{printed}");
        assert_eq!(format!("{a:?}"), "TotpSecret(..)");
        for len in [16, 20, 32, 64] {
            let secret = TotpSecret::from_bytes(vec![9; len]).unwrap();
            assert_eq!(secret.as_bytes(), vec![9; len].as_slice());
        }
        for len in [0, 10, 15, 65, 128] {
            assert!(
                TotpSecret::from_bytes(vec![9; len]).is_none(),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn base32_is_rfc_4648_without_padding_and_reads_back() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec()).unwrap();
        assert_eq!(secret.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        for len in [16, 17, 20, 33, 64] {
            let bytes: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let text = TotpSecret::from_bytes(bytes.clone()).unwrap().to_base32();
            assert!(!text.contains('='), "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
            );
            let back = totp_rs::Secret::try_from_base32(&text).unwrap();
            assert_eq!(back.as_bytes(), bytes.as_slice());
        }
    }

    #[test]
    fn the_otpauth_uri_names_every_parameter_and_encodes_the_label() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec()).unwrap();
        assert_eq!(
            secret.otpauth_uri("Example Co", "ana+1@example.com"),
            "otpauth://totp/Example%20Co:ana%2B1%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Example%20Co\
             &algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(
            secret.otpauth_uri("", "ana@example.com"),
            "otpauth://totp/ana%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&algorithm=SHA1&digits=6&period=30"
        );
        let read = Totp::from_url(secret.otpauth_uri("", "ana@example.com")).unwrap();
        assert_eq!(read.issuer(), None);
        assert_eq!(read.account_name(), "ana@example.com");
    }

    #[test]
    fn colons_in_issuer_and_account_become_fullwidth_colons() {
        let secret = TotpSecret::generate();
        let uri = secret.otpauth_uri("auth.example.com:8443", "a:b@example.com");
        let read = Totp::from_url(&uri).unwrap();
        assert_eq!(read.issuer(), Some("auth.example.com\u{FF1A}8443"));
        assert_eq!(read.account_name(), "a\u{FF1A}b@example.com");
        assert_eq!(read.secret().as_bytes(), secret.as_bytes());
    }

    #[test]
    fn qr_svg_is_a_standalone_svg_without_script_or_link() {
        let secret = TotpSecret::generate();
        let uri = secret.otpauth_uri("Example Co", "ana@example.com");
        let svg = qr_svg(&uri).unwrap();
        let body = svg.trim_start_matches(r#"<?xml version="1.0" standalone="yes"?>"#);
        assert!(body.starts_with("<svg "), "{svg}");
        assert!(svg.ends_with("</svg>"), "{svg}");
        let lower = svg.to_ascii_lowercase();
        assert!(!lower.contains("<script"), "{svg}");
        assert!(!lower.contains("href"), "{svg}");
        assert!(!lower.contains("url("), "{svg}");
        assert_eq!(
            lower
                .replacen(r#"xmlns="http://www.w3.org/2000/svg""#, "", 1)
                .find("http"),
            None,
            "{svg}"
        );
        assert_eq!(lower.matches("<svg").count(), 1);
        // Too much for any QR code.
        assert_eq!(qr_svg(&"A".repeat(8_000)), None);
        assert_eq!(qr_terminal(&"A".repeat(8_000)), None);
    }

    #[test]
    fn qr_terminal_draws_half_blocks_in_even_lines_inside_a_quiet_zone() {
        let drawing = qr_terminal("otpauth://totp/x:y?secret=GEZDGNBVGY3TQOJQ").unwrap();
        let lines: Vec<&str> = drawing.lines().collect();
        let width = lines[0].chars().count();
        // 21 modules of a version-1 code or more, and 4 modules of quiet zone each side.
        assert!(width >= 21 + 8, "{drawing}");
        for line in &lines {
            assert_eq!(line.chars().count(), width, "{drawing}");
            assert!(line.chars().all(|c| " ▀▄█".contains(c)), "{drawing}");
        }
        // The quiet zone is light, drawn as blocks: four modules (two a line) above and below,
        // four columns at either side. A code has an odd number of rows, so the last line
        // holds one row of modules, its upper halves.
        let last = lines.len() - 1;
        for line in [lines[0], lines[1], lines[last - 1]] {
            assert!(line.chars().all(|c| c == '█'), "{drawing}");
        }
        assert!(lines[last].chars().all(|c| c == '▀'), "{drawing}");
        for line in &lines[..last] {
            assert!(
                line.starts_with("████") && line.ends_with("████"),
                "{drawing}"
            );
        }
    }

    #[test]
    fn recovery_codes_are_ten_characters_of_the_alphabet_shown_with_a_dash() {
        let alphabet: Vec<char> = RECOVERY_ALPHABET.chars().collect();
        assert!(alphabet.len() >= 30);
        for look_alike in ['0', 'O', '1', 'I', 'L'] {
            assert!(!alphabet.contains(&look_alike), "{look_alike}");
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2_000 {
            let code = RecoveryCode::generate();
            assert_eq!(code.as_str().len(), RECOVERY_CODE_CHARS);
            assert!(code.as_str().chars().all(|c| alphabet.contains(&c)));
            let shown = code.display();
            assert_eq!(shown.len(), 11);
            assert_eq!(&shown[5..6], "-");
            assert_eq!(shown.replace('-', ""), code.as_str());
            seen.extend(code.as_str().chars());
        }
        // 20,000 uniform draws miss one of 31 symbols with a chance of about 31 * (30/31)^20000.
        assert_eq!(seen.len(), alphabet.len());
        assert_eq!(
            format!("{:?}", RecoveryCode::generate()),
            "RecoveryCode(..)"
        );
    }

    #[test]
    fn recovery_codes_parse_in_any_case_with_or_without_the_dash_and_trimmed() {
        let code = RecoveryCode::parse("ABCDE-FGHJK").unwrap();
        assert_eq!(code.as_str(), "ABCDEFGHJK");
        for typed in [
            "ABCDEFGHJK",
            "abcde-fghjk",
            "aBcDeFgHjK",
            "  abcdefghjk\n",
            "\tABCDE-FGHJK ",
        ] {
            assert_eq!(
                RecoveryCode::parse(typed).as_ref(),
                Some(&code),
                "{typed:?}"
            );
        }
        let generated = RecoveryCode::generate();
        assert_eq!(
            RecoveryCode::parse(&generated.display()),
            Some(generated.clone())
        );
        assert_eq!(
            RecoveryCode::parse(&generated.display().to_lowercase()),
            Some(generated)
        );
    }

    #[test]
    fn recovery_codes_refuse_look_alikes_wrong_lengths_and_other_symbols() {
        for refused in [
            "",
            "ABCDE-FGHJ0",
            "ABCDE-FGHJO",
            "ABCDE-FGHJ1",
            "ABCDE-FGHJI",
            "abcde-fghjl",
            "ABCDEFGHJ",
            "ABCDEFGHJKM",
            "ABCD-EFGHJK",
            "ABCDEF-GHJK",
            "ABCDE--FGHJK",
            "ABCDE FGHJK",
            "ABCDE_FGHJK",
            "ABCDE–FGHJK",
            "ABCDE-FGHJK-",
            "ABCDEFGHJ!",
            "ÀBCDEFGHJK",
            "ABCDEFGHJＫ",
        ] {
            assert_eq!(RecoveryCode::parse(refused), None, "{refused:?}");
        }
    }

    #[test]
    fn generated_recovery_code_sets_have_the_count_asked_and_no_two_alike() {
        assert!(generate_recovery_codes(0).is_empty());
        let codes = generate_recovery_codes(10);
        assert_eq!(codes.len(), 10);
        let distinct: std::collections::HashSet<&str> =
            codes.iter().map(RecoveryCode::as_str).collect();
        assert_eq!(distinct.len(), 10);
        let again = generate_recovery_codes(10);
        assert!(again.iter().all(|code| !codes.contains(code)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Differential: the codes agree with an independent implementation (`totp-lite`) at
        /// any time and for any secret authd takes, and `check` accepts the codes that
        /// implementation computes one step either side and refuses those two steps away.
        #[test]
        fn codes_and_checks_agree_with_an_independent_implementation(
            secret in proptest::collection::vec(any::<u8>(), 16..=64),
            now in 60u64..=(1u64 << 40),
        ) {
            let ours = TotpSecret::from_bytes(secret.clone()).unwrap();
            let step = now / TOTP_STEP_SECS;
            prop_assert_eq!(ours.code_at_step(step), independent_code(&secret, now));
            let window: Vec<String> = (step - 1..=step + 1)
                .map(|s| independent_code(&secret, s * TOTP_STEP_SECS))
                .collect();
            for (offset, code) in window.iter().enumerate() {
                let matched = ours.check(code, now);
                // Two steps of the window may share a code (about one chance in 10^6): the
                // match is then the earliest of them.
                let earliest = window.iter().position(|c| c == code).unwrap();
                prop_assert_eq!(matched, Some(step - 1 + earliest as u64), "offset {}", offset);
            }
            for far in [step - 2, step + 2] {
                let code = independent_code(&secret, far * TOTP_STEP_SECS);
                prop_assume!(!window.contains(&code));
                prop_assert_eq!(ours.check(&code, now), None);
            }
        }

        /// Any issuer and account (':' aside, see `otpauth_uri`) reads back from the URI as
        /// written, with the secret and the parameters authd uses.
        #[test]
        fn otpauth_uris_read_back_with_their_secret_issuer_and_account(
            issuer in "\\PC{1,40}|[\\x00-\\x7f]{1,40}",
            account in "\\PC{0,60}|[\\x00-\\x7f]{0,60}",
        ) {
            let secret = TotpSecret::generate();
            let uri = secret.otpauth_uri(&issuer, &account);
            prop_assert!(uri.bytes().all(|b| b.is_ascii_graphic()), "{}", uri);
            let read = Totp::from_url(&uri).unwrap();
            prop_assert_eq!(read.secret().as_bytes(), secret.as_bytes());
            let issuer = issuer.replace(':', "\u{FF1A}");
            let account = account.replace(':', "\u{FF1A}");
            prop_assert_eq!(read.issuer(), Some(issuer.as_str()));
            prop_assert_eq!(read.account_name(), account.as_str());
            prop_assert_eq!(read.algorithm(), Algorithm::SHA1);
            prop_assert_eq!(read.digits(), TOTP_DIGITS);
            prop_assert_eq!(read.step(), TOTP_STEP_SECS);
        }
    }
}
