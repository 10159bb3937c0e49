//! Input newtypes that parse once and are valid by construction: `Email`, `Password`, `PersonName`, `Otp`.

use std::fmt;

use chrono::{DateTime, Utc};
use email_address::{EmailAddress, Options};
use idna::AsciiDenyList;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
use uuid::Uuid;

/// A user as every door shows it. There is deliberately no password hash here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: Uuid,
    #[schema(example = "ada@example.test")]
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
    /// RFC 3339 timestamp.
    pub created_at: DateTime<Utc>,
    /// Whether the account's current address was proven: by its code or link
    /// (`POST /email/verify`), by confirming an email change, or by an administrator.
    pub email_verified: bool,
    /// RFC 3339: when the current address was proven; null while it is not.
    pub email_verified_at: Option<DateTime<Utc>>,
    /// What the next login asks after the password: `totp` (an authenticator app, once one is
    /// confirmed), else `email` (the emailed code, `two_factor_enabled`), else `none`.
    pub second_factor: SecondFactor,
}

/// The second step a login asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SecondFactor {
    None,
    Email,
    Totp,
}

impl SecondFactor {
    /// The factor of an account with these switches: an authenticator app wins over email.
    pub fn of(totp_enabled: bool, email_code: bool) -> SecondFactor {
        match (totp_enabled, email_code) {
            (true, _) => SecondFactor::Totp,
            (false, true) => SecondFactor::Email,
            (false, false) => SecondFactor::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SecondFactor::None => "none",
            SecondFactor::Email => "email",
            SecondFactor::Totp => "totp",
        }
    }
}

/// Longest address SMTP can carry (RFC 5321 path limit less the angle brackets).
pub const EMAIL_MAX_CHARS: usize = 254;
/// Shortest password accepted, in bytes (NIST SP 800-63B minimum).
pub const PASSWORD_MIN_BYTES: usize = 8;
/// bcrypt ignores everything after 72 bytes; longer passwords are refused, never truncated.
pub const PASSWORD_MAX_BYTES: usize = 72;
/// Lowest bcrypt cost (log2 of the key-setup rounds) bcrypt defines: the least
/// `password.bcrypt_cost` may be, and the least a stored hash may carry.
pub const BCRYPT_MIN_COST: u32 = 4;
/// Highest bcrypt cost bcrypt defines.
pub const BCRYPT_MAX_COST: u32 = 31;
pub const NAME_MAX_CHARS: usize = 100;
pub const OTP_DIGITS: usize = 6;

/// Whether `c` is a character a terminal does not simply draw: a control character (Unicode
/// general category Cc: ESC, CR, ...), a format character (Cf: the bidirectional overrides and
/// isolates such as U+202E, the zero-width space U+200B and joiners U+200C/U+200D, the soft
/// hyphen, the byte-order mark, tag characters) or a line or paragraph separator (Zl U+2028,
/// Zp U+2029). Such a character reorders, hides or breaks what an admin reads, so names and
/// email addresses never hold one, and the admin tables escape any they meet.
pub fn is_hidden_or_control(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || is_default_ignorable_outside_cf(c)
}

/// The code points Unicode calls Default_Ignorable (drawn as nothing) that are not in Cf:
/// the combining grapheme joiner, the Hangul fillers, the Khmer inherent vowels, the Mongolian
/// free variation selectors, the variation selectors, the reserved U+2065, U+FFF0..U+FFF8 and
/// U+E0000..U+E0FFF (DerivedCoreProperties.txt, Unicode 16). `admin\u{FE0F}@example.test`
/// would otherwise read as `admin@example.test` in every table.
fn is_default_ignorable_outside_cf(c: char) -> bool {
    matches!(
        u32::from(c),
        0x034F
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180D
            | 0x180F
            | 0x2065
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0xE0000..=0xE0FFF
    )
}

