//! Settings: layered loading (built-in defaults, files, `AUTHD_` environment) and their checks.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{BCRYPT_MAX_COST, BCRYPT_MIN_COST};

/// The compiled-in defaults: the same file that documents every setting.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Everything authd can be configured with. Secrets are `SecretString`, so `Debug` cannot print them.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub env: Environment,
    pub data_dir: PathBuf,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub jwt: JwtSettings,
    pub password: PasswordSettings,
    pub otp: OtpSettings,
    pub rate_limit: RateLimitSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
    pub mail: MailSettings,
    pub audit: AuditSettings,
    pub session: SessionSettings,
    pub keys: KeysSettings,
    pub registration: RegistrationSettings,
    pub verification: VerificationSettings,
    pub webauthn: WebauthnSettings,
}

/// What a new account must do before it may log in.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationSettings {
    /// Logins of accounts whose address is not proven answer 403 `email_not_verified` (after
    /// the password was checked), and no second-step code goes to such an address.
    pub require_verified_email: bool,
}

/// The emailed codes and links that prove an address (and the limits every account email
/// shares: verification, password reset).
#[derive(Debug, Clone, Deserialize)]
pub struct VerificationSettings {
    /// How long a verification code and its link work.
    pub ttl_secs: u64,
    /// At most one verification (or reset) email per address within this many seconds.
    pub resend_interval_secs: u64,
    /// At most this many verification (or reset) emails per address per day.
    pub max_per_day: u32,
}

/// Passkeys (WebAuthn): the relying party authd is to a browser.
#[derive(Debug, Clone, Deserialize)]
pub struct WebauthnSettings {
    /// The domain passkeys are bound to. Empty: the host of `http.public_url` (`localhost` when
    /// that is a loopback address, since WebAuthn takes no IP address).
    pub rp_id: String,
    /// The name an authenticator shows next to a passkey.
    pub rp_name: String,
    /// The origins pages that call the ceremonies are served from (a TOML array, or in the
    /// environment a comma-separated list). Empty: `http.public_url`.
    #[serde(deserialize_with = "list_or_commas")]
    pub origins: Vec<String>,
}

/// Where passkeys are bound, resolved from `webauthn.*` and `http.public_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingPartySettings {
    pub rp_id: String,
    pub rp_name: String,
    pub origins: Vec<url::Url>,
}

/// A list setting given as a TOML array or as one comma-separated string (the environment).
fn list_or_commas<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        List(Vec<String>),
        Commas(String),
    }
    let items = match Given::deserialize(deserializer)? {
        Given::List(items) => items,
        Given::Commas(text) => text.split(',').map(str::to_owned).collect(),
    };
    Ok(items
        .into_iter()
        .map(|item| item.trim().to_owned())
        .filter(|item| !item.is_empty())
        .collect())
}

/// The signing keys and the key-encryption key.
#[derive(Debug, Clone, Deserialize)]
pub struct KeysSettings {
    /// The key-encryption key: 64 hex characters (32 bytes) that seal the signing keys' private
    /// halves. Unset: generated once into `<data_dir>/key-encryption-key` (development only).
    pub encryption_key: Option<SecretString>,
    /// How often an instance reads the key set again, to notice a rotation or a revocation.
    pub refresh_secs: u64,
}

/// Sessions and their refresh tokens.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionSettings {
    /// A refresh token dies this long after its session was last refreshed (sliding).
    pub refresh_ttl_secs: u64,
    /// A session dies this long after its login, however often it is refreshed.
    pub absolute_ttl_secs: u64,
    /// How long the refresh token just rotated still answers (with the session's current
    /// tokens) instead of counting as reuse.
    pub reuse_grace_secs: u64,
    /// Live sessions a user may have; a login past it revokes their oldest.
    pub max_per_user: u32,
    /// A sensitive action (changing the email address) needs a login at most this many
    /// seconds old, else 403 `reauthentication_required`.
    pub fresh_login_secs: u64,
}

/// The longest `keys.refresh_secs`: the JWKS is cached for as long, so it bounds how long
/// another service may go on trusting a revoked key.
pub const MAX_KEYS_REFRESH_SECS: u64 = 3600;

/// The longest session authd accepts: keeps every expiry inside what both databases store.
pub const MAX_SESSION_SECS: u64 = 10 * 365 * 24 * 3600;

/// The longest an emailed verification or reset code may work: a link in an old message
/// should not open an account months later.
pub const MAX_CODE_TTL_SECS: u64 = 30 * 24 * 3600;

/// The longest `audit.retry_max_secs`: events wait at most this long after the database is back.
pub const MAX_AUDIT_RETRY_SECS: u64 = 300;

/// The audit trail and the pruning of expired rows.
#[derive(Debug, Clone, Deserialize)]
pub struct AuditSettings {
    /// Security events older than this many days are pruned.
    pub retention_days: u32,
    /// How often the pruning task runs (one instance at a time on PostgreSQL).
    pub prune_interval_secs: u64,
    /// While the database is down, the longest wait between two tries of the audit writer.
    pub retry_max_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// Empty: /metrics on the API listener; otherwise a separate listen address.
    pub addr: String,
    /// Production serves /metrics on the API port only when this says that port is private.
    pub api_port_private: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
}

/// Where authd runs. Production refuses development-only shortcuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub addr: String,
    /// The URL clients reach this server at (no trailing path), for the URLs published in
    /// `/.well-known/oauth-authorization-server`. Empty: `http://` + `addr`.
    pub public_url: String,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    pub request_timeout_secs: u64,
    /// Open connections per process; past it new ones are closed at once.
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per prefix of `rate_limit.ipv6_prefix_len`).
    pub max_connections_per_ip: usize,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout_secs: u64,
    /// HTTP/2: a PING after this much silence; no answer within `http2_keepalive_timeout_secs` closes.
    pub http2_keepalive_interval_secs: u64,
    pub http2_keepalive_timeout_secs: u64,
}

/// Brute-force controls. Account counters live in the database so instances share them.
#[derive(Debug, Clone, Deserialize)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub login_failures_per_account: u32,
    pub otp_failures_per_account: u32,
    pub lockout_secs: u64,
    pub requests_per_ip_per_minute: u32,
    pub client_ip_header: String,
    /// IPv6 clients are keyed by this prefix (a client usually owns a /64).
    pub ipv6_prefix_len: u8,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout_secs: u64,
}

/// What access and challenge tokens are signed with (`jwt.algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with a key from the database (the default).
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519 with a key from the database.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// HMAC-SHA256 with `jwt.secret`: only a service holding the secret can verify.
    #[serde(rename = "HS256")]
    Hs256,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::EdDsa => "EdDSA",
            JwtAlgorithm::Hs256 => "HS256",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct JwtSettings {
    pub algorithm: JwtAlgorithm,
    pub secret: Option<SecretString>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl_secs: u64,
    pub challenge_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PasswordSettings {
    pub bcrypt_cost: u32,
    /// How long a password-reset code and its link work.
    pub reset_ttl_secs: u64,
    /// Hashes that may wait for a hashing thread; past that, 503 at once.
    pub max_queue: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OtpSettings {
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    Smtp,
    /// Development only: the message is written to the log.
    Log,
    /// Development only: each message becomes a .eml file in `mail.file_dir`.
    File,
}

impl MailTransport {
    pub fn is_development_only(self) -> bool {
        matches!(self, MailTransport::Log | MailTransport::File)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct MailSettings {
    pub transport: MailTransport,
    pub from: String,
    pub file_dir: PathBuf,
    /// Code emails per account within `codes_window_secs`; past it /login answers 429.
    pub max_codes_per_account: u32,
    pub codes_window_secs: u64,
    /// The name the messages give the service, in their subjects and bodies.
    pub product_name: String,
    /// Where the links in the messages lead (`<this>/verify-email?token=...`,
    /// `<this>/reset-password?token=...`). Empty: authd's own pages at `Settings::public_url()`.
    pub link_base_url: String,
    pub smtp: SmtpSettings,
}

/// Longest `mail.product_name`, in characters: it goes into every subject, which stays short.
pub const MAX_PRODUCT_NAME_CHARS: usize = 40;

impl MailSettings {
    /// Refuses mail settings that cannot work, with a one-line reason naming the setting.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_codes_per_account == 0 || self.codes_window_secs == 0 {
            bail!("mail.max_codes_per_account and mail.codes_window_secs must be positive");
        }
        let name = self.product_name.trim();
        if name.is_empty() || name.chars().count() > MAX_PRODUCT_NAME_CHARS {
            bail!("mail.product_name must be 1 to {MAX_PRODUCT_NAME_CHARS} characters");
        }
        if name.chars().any(char::is_control) {
            bail!("mail.product_name must not hold control characters (line breaks, tabs)");
        }
        // The code is the only six-digit word of a message: readers (and the tests) find it so.
        let six_digits = |word: &str| {
            let word = word.trim_matches(|c: char| c.is_ascii_punctuation());
            word.len() == 6 && word.bytes().all(|b| b.is_ascii_digit())
        };
        if name.split_whitespace().any(six_digits) {
            bail!(
                "mail.product_name must not hold a six-digit number: it would be taken for the code"
            );
        }
        if let Some(base) = self.link_base_url() {
            check_link_base_url(base)?;
        }
        Ok(())
    }

    /// The configured base of the links, trimmed, without one trailing slash; None when empty.
    pub fn link_base_url(&self) -> Option<&str> {
        let base = self.link_base_url.trim();
        let base = base.strip_suffix('/').unwrap_or(base);
        (!base.is_empty()).then_some(base)
    }
}

/// An absolute http(s) URL with a host and neither query nor fragment: the links append a path
/// and `?token=` to it.
fn check_link_base_url(base: &str) -> anyhow::Result<()> {
    let reason = if base.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("must not hold spaces or control characters")
    } else {
        match url::Url::parse(base) {
            Err(_) => Some("must be an absolute http:// or https:// URL"),
            Ok(url) if !matches!(url.scheme(), "http" | "https") || !url.has_host() => {
                Some("must be an absolute http:// or https:// URL")
            }
            Ok(url) if url.query().is_some() || url.fragment().is_some() => {
                Some("must have no query (?) or fragment (#): the links add their own ?token=")
            }
            Ok(url) if !url.username().is_empty() || url.password().is_some() => {
                Some("must not hold a user name or password")
            }
            Ok(_) => None,
        }
    };
    match reason {
        Some(reason) => bail!("mail.link_base_url {base:?} {reason}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod mail_settings_tests {
    use super::*;

    fn with_link_base(base: &str) -> anyhow::Result<()> {
        let mut settings = Settings::defaults();
        settings.mail.link_base_url = base.into();
        settings.check()
    }

    #[test]
    fn a_link_base_url_that_is_an_absolute_http_url_is_accepted_without_one_trailing_slash() {
        for base in [
            "https://app.example.com/account",
            "https://app.example.com/account/",
            "http://localhost:3000",
            " https://app.example.com ",
        ] {
            with_link_base(base).unwrap_or_else(|e| panic!("{base}: {e}"));
        }
        let mut mail = Settings::defaults().mail;
        assert_eq!(mail.link_base_url(), None);
        mail.link_base_url = "https://app.example.com/account/".into();
        assert_eq!(
            mail.link_base_url(),
            Some("https://app.example.com/account")
        );
        mail.link_base_url = "https://app.example.com//".into();
        assert_eq!(mail.link_base_url(), Some("https://app.example.com/"));
    }

    #[test]
    fn a_link_base_url_that_is_relative_not_http_or_has_a_query_or_fragment_is_refused_by_name() {
        for base in [
            "app.example.com/account",
            "/account",
            "ftp://app.example.com",
            "javascript:alert(1)",
            "https://app.example.com/account?x=1",
            "https://app.example.com/account?",
            "https://app.example.com/account#top",
            "https://user:pw@app.example.com",
            "https://app.example.com/a b",
            "https://app.example.com/\nx",
        ] {
            let err = with_link_base(base).expect_err(base).to_string();
            assert!(err.starts_with("mail.link_base_url"), "{base}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_product_name_that_is_empty_too_long_multiline_or_a_six_digit_number_is_refused_by_name() {
        let long = "x".repeat(MAX_PRODUCT_NAME_CHARS + 1);
        for name in [
            "",
            "  ",
            long.as_str(),
            "Acme\nBcc: x@example.test",
            "Shop 123456",
        ] {
            let mut settings = Settings::defaults();
            settings.mail.product_name = name.into();
            let err = settings.check().expect_err(name).to_string();
            assert!(err.starts_with("mail.product_name"), "{name}: {err}");
        }
        let mut settings = Settings::defaults();
        settings.mail.product_name = "Acme <b>Shop</b> 2025".into();
        settings.check().unwrap();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub tls: SmtpTls,
    pub timeout_secs: u64,
    /// Production refuses a cleartext relay that is not on loopback unless this is true.
    pub allow_cleartext: bool,
}

/// Minimum length of the HMAC secret: HS256 with a shorter key is guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// The HS256 secret docker-compose.yml published for development up to 0.2: production refuses it.
pub const DEVELOPMENT_SECRET: &str = "development-only-jwt-secret-never-use-in-production";

/// The key-encryption key docker-compose.yml publishes for development: production refuses it.
pub const DEVELOPMENT_ENCRYPTION_KEY: &str =
    "646576656c6f706d656e742d6f6e6c792d6b65792d6e657665722d70726f6421";

/// Fewest distinct bytes a production signing secret may have. 32 random decimal digits (the
/// poorest alphabet a generator uses) have 9 or 10 distinct in 97% of draws and fewer than 8 in
/// about 0.1%; 32 random hex digits have fewer than 8 practically never. Repeated characters
/// and short cycles ("aaaa...", "abcabc...") fall far below.
pub const MIN_SECRET_DISTINCT_BYTES: usize = 8;

/// Lowest bcrypt cost production accepts (OWASP's floor for bcrypt).
pub const MIN_PRODUCTION_BCRYPT_COST: u32 = 10;

/// Largest `password.max_queue`: beyond this a queue only hides an overload for minutes.
pub const MAX_HASH_QUEUE: usize = 10_000;

impl Settings {
    /// Loads the layers: defaults, `./config/default.toml`, `file` (must exist if given), `AUTHD_*`.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .add_source(config::File::from(PathBuf::from("config/default.toml")).required(false));
        if let Some(file) = file {
            if !file.is_file() {
                bail!("configuration file {} does not exist", file.display());
            }
            builder = builder.add_source(config::File::from(file.to_path_buf()).required(true));
        }
        let settings: Settings = builder
            .add_source(
                config::Environment::with_prefix("AUTHD")
                    .prefix_separator("_")
                    .separator("__"),
            )
            .build()
            .context("cannot read configuration")?
            .try_deserialize()
            .context("invalid configuration")?;
        settings.check()?;
        Ok(settings)
    }

    /// The built-in defaults alone, ignoring files and environment: a base that tests and tools adjust.
    pub fn defaults() -> Settings {
        config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULTS_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .expect("the compiled-in config/default.toml is valid")
    }

    /// Rejects values that would make authd insecure or unusable, with the setting's name.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&self.password.bcrypt_cost) {
            bail!(
                "password.bcrypt_cost must be between {BCRYPT_MIN_COST} and {BCRYPT_MAX_COST}, got {}",
                self.password.bcrypt_cost
            );
        }
        if self.password.max_queue > MAX_HASH_QUEUE {
            bail!(
                "password.max_queue must be at most {MAX_HASH_QUEUE}, got {}",
                self.password.max_queue
            );
        }
        if self.otp.max_attempts == 0 {
            bail!("otp.max_attempts must be at least 1");
        }
        if self.jwt.access_ttl_secs == 0 || self.jwt.challenge_ttl_secs == 0 {
            bail!("jwt.access_ttl_secs and jwt.challenge_ttl_secs must be positive");
        }
        // Past this, the times computed from them would overflow (and no token should live so
        // long: a revoked session is seen by other services only at its token's expiry).
        if self.jwt.access_ttl_secs > MAX_SESSION_SECS
            || self.jwt.challenge_ttl_secs > MAX_SESSION_SECS
        {
            bail!(
                "jwt.access_ttl_secs and jwt.challenge_ttl_secs must be at most {MAX_SESSION_SECS} (ten years)"
            );
        }
        let limits = &self.rate_limit;
        if limits.login_failures_per_account == 0
            || limits.otp_failures_per_account == 0
            || limits.requests_per_ip_per_minute == 0
            || limits.lockout_secs == 0
        {
            bail!(
                "rate_limit values must be positive (set rate_limit.enabled = false to switch limits off)"
            );
        }
        if self.http.header_timeout_secs == 0
            || self.http.body_timeout_secs == 0
            || self.http.request_timeout_secs == 0
        {
            bail!("http timeouts must be positive");
        }
        if self.http.max_connections == 0
            || self.http.max_connections_per_ip == 0
            || self.http.idle_timeout_secs == 0
            || self.http.http2_keepalive_interval_secs == 0
            || self.http.http2_keepalive_timeout_secs == 0
        {
            bail!(
                "http.max_connections, http.max_connections_per_ip, http.idle_timeout_secs and the http2 keep-alive times must be positive"
            );
        }
        if !(1..=128).contains(&self.rate_limit.ipv6_prefix_len) {
            bail!(
                "rate_limit.ipv6_prefix_len must be between 1 and 128, got {}",
                self.rate_limit.ipv6_prefix_len
            );
        }
        self.mail.check()?;
        if self.audit.retention_days == 0 || self.audit.prune_interval_secs == 0 {
            bail!("audit.retention_days and audit.prune_interval_secs must be positive");
        }
        if !(1..=MAX_AUDIT_RETRY_SECS).contains(&self.audit.retry_max_secs) {
            bail!("audit.retry_max_secs must be 1..={MAX_AUDIT_RETRY_SECS}");
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections must be at least 1");
        }
        let session = &self.session;
        if session.refresh_ttl_secs == 0
            || session.absolute_ttl_secs == 0
            || session.max_per_user == 0
        {
            bail!(
                "session.refresh_ttl_secs, session.absolute_ttl_secs and session.max_per_user must be positive"
            );
        }
        if session.refresh_ttl_secs > session.absolute_ttl_secs {
            bail!(
                "session.refresh_ttl_secs ({}) must not exceed session.absolute_ttl_secs ({})",
                session.refresh_ttl_secs,
                session.absolute_ttl_secs
            );
        }
        if session.absolute_ttl_secs > MAX_SESSION_SECS {
            bail!("session.absolute_ttl_secs must be at most {MAX_SESSION_SECS} (ten years)");
        }
        if session.fresh_login_secs == 0 || session.fresh_login_secs > MAX_SESSION_SECS {
            bail!("session.fresh_login_secs must be between 1 and {MAX_SESSION_SECS} (ten years)");
        }
        for (name, secs) in [
            ("verification.ttl_secs", self.verification.ttl_secs),
            ("password.reset_ttl_secs", self.password.reset_ttl_secs),
        ] {
            if !(60..=MAX_CODE_TTL_SECS).contains(&secs) {
                bail!("{name} must be between 60 and {MAX_CODE_TTL_SECS} (30 days), got {secs}");
            }
        }
        if self.verification.max_per_day == 0 {
            bail!("verification.max_per_day must be at least 1");
        }
        if self.verification.resend_interval_secs > 86_400 {
            bail!("verification.resend_interval_secs must be at most 86400 (a day)");
        }
        if session.reuse_grace_secs > 300 {
            bail!(
                "session.reuse_grace_secs must be at most 300: a rotated refresh token that still works longer is a second valid token"
            );
        }
        if let Some(secret) = &self.jwt.secret {
            check_secret(secret)?;
        }
        if let Some(kek) = &self.keys.encryption_key {
            parse_kek(kek.expose_secret()).context("keys.encryption_key")?;
        }
        if !(1..=MAX_KEYS_REFRESH_SECS).contains(&self.keys.refresh_secs) {
            bail!(
                "keys.refresh_secs must be between 1 and {MAX_KEYS_REFRESH_SECS}: it bounds how long a revoked key goes on being accepted by other services"
            );
        }
        let public_url = self.http.public_url.trim();
        let absolute = public_url.starts_with("http://") || public_url.starts_with("https://");
        if !(public_url.is_empty() || absolute) {
            bail!("http.public_url must start with http:// or https://");
        }
        self.relying_party()?;
        let url = self.database_url();
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            bail!("database.url must start with postgres:// or sqlite://");
        }
        Ok(())
    }

    /// In production, refuses the development-only shortcuts, each with a one-line reason.
    pub fn check_production(&self) -> anyhow::Result<()> {
        if self.env != Environment::Production {
            return Ok(());
        }
        if self.mail.transport.is_development_only() {
            bail!(
                "refusing to start in production: mail.transport = {:?} is for development only; configure SMTP (AUTHD_MAIL__TRANSPORT=smtp)",
                self.mail.transport
            );
        }
        let Some(kek) = &self.keys.encryption_key else {
            bail!(
                "refusing to start in production without keys.encryption_key: a generated one is for development only; set AUTHD_KEYS__ENCRYPTION_KEY (openssl rand -hex 32)"
            );
        };
        if kek.expose_secret().trim() == DEVELOPMENT_ENCRYPTION_KEY {
            bail!(
                "refusing to start in production: keys.encryption_key is the public development key from docker-compose.yml; generate one (openssl rand -hex 32)"
            );
        }
        let kek = parse_kek(kek.expose_secret())
            .context("refusing to start in production: keys.encryption_key")?;
        // Not read here (the key comes from settings), but a copy of an earlier key that others
        // can read opens the signing keys it sealed.
        let file = self.generated_kek_path();
        if let Some(mode) = crate::files::mode_open_to_others(&file) {
            bail!(
                "refusing to start in production: {} (mode {mode:o}) is a key-encryption key other users can read; production uses keys.encryption_key: delete the file or chmod 600 it",
                file.display()
            );
        }
        let distinct = distinct_bytes(&kek);
        if distinct < MIN_SECRET_DISTINCT_BYTES {
            bail!(
                "refusing to start in production: keys.encryption_key has only {distinct} distinct bytes (at least {MIN_SECRET_DISTINCT_BYTES}), it is not random; generate one (openssl rand -hex 32)"
            );
        }
        match &self.jwt.secret {
            None if self.jwt.algorithm == JwtAlgorithm::Hs256 => bail!(
                "refusing to start in production with jwt.algorithm = \"HS256\" without jwt.secret: a generated key is for development only; set AUTHD_JWT__SECRET (at least {MIN_SECRET_BYTES} bytes)"
            ),
            None => {}
            Some(secret) => {
                let secret = secret.expose_secret().as_bytes();
                if secret == DEVELOPMENT_SECRET.as_bytes() {
                    bail!(
                        "refusing to start in production: jwt.secret is the public development secret from docker-compose.yml; generate one (openssl rand -hex 32)"
                    );
                }
                let distinct = distinct_bytes(secret);
                if distinct < MIN_SECRET_DISTINCT_BYTES {
                    bail!(
                        "refusing to start in production: jwt.secret has only {distinct} distinct characters (at least {MIN_SECRET_DISTINCT_BYTES}), it is not random; generate one (openssl rand -hex 32)"
                    );
                }
            }
        }
        if !self.rate_limit.enabled {
            bail!(
                "refusing to start in production with rate_limit.enabled = false: logins and codes would have no brute-force protection"
            );
        }
        if self.password.bcrypt_cost < MIN_PRODUCTION_BCRYPT_COST {
            bail!(
                "refusing to start in production with password.bcrypt_cost = {}: at least {MIN_PRODUCTION_BCRYPT_COST}",
                self.password.bcrypt_cost
            );
        }
        if let Some(rp) = self.relying_party()? {
            if rp.rp_id.eq_ignore_ascii_case("localhost") {
                bail!(
                    "refusing to start in production: passkeys would be bound to webauthn.rp_id = \"localhost\"; set http.public_url (https) or webauthn.rp_id to your domain"
                );
            }
            if let Some(origin) = rp.origins.iter().find(|o| o.scheme() != "https") {
                bail!(
                    "refusing to start in production: the passkey origin {} is not https; set http.public_url or webauthn.origins to https URLs",
                    origin.as_str().trim_end_matches('/')
                );
            }
        }
        let smtp = &self.mail.smtp;
        let has_password = smtp
            .password
            .as_ref()
            .is_some_and(|p| !p.expose_secret().is_empty());
        if self.mail.transport == MailTransport::Smtp
            && smtp.tls == SmtpTls::None
            && has_password
            && !is_loopback_host(&smtp.host)
            && !smtp.allow_cleartext
        {
            bail!(
                "refusing to start in production: mail.smtp.tls = \"none\" would send the SMTP password to {} in clear; use starttls or tls (or set mail.smtp.allow_cleartext = true)",
                smtp.host
            );
        }
        Ok(())
    }

    /// The database URL: the configured one, or the SQLite file in the data directory.
    pub fn database_url(&self) -> String {
        let url = self.database.url.expose_secret().trim();
        if url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("authd.db").display())
        } else {
            url.to_string()
        }
    }

    /// Directory of the file mail transport.
    pub fn mail_file_dir(&self) -> PathBuf {
        if self.mail.file_dir.as_os_str().is_empty() {
            self.data_dir.join("mail")
        } else {
            self.mail.file_dir.clone()
        }
    }

    /// Where a generated signing key is kept.
    pub fn generated_secret_path(&self) -> PathBuf {
        self.data_dir.join("jwt-secret")
    }

    /// The public base URL of the API, without a trailing slash.
    pub fn public_url(&self) -> String {
        let configured = self.http.public_url.trim().trim_end_matches('/');
        if configured.is_empty() {
            format!("http://{}", self.http.addr.trim())
        } else {
            configured.to_owned()
        }
    }

    /// Where passkeys are bound: `webauthn.rp_id` or the host of [`Settings::public_url`]
    /// (`localhost` for a loopback address, outside production), and `webauthn.origins` or
    /// that URL. `None` when nothing names a domain (the URL's host is an IP address, and no
    /// `webauthn.rp_id` is set): passkeys are off. An origin that is not an http(s) URL of its
    /// own (no path) is an error.
    pub fn relying_party(&self) -> anyhow::Result<Option<RelyingPartySettings>> {
        let public = url::Url::parse(&self.public_url()).context("http.public_url is not a URL")?;
        let loopback_ip = matches!(public.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
            || matches!(public.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback());
        let configured = self
            .webauthn
            .rp_id
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let rp_id = if !configured.is_empty() {
            if configured.parse::<std::net::IpAddr>().is_ok()
                || configured.contains(['/', ':', ' '])
            {
                bail!(
                    "webauthn.rp_id must be a domain name (no scheme, port or IP address), not {configured:?}"
                );
            }
            configured
        } else {
            match public.host() {
                Some(url::Host::Domain(domain)) => domain.to_ascii_lowercase(),
                // Development's zero configuration; in production a loopback address names
                // no domain the server is reached at (behind a proxy): passkeys stay off.
                _ if loopback_ip && self.env != Environment::Production => "localhost".to_owned(),
                _ => return Ok(None),
            }
        };
        let origins = if self.webauthn.origins.is_empty() {
            let mut origin = public.clone();
            if loopback_ip && rp_id == "localhost" {
                origin
                    .set_host(Some("localhost"))
                    .context("http.public_url cannot name localhost")?;
            }
            origin.set_path("");
            vec![origin]
        } else {
            self.webauthn
                .origins
                .iter()
                .map(|text| {
                    let origin = url::Url::parse(text)
                        .ok()
                        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                        .filter(|u| u.path() == "/" && u.query().is_none() && u.fragment().is_none())
                        .with_context(|| {
                            format!("webauthn.origins: {text:?} is not an origin (https://host[:port], no path)")
                        })?;
                    Ok(origin)
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let rp_name = self.webauthn.rp_name.trim();
        if rp_name.is_empty() {
            bail!("webauthn.rp_name must not be empty");
        }
        Ok(Some(RelyingPartySettings {
            rp_id,
            rp_name: rp_name.to_owned(),
            origins,
        }))
    }

    /// Where a generated key-encryption key is kept when `keys.encryption_key` is not set.
    pub fn generated_kek_path(&self) -> PathBuf {
        self.data_dir.join("key-encryption-key")
    }

    /// The configured signing secret, if any.
    pub fn configured_jwt_secret(&self) -> Option<&SecretString> {
        self.jwt.secret.as_ref()
    }
}

/// How many different byte values `bytes` holds.
fn distinct_bytes(bytes: &[u8]) -> usize {
    let mut seen = [false; 256];
    for &b in bytes {
        seen[usize::from(b)] = true;
    }
    seen.iter().filter(|&&s| s).count()
}

/// Whether `host` names this machine: `localhost` or a loopback address (127.0.0.0/8, ::1).
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().trim_end_matches('.');
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) fn check_secret(secret: &SecretString) -> anyhow::Result<()> {
    let len = secret.expose_secret().len();
    if len < MIN_SECRET_BYTES {
        bail!("jwt.secret must be at least {MIN_SECRET_BYTES} bytes long, it has {len}");
    }
    Ok(())
}

/// 64 hex characters as 32 bytes.
pub fn parse_kek(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("must be 64 hex characters (32 bytes)");
    }
    let mut key = [0u8; 32];
    for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).expect("ASCII hex digits");
        *byte = u8::from_str_radix(pair, 16).expect("checked hex digits");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_parse_and_pass_checks() {
        let settings = Settings::defaults();
        settings.check().unwrap();
        assert_eq!(settings.http.addr, "127.0.0.1:5050");
        assert_eq!(settings.jwt.access_ttl_secs, 900);
        assert_eq!(settings.password.bcrypt_cost, 12);
        assert_eq!(settings.password.max_queue, 32);
        assert_eq!(settings.mail.smtp.tls, SmtpTls::None);
    }

    #[test]
    fn an_unbounded_hashing_queue_is_refused_with_the_setting_name() {
        let mut settings = Settings::defaults();
        settings.password.max_queue = MAX_HASH_QUEUE + 1;
        let err = settings.check().unwrap_err().to_string();
        assert!(err.contains("password.max_queue"), "{err}");
        settings.password.max_queue = 0;
        settings.check().unwrap();
    }

    #[test]
    fn token_lifetimes_past_ten_years_are_refused_with_the_setting_name_not_a_panic() {
        let mut settings = Settings::defaults();
        settings.jwt.access_ttl_secs = u64::MAX;
        let err = settings.check().unwrap_err().to_string();
        assert!(err.contains("jwt.access_ttl_secs"), "{err}");
        settings.jwt.access_ttl_secs = 900;
        settings.jwt.challenge_ttl_secs = MAX_SESSION_SECS + 1;
        let err = settings.check().unwrap_err().to_string();
        assert!(err.contains("jwt.challenge_ttl_secs"), "{err}");
        settings.jwt.challenge_ttl_secs = MAX_SESSION_SECS;
        settings.check().unwrap();
    }

    #[test]
    fn an_audit_retry_cap_of_zero_or_past_five_minutes_is_refused_with_the_setting_name() {
        let mut settings = Settings::defaults();
        assert_eq!(settings.audit.retry_max_secs, 5);
        for refused in [0, MAX_AUDIT_RETRY_SECS + 1] {
            settings.audit.retry_max_secs = refused;
            let err = settings.check().unwrap_err().to_string();
            assert!(err.contains("audit.retry_max_secs"), "{err}");
        }
        for allowed in [1, MAX_AUDIT_RETRY_SECS] {
            settings.audit.retry_max_secs = allowed;
            settings.check().unwrap();
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut settings = Settings::defaults();
        settings.jwt.secret = Some("a-very-secret-value-that-is-long-enough".into());
        settings.database.url = "postgres://u:hunter2hunter2@db/authd".into();
        let printed = format!("{settings:?}");
        assert!(!printed.contains("a-very-secret-value"));
        assert!(!printed.contains("hunter2"));
    }

    /// Production settings that pass every check, for each test to spoil one way.
    fn sound_production() -> Settings {
        let mut settings = Settings::defaults();
        settings.env = Environment::Production;
        settings.mail.transport = MailTransport::Smtp;
        settings.keys.encryption_key =
            Some("3c9e1f07a2b84d6e5f10c3a7b9d2e8f4061a5c7e9b3d2f8a4c6e0b1d7f9a3c5e".into());
        settings
    }

    #[test]
    fn a_sound_production_configuration_passes() {
        sound_production().check_production().unwrap();
        let mut relay = sound_production();
        relay.mail.smtp.password = Some("relay-password".into());
        for host in ["localhost", "127.0.0.1", "127.0.0.53", "::1", "[::1]"] {
            relay.mail.smtp.host = host.into();
            relay.check_production().unwrap();
        }
        relay.mail.smtp.host = "smtp.example.test".into();
        relay.mail.smtp.tls = SmtpTls::Starttls;
        relay.check_production().unwrap();
        relay.mail.smtp.tls = SmtpTls::None;
        relay.mail.smtp.allow_cleartext = true;
        relay.check_production().unwrap();
        relay.mail.smtp.allow_cleartext = false;
        relay.mail.smtp.password = None;
        relay.check_production().unwrap();
        // HS256 with its own secret is sound too.
        let mut hs256 = sound_production();
        hs256.jwt.algorithm = JwtAlgorithm::Hs256;
        hs256.jwt.secret = Some("0f3a9c1e7b52d8469e0c2b7a5d1f8e3c".into());
        hs256.check_production().unwrap();
    }

    #[test]
    fn production_refuses_each_weak_setting_with_its_name() {
        type Spoil = fn(&mut Settings);
        let cases: [(&str, Spoil); 11] = [
            ("without keys.encryption_key", |s| {
                s.keys.encryption_key = None
            }),
            ("keys.encryption_key is the public development key", |s| {
                s.keys.encryption_key = Some(DEVELOPMENT_ENCRYPTION_KEY.into())
            }),
            ("keys.encryption_key has only 1 distinct", |s| {
                s.keys.encryption_key = Some("ab".repeat(32).into())
            }),
            ("keys.encryption_key", |s| {
                s.keys.encryption_key = Some("not hex".into())
            }),
            ("HS256\" without jwt.secret", |s| {
                s.jwt.algorithm = JwtAlgorithm::Hs256
            }),
            ("docker-compose.yml", |s| {
                s.jwt.secret = Some(DEVELOPMENT_SECRET.into())
            }),
            ("distinct", |s| s.jwt.secret = Some("x".repeat(32).into())),
            ("distinct", |s| {
                s.jwt.secret = Some("abcdefg".repeat(6).into())
            }),
            ("rate_limit.enabled", |s| s.rate_limit.enabled = false),
            ("password.bcrypt_cost", |s| s.password.bcrypt_cost = 9),
            ("mail.smtp.tls", |s| {
                s.mail.smtp.host = "smtp.example.test".into();
                s.mail.smtp.password = Some("relay-password".into());
            }),
        ];
        for (expected, spoil) in cases {
            let mut settings = sound_production();
            spoil(&mut settings);
            let err = settings.check_production().unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
            settings.env = Environment::Development;
            settings.check_production().unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn passkeys_are_bound_to_the_public_url_s_domain_or_to_localhost_for_a_loopback_address() {
        let rp = |public_url: &str, rp_id: &str, origins: &[&str]| {
            let mut settings = Settings::defaults();
            settings.http.public_url = public_url.into();
            settings.webauthn.rp_id = rp_id.into();
            settings.webauthn.origins = origins.iter().map(|o| o.to_string()).collect();
            settings.relying_party().map(|rp| {
                rp.map(|rp| {
                    let origins: Vec<String> = rp.origins.iter().map(|o| o.to_string()).collect();
                    (rp.rp_id, origins)
                })
            })
        };
        let one = |id: &str, origin: &str| Some((id.to_owned(), vec![origin.to_owned()]));
        assert_eq!(
            rp("https://Auth.Example.com/", "", &[]).unwrap(),
            one("auth.example.com", "https://auth.example.com/")
        );
        assert_eq!(
            rp("http://127.0.0.1:5050", "", &[]).unwrap(),
            one("localhost", "http://localhost:5050/")
        );
        assert_eq!(
            rp("http://[::1]:8080", "", &[]).unwrap(),
            one("localhost", "http://localhost:8080/")
        );
        assert_eq!(
            rp("http://10.1.2.3:5050", "", &[]).unwrap(),
            None,
            "an IP address names no domain: passkeys off"
        );
        assert_eq!(
            rp(
                "https://auth.example.com",
                "example.com",
                &["https://app.example.com", " https://example.com "]
            )
            .unwrap(),
            Some((
                "example.com".to_owned(),
                vec![
                    "https://app.example.com/".to_owned(),
                    "https://example.com/".to_owned()
                ]
            ))
        );
        for (rp_id, origins) in [
            ("10.0.0.1", &[][..]),
            ("https://example.com", &[]),
            ("", &["https://example.com/login"]),
            ("", &["ftp://example.com"]),
            ("", &["example.com"]),
        ] {
            let err = rp("https://auth.example.com", rp_id, origins)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("webauthn."), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn passkey_origins_are_a_toml_array_or_a_comma_separated_list_from_the_environment() {
        let read = |origins: serde_json::Value| {
            serde_json::from_value::<WebauthnSettings>(
                serde_json::json!({"rp_id": "", "rp_name": "authd", "origins": origins}),
            )
            .unwrap()
            .origins
        };
        let both = ["https://a.example", "https://b.example"];
        assert_eq!(read(serde_json::json!(both)), both);
        assert_eq!(
            read(serde_json::json!(" https://a.example, https://b.example ,")),
            both
        );
        assert!(read(serde_json::json!("")).is_empty());
    }

    #[test]
    fn production_refuses_passkeys_on_localhost_or_on_a_page_that_is_not_https() {
        let mut settings = sound_production();
        settings.http.public_url = "https://auth.example.com".into();
        settings.check_production().unwrap();
        // No domain at all: passkeys are off, nothing to refuse (a loopback address included:
        // in production that is a proxy's upstream, not the address browsers use).
        for public_url in ["", "http://127.0.0.1:5050", "http://10.0.0.7"] {
            settings.http.public_url = public_url.into();
            settings.check_production().unwrap();
            assert_eq!(settings.relying_party().unwrap(), None, "{public_url}");
        }
        for (public_url, rp_id, origins, expected) in [
            (
                "http://auth.example.com",
                "",
                vec![],
                "http://auth.example.com is not https",
            ),
            ("http://localhost:5050", "", vec![], "rp_id = \"localhost\""),
            (
                "http://127.0.0.1:5050",
                "localhost",
                vec![],
                "rp_id = \"localhost\"",
            ),
            ("https://localhost", "", vec![], "rp_id = \"localhost\""),
            (
                "https://auth.example.com",
                "",
                vec![
                    "https://auth.example.com".to_owned(),
                    "http://app.auth.example.com".to_owned(),
                ],
                "http://app.auth.example.com is not https",
            ),
        ] {
            settings.http.public_url = public_url.into();
            settings.webauthn.rp_id = rp_id.into();
            settings.webauthn.origins = origins;
            let err = settings.check_production().unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn production_refuses_a_key_encryption_key_file_other_users_can_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("authd-prod-kek-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut settings = sound_production();
        settings.data_dir = dir.clone();
        let file = settings.generated_kek_path();
        std::fs::write(&file, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = settings.check_production().unwrap_err().to_string();
        assert!(err.contains("key-encryption-key (mode 644)"), "{err}");
        assert!(err.contains("keys.encryption_key"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        settings.check_production().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_development_key_is_the_one_docker_compose_publishes() {
        // (DEVELOPMENT_SECRET is the JWT secret it published before the signing keys.)
        let compose = include_str!("../docker-compose.yml");
        assert!(compose.contains(DEVELOPMENT_ENCRYPTION_KEY));
        assert!(parse_kek(DEVELOPMENT_ENCRYPTION_KEY).is_ok());
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(check_secret(&"short".into()).is_err());
        assert!(check_secret(&"x".repeat(32).into()).is_ok());
    }
}