/// Refuses text holding a format character or a line or paragraph separator, naming the first.
/// (Control characters have their own checks and messages.)
fn refuse_hidden_characters(raw: &str) -> Result<(), String> {
    match raw
        .chars()
        .find(|&c| is_hidden_or_control(c) && !c.is_control())
    {
        Some(c) => Err(format!(
            "must not contain invisible or text-reordering characters (U+{:04X})",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// A syntactically valid email address in the one form authd stores, compares and shows:
/// trimmed, Unicode NFC, lower-cased, and with its domain in ASCII (IDNA punycode), so
/// `José@Bücher.example` typed precomposed or decomposed is always `josé@xn--bcher-kva.example`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, String> {
        if raw.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
            return Err("must not contain line breaks or NUL characters".into());
        }
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".into());
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        refuse_hidden_characters(raw)?;
        // NFC before lower-casing so both spellings of a letter lower-case alike, and again
        // after, because lower-casing may leave a sequence that composes further.
        let lowered: String = trimmed
            .nfc()
            .collect::<String>()
            .to_lowercase()
            .nfc()
            .collect();
        let Some((local, domain)) = lowered.rsplit_once('@') else {
            return Err("is not a valid email address".into());
        };
        // UTS 46 with the STD3 rules: letters, digits and hyphens once in ASCII, nothing else.
        let domain = idna::domain_to_ascii_cow(domain.as_bytes(), AsciiDenyList::STD3)
            .map_err(|_| "has a domain that is not a valid domain name".to_string())?;
        let normalised = format!("{local}@{domain}");
        if normalised.chars().count() > EMAIL_MAX_CHARS {
            return Err(format!("must be at most {EMAIL_MAX_CHARS} characters"));
        }
        let options = Options::default()
            .without_display_text()
            .without_domain_literal()
            .with_required_tld();
        EmailAddress::parse_with_options(&normalised, options)
            .map_err(|_| "is not a valid email address".to_string())?;
        Ok(Email(normalised))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that bcrypt can hash without losing any of it. Debug never shows it.
#[derive(Debug, Clone)]
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: &str) -> Result<Password, String> {
        let len = raw.len();
        if len < PASSWORD_MIN_BYTES {
            return Err(format!("must be at least {PASSWORD_MIN_BYTES} bytes long"));
        }
        if len > PASSWORD_MAX_BYTES {
            return Err(format!(
                "must be at most {PASSWORD_MAX_BYTES} bytes of UTF-8 (bcrypt's limit), this one has {len}"
            ));
        }
        // bcrypt cycles its key with a NUL after it, so "P\0P" hashes like "P"; the other
        // control characters cannot be typed reliably and only come from pasted or forged input.
        if raw.chars().any(char::is_control) {
            return Err(
                "must not contain NUL or other control characters (tab, escape, ...)".into(),
            );
        }
        Ok(Password(raw.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// A first or last name: trimmed, at most 100 characters, no control characters, no format
/// characters and no line or paragraph separators. Empty means absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse_optional(raw: Option<&str>) -> Result<Option<PersonName>, String> {
        let Some(raw) = raw else { return Ok(None) };
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters".into());
        }
        refuse_hidden_characters(raw)?;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed.chars().count() > NAME_MAX_CHARS {
            return Err(format!("must be at most {NAME_MAX_CHARS} characters"));
        }
        Ok(Some(PersonName(trimmed.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A one-time code as typed by the user: exactly six ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Otp(String);

impl Otp {
    pub fn parse(raw: &str) -> Result<Otp, String> {
        let trimmed = raw.trim();
        if trimmed.len() != OTP_DIGITS || !trimmed.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("must be exactly {OTP_DIGITS} digits"));
        }
        Ok(Otp(trimmed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Otp(******)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  Alice.Smith@Example.TEST ").unwrap();
        assert_eq!(email.as_str(), "alice.smith@example.test");
    }

    #[test]
    fn email_with_line_break_or_nul_is_refused() {
        for bad in [
            "a@example.test\r\nBcc: x@y.z",
            "a\n@example.test",
            "a@exam\0ple.test",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn email_syntax_is_checked() {
        for bad in [
            "",
            "plainaddress",
            "@example.test",
            "a@",
            "a@@example.test",
            "a b@example.test",
            "Alice <a@example.test>",
            "a@[127.0.0.1]",
            "a@localhost",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "a@example.test",
            "first.last+tag@sub.example.org",
            "o'neil@example.com",
        ] {
            assert!(Email::parse(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn email_typed_precomposed_or_decomposed_is_one_address_in_nfc() {
        let nfc = Email::parse("jos\u{e9}@example.test").unwrap();
        let nfd = Email::parse("jose\u{301}@example.test").unwrap();
        assert_eq!(nfc, nfd);
        assert_eq!(nfc.as_str(), "jos\u{e9}@example.test");
        // Upper-case decomposed lower-cases to the same precomposed letter.
        assert_eq!(Email::parse("JOSE\u{301}@EXAMPLE.TEST").unwrap(), nfc);
    }

    #[test]
    fn email_domain_is_stored_in_its_ascii_form() {
        let email = Email::parse("User@B\u{fc}cher.Example").unwrap();
        assert_eq!(email.as_str(), "user@xn--bcher-kva.example");
        assert_eq!(
            Email::parse("user@xn--bcher-kva.example").unwrap(),
            email,
            "the punycode spelling is the same address"
        );
        let nfd = Email::parse("user@bu\u{308}cher.example").unwrap();
        assert_eq!(nfd, email);
        for bad in [
            "a@b\u{fc}cher_x.example",
            "a@exa mple.test",
            "a@-bad-.example",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn normalised_email_is_a_fixed_point_of_lower_and_trim() {
        // The database checks email = lower(btrim(email)); Rust's lower-case output must be
        // left alone by a second lower-casing.
        for raw in [
            "\u{c9}MILE@Example.test",
            "STRASSE\u{1e9e}@example.test",
            "\u{130}x@example.test",
        ] {
            let email = Email::parse(raw).unwrap();
            assert_eq!(
                email.as_str(),
                email.as_str().to_lowercase().trim(),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn email_longer_than_254_characters_is_refused() {
        let local = "a".repeat(64);
        let domain = format!("{}.test", "b".repeat(60));
        let mut long = format!("{local}@{domain}");
        while long.len() <= EMAIL_MAX_CHARS {
            long = format!("{long}.b{}", "b".repeat(10));
        }
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn password_length_is_counted_in_bytes_up_to_72() {
        assert!(Password::parse("1234567").is_err());
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(72)).is_ok());
        let err = Password::parse(&"x".repeat(73)).unwrap_err();
        assert!(err.contains("72"), "{err}");
        // 36 two-byte characters are 72 bytes; one more is 74.
        assert!(Password::parse(&"é".repeat(36)).is_ok());
        assert!(Password::parse(&"é".repeat(37)).is_err());
    }

    #[test]
    fn password_with_nul_or_another_control_character_is_refused() {
        for bad in [
            "P\0Password",
            "pass\tword1",
            "pass\u{1b}[2Jword",
            "password\u{7f}",
            "pass\u{85}word",
        ] {
            let err = Password::parse(bad).unwrap_err();
            assert!(err.contains("control characters"), "{bad:?}: {err}");
        }
        assert!(Password::parse("pass word with spaces").is_ok());
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::parse("correct horse battery").unwrap();
        assert!(!format!("{password:?}").contains("horse"));
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(PersonName::parse_optional(None).unwrap(), None);
        assert_eq!(PersonName::parse_optional(Some("  ")).unwrap(), None);
        assert_eq!(
            PersonName::parse_optional(Some(" Ada "))
                .unwrap()
                .unwrap()
                .as_str(),
            "Ada"
        );
        assert!(PersonName::parse_optional(Some(&"x".repeat(101))).is_err());
        assert!(PersonName::parse_optional(Some("Ada\u{7}")).is_err());
    }

    /// Right-to-left override, zero-width space, line separator, paragraph separator, two more
    /// format characters (left-to-right isolate, byte-order mark), and default-ignorable
    /// characters of other categories (variation selector 16, combining grapheme joiner, a
    /// Hangul filler, a tag-block variation selector).
    const HIDDEN: [char; 10] = [
        '\u{202e}',
        '\u{200b}',
        '\u{2028}',
        '\u{2029}',
        '\u{2066}',
        '\u{feff}',
        '\u{fe0f}',
        '\u{34f}',
        '\u{3164}',
        '\u{e0100}',
    ];

    #[test]
    fn names_with_an_invisible_or_reordering_character_are_refused() {
        for c in HIDDEN {
            let err = PersonName::parse_optional(Some(&format!("Ad{c}min"))).unwrap_err();
            assert!(err.contains("invisible"), "{c:?}: {err}");
            assert!(err.contains(&format!("U+{:04X}", u32::from(c))), "{err}");
            // Only around the name, where trimming would otherwise drop some of them, too.
            assert!(PersonName::parse_optional(Some(&format!("Ada{c}"))).is_err());
        }
        assert!(PersonName::parse_optional(Some("Zo\u{eb} O'Neil-\u{5e9}\u{5e8}\u{5d4}")).is_ok());
    }

    #[test]
    fn email_with_an_invisible_or_reordering_character_is_refused() {
        for c in HIDDEN {
            for raw in [
                format!("root{c}@example.test"),
                format!("root@exam{c}ple.test"),
                format!("root@example.test{c}"),
            ] {
                let err = Email::parse(&raw).unwrap_err();
                assert!(err.contains("invisible"), "{raw:?}: {err}");
            }
        }
    }

    #[test]
    fn hidden_characters_are_the_control_format_and_separator_categories() {
        for c in HIDDEN
            .into_iter()
            .chain(['\u{1b}', '\u{85}', '\u{ad}', '\u{e0041}'])
        {
            assert!(is_hidden_or_control(c), "{c:?}");
        }
        for c in [
            'a',
            ' ',
            '\u{e9}',
            '\u{301}',
            '\u{5d0}',
            '\u{3000}',
            '\u{1f600}',
        ] {
            assert!(!is_hidden_or_control(c), "{c:?}");
        }
    }

    #[test]
    fn otp_is_exactly_six_digits() {
        assert!(Otp::parse("123456").is_ok());
        for bad in ["12345", "1234567", "12345a", "١٢٣٤٥٦", ""] {
            assert!(Otp::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            format!("{:?}", Otp::parse("123456").unwrap()),
            "Otp(******)"
        );
    }
}
