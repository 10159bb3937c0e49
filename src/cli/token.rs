//! `authd token inspect`: decode a token, name its kind, and say exactly why it is (in)valid.

use std::io::Read;

use anyhow::Context;
use chrono::{DateTime, TimeDelta, Utc};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::{
    EXIT_CODES, OutputFormat, Table, UserError, format_utc, is_interactive, new_table, printable,
    to_json, with_auth,
};
use crate::config::Settings;
use crate::keys::{KeyMaterial, KeySet, existing_signing_secret};
use crate::token::{Inspection, SignerSeen, TokenKeys};

/// Longest input read as a token; authd's tokens are a few hundred bytes.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Longest JWKS read by `--jwks`.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// How long fetching `--jwks URL` may take.
const JWKS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Decode a token and verify it with the database's signing keys (by `kid`, and the HS256
    /// secret if there is one), or with a JWKS.
    ///
    /// Shows the header and claims, the kind (access or challenge), the key that signed it and
    /// its state, issue and expiry times in UTC and relative to now, and whether the signature
    /// and claims verify. An invalid token is still decoded as far as possible, then the reason
    /// is given and the exit code is 1.
    #[command(after_help = EXIT_CODES)]
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The token. `-` or nothing reads it from stdin (on a terminal, a hidden prompt).
    #[arg(value_name = "TOKEN|-")]
    token: Option<String>,
    /// Verify with this JWK set instead of the database: a file, or an http(s):// URL such as
    /// https://auth.example.com/.well-known/jwks.json (no database needed then).
    #[arg(long, value_name = "FILE|URL")]
    jwks: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

/// Runs one `authd token` subcommand.
pub async fn run(command: TokenCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        TokenCommand::Inspect(args) => inspect_token(args, settings).await,
    }
}

/// The keys a token is judged by: a JWKS's, or the database's (public halves only, with the
/// HS256 secret if one exists; nothing is generated).
async fn verifying_keys(jwks: Option<&str>, settings: &Settings) -> anyhow::Result<TokenKeys> {
    let set = match jwks {
        Some(source) => {
            let text = read_jwks(source).await?;
            KeySet::from_jwks(&text).map_err(|err| {
                UserError(format!(
                    "{} is not a usable JWK set: {err:#}",
                    without_userinfo(source)
                ))
            })?
        }
        None => {
            let records = with_auth(settings, async |auth| {
                auth.list_keys()
                    .await
                    .context("cannot read the signing keys")
            })
            .await?;
            let secret = existing_signing_secret(settings)?;
            KeySet::from_records(
                &records,
                &KeyMaterial {
                    kek: None,
                    hs256_secret: secret.as_ref().map(|s| s.bytes()),
                    algorithm: settings.jwt.algorithm,
                    retired_horizon_secs: TokenKeys::retired_horizon_secs(settings),
                },
                Utc::now(),
            )?
        }
    };
    Ok(TokenKeys::with_set(set, &settings.jwt))
}

/// The text of a JWKS file or URL, at most [`MAX_JWKS_BYTES`]: a file is read through the
/// same cap as a body, so `/dev/zero` or a huge file stops at the cap instead of filling memory.
async fn read_jwks(source: &str) -> anyhow::Result<String> {
    // A scheme is case-insensitive (RFC 3986): `HTTP://user:pw@host/` is a URL, not a file
    // whose name an error line would print with the password.
    let scheme = source
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        let shown = printable(&without_userinfo(source));
        let file = std::fs::File::open(source)
            .map_err(|err| UserError(format!("cannot read the JWKS file {shown}: {err}")))?;
        let mut bytes = Vec::new();
        file.take(MAX_JWKS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|err| UserError(format!("cannot read the JWKS file {shown}: {err}")))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(UserError(format!("{shown} is over {MAX_JWKS_BYTES} bytes")).into());
        }
        return String::from_utf8(bytes)
            .map_err(|_| UserError(format!("{shown} is not UTF-8")).into());
    }
    let shown = printable(&without_userinfo(source));
    crate::install_crypto_provider();
    let fetched = async {
        let client = reqwest::Client::builder()
            .timeout(JWKS_TIMEOUT)
            // The keys come from the URL given or not at all: a redirect (to http://, say)
            // could hand in keys that make a forged token look valid.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let mut response = client.get(source).send().await?.error_for_status()?;
        // Read in chunks, and stop past the cap: a chunked answer has no length to check first.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Ok(None);
            }
        }
        Ok::<_, reqwest::Error>(Some(body))
    }
    .await
    // reqwest's messages name the URL, password included: say it once, without them.
    .map_err(|err| {
        UserError(format!(
            "cannot fetch the JWKS {shown}: {:#}",
            anyhow::Error::new(err.without_url())
        ))
    })?;
    let body = fetched.ok_or_else(|| {
        UserError(format!(
            "the JWKS at {shown} is over {MAX_JWKS_BYTES} bytes"
        ))
    })?;
    String::from_utf8(body).map_err(|_| UserError(format!("{shown} is not UTF-8")).into())
}

/// `source` as messages show it: a URL without its user information (`http://admin:pw@host/`
/// is shown as `http://host/`), so a password given in it never reaches a terminal or a log.
/// A URL that does not parse is cut after its scheme up to its last `@`, which removes too
/// much rather than too little.
fn without_userinfo(source: &str) -> String {
    match reqwest::Url::parse(source) {
        Ok(mut url) => {
            if url.set_username("").is_err() || url.set_password(None).is_err() {
                return "(the --jwks URL)".into();
            }
            url.to_string()
        }
        Err(_) => match (source.split_once("://"), source.rfind('@')) {
            (Some((scheme, _)), Some(at)) => format!("{scheme}://{}", &source[at + 1..]),
            _ => source.to_owned(),
        },
    }
}

async fn inspect_token(args: InspectArgs, settings: &Settings) -> anyhow::Result<()> {
    let token = read_token(args.token)?;
    let keys = verifying_keys(args.jwks.as_deref(), settings).await?;
    let inspection = keys.inspect(&token);
    let now = Utc::now();
    match args.format {
        OutputFormat::Table => println!("{}", inspection_table(&inspection, now)),
        OutputFormat::Json => println!("{}", to_json(&inspection_json(&inspection, now))?),
    }
    match inspection.verdict {
        Ok(_) => Ok(()),
        Err(reason) => Err(UserError(format!("invalid token: {reason}")).into()),
    }
}

/// The token from the argument, stdin, or a hidden prompt; surrounding whitespace is ignored.
fn read_token(arg: Option<String>) -> anyhow::Result<String> {
    let raw = match arg {
        Some(token) if token != "-" => token,
        _ if is_interactive() => dialoguer::Password::new()
            .with_prompt("Token")
            .interact()
            .context("cannot read the token from the terminal")?,
        _ => {
            let mut raw = String::new();
            std::io::stdin()
                .take(MAX_TOKEN_BYTES)
                .read_to_string(&mut raw)
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::InvalidData => {
                        anyhow::Error::new(UserError("the token on stdin is not UTF-8".into()))
                    }
                    _ => anyhow::Error::new(err).context("cannot read the token from stdin"),
                })?;
            raw
        }
    };
    let token = raw.trim();
    if token.is_empty() {
        return Err(UserError(
            "no token given: pass it as an argument, or pipe it in and pass -".into(),
        )
        .into());
    }
    Ok(token.to_owned())
}

fn kind_label(inspection: &Inspection) -> String {
    let typ = inspection
        .header
        .as_ref()
        .and_then(|h| h.get("typ"))
        .and_then(Value::as_str);
    match (inspection.kind, typ) {
        (Some(kind), Some(typ)) => format!("{} (typ {typ})", kind.name()),
        (None, Some(typ)) => format!("unknown (typ {typ} is not a kind authd issues)"),
        (_, None) if inspection.header.is_some() => "unknown (no typ in the header)".into(),
        (_, None) => "unknown".into(),
    }
}

fn status_label(inspection: &Inspection) -> String {
    match &inspection.verdict {
        Ok(_) => "valid: signature and claims verified".into(),
        Err(reason) => format!("invalid: {reason}"),
    }
}

/// The registered claims in the order they are read: who, about whom, for whom, when.
const CLAIM_ORDER: [&str; 8] = ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "sid"];

fn inspection_table(inspection: &Inspection, now: DateTime<Utc>) -> Table {
    let mut table = new_table();
    table.add_row(["kind".to_owned(), kind_label(inspection)]);
    let header = inspection
        .header
        .as_ref()
        .map_or_else(|| "(cannot be decoded)".into(), Value::to_string);
    table.add_row(["header".to_owned(), header]);
    match &inspection.claims {
        Some(Value::Object(claims)) => {
            let known = CLAIM_ORDER
                .iter()
                .filter_map(|&name| claims.get_key_value(name));
            let others = claims
                .iter()
                .filter(|(name, _)| !CLAIM_ORDER.contains(&name.as_str()));
            for (name, value) in known.chain(others) {
                table.add_row([name.clone(), claim_label(name, value, now)]);
            }
        }
        Some(other) => {
            table.add_row(["claims".to_owned(), other.to_string()]);
        }
        None => {
            table.add_row(["claims".to_owned(), "(cannot be decoded)".to_owned()]);
        }
    }
    table.add_row(["signed by".to_owned(), signer_label(&inspection.signer)]);
    table.add_row(["status".to_owned(), status_label(inspection)]);
    table
}

/// The key a token names, and its state.
fn signer_label(signer: &SignerSeen) -> String {
    match signer {
        SignerSeen::Hs256Secret => "the HS256 secret (jwt.secret)".into(),
        SignerSeen::Key {
            kid,
            state: Some(state),
        } => format!("key {kid} ({})", state.as_str()),
        SignerSeen::Key { kid, state: None } => format!("key {kid} (not a key of this key set)"),
        SignerSeen::Unknown => "(no key named)".into(),
    }
}

/// A claim's value for people: times in UTC and relative to now, strings without quotes.
fn claim_label(name: &str, value: &Value, now: DateTime<Utc>) -> String {
    let time = value
        .as_i64()
        .and_then(|secs| DateTime::from_timestamp(secs, 0));
    match (name, time) {
        ("exp", Some(at)) => format!("{} ({})", format_utc(at), expiry_phrase(at, now)),
        ("iat", Some(at)) => format!("{} ({})", format_utc(at), issued_phrase(at, now)),
        ("nbf", Some(at)) => format!("{} ({})", format_utc(at), not_before_phrase(at, now)),
        _ => value
            .as_str()
            .map_or_else(|| value.to_string(), str::to_owned),
    }
}

fn inspection_json(inspection: &Inspection, now: DateTime<Utc>) -> Value {
    json!({
        "kind": inspection.kind.map(|k| k.name()),
        "header": inspection.header,
        "claims": inspection.claims,
        "issued_at": inspection.issued_at,
        "issued": inspection.issued_at.map(|at| issued_phrase(at, now)),
        "expires_at": inspection.expires_at,
        "expires": inspection.expires_at.map(|at| expiry_phrase(at, now)),
        "kid": match &inspection.signer {
            SignerSeen::Key { kid, .. } => Some(kid.as_str()),
            _ => None,
        },
        "key_state": match &inspection.signer {
            SignerSeen::Key { state, .. } => state.map(|s| s.as_str()),
            SignerSeen::Hs256Secret => Some("hs256-secret"),
            SignerSeen::Unknown => None,
        },
        "valid": inspection.verdict.is_ok(),
        "error": inspection.verdict.as_ref().err().map(ToString::to_string),
    })
}

/// "expires in 14m" or "expired 3h ago".
fn expiry_phrase(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at >= now {
        format!("expires in {}", span(at - now))
    } else {
        format!("expired {} ago", span(now - at))
    }
}

/// "issued 2m ago", or "issued 5s in the future" when the issuer's clock is ahead.
fn issued_phrase(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at <= now {
        format!("issued {} ago", span(now - at))
    } else {
        format!("issued {} in the future", span(at - now))
    }
}

/// "valid since 1m" or "not valid for another 30s".
fn not_before_phrase(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at <= now {
        format!("valid since {}", span(now - at))
    } else {
        format!("not valid for another {}", span(at - now))
    }
}

/// A duration in its largest whole unit, rounded down: "45s", "14m", "3h", "2d".
fn span(delta: TimeDelta) -> String {
    let secs = delta.num_seconds().unsigned_abs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h", secs / 3_600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn span_uses_the_largest_whole_unit() {
        assert_eq!(span(TimeDelta::seconds(0)), "0s");
        assert_eq!(span(TimeDelta::seconds(59)), "59s");
        assert_eq!(span(TimeDelta::seconds(60)), "1m");
        assert_eq!(span(TimeDelta::seconds(899)), "14m");
        assert_eq!(span(TimeDelta::seconds(3 * 3_600 + 59 * 60)), "3h");
        assert_eq!(span(TimeDelta::seconds(2 * 86_400 + 5)), "2d");
        assert_eq!(span(TimeDelta::seconds(-90)), "1m");
    }

    #[test]
    fn expiry_reads_as_future_or_past() {
        assert_eq!(expiry_phrase(at(899), at(0)), "expires in 14m");
        assert_eq!(expiry_phrase(at(0), at(0)), "expires in 0s");
        assert_eq!(expiry_phrase(at(0), at(3 * 3_600 + 10)), "expired 3h ago");
    }

    #[test]
    fn a_token_fresh_from_the_issuer_reads_as_issued_just_now() {
        // A token's times are whole seconds; now has a fraction that must not show as "1m".
        let now = at(120) + TimeDelta::milliseconds(700);
        assert_eq!(issued_phrase(at(0), now), "issued 2m ago");
        assert_eq!(issued_phrase(at(120), now), "issued 0s ago");
        assert_eq!(issued_phrase(at(125), now), "issued 4s in the future");
    }

    #[test]
    fn not_before_reads_as_since_or_until() {
        assert_eq!(not_before_phrase(at(0), at(60)), "valid since 1m");
        assert_eq!(
            not_before_phrase(at(30), at(0)),
            "not valid for another 30s"
        );
    }

    #[test]
    fn time_claims_are_shown_in_utc_with_relative_phrases() {
        let now = at(60);
        assert_eq!(
            claim_label("exp", &json!(1_700_000_900), now),
            "2023-11-14 22:28:20 UTC (expires in 14m)"
        );
        assert_eq!(claim_label("iss", &json!("authd"), now), "authd");
        assert_eq!(claim_label("exp", &json!("soon"), now), "soon");
    }

    #[test]
    fn a_jwks_url_is_shown_without_its_user_information() {
        assert_eq!(
            without_userinfo("http://admin:s3cret@jwks.example.test:8080/keys?x=1"),
            "http://jwks.example.test:8080/keys?x=1"
        );
        assert_eq!(
            without_userinfo("https://admin@jwks.example.test/"),
            "https://jwks.example.test/"
        );
        assert_eq!(
            without_userinfo("https://jwks.example.test/a@b"),
            "https://jwks.example.test/a@b"
        );
        // Not a URL the parser takes (a `/` in the password): cut up to the last `@`.
        let unparsable = without_userinfo("http://admin:s3/cret@[bad/jwks");
        assert!(!unparsable.contains("s3"), "{unparsable}");
        assert_eq!(
            without_userinfo("/etc/authd/jwks.json"),
            "/etc/authd/jwks.json"
        );
    }

    #[test]
    fn the_table_lists_registered_claims_in_reading_order_then_the_rest() {
        let claims = json!({"jti": "j", "exp": 1_700_000_900, "zz": 1, "iss": "authd", "sub": "s"});
        let inspection = Inspection {
            header: Some(json!({"alg": "HS256"})),
            claims: Some(claims),
            kind: None,
            issued_at: None,
            expires_at: None,
            verdict: Err(crate::token::TokenError::WrongKind),
            signer: SignerSeen::Unknown,
        };
        let table = inspection_table(&inspection, at(0)).to_string();
        let names: Vec<&str> = table
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .collect();
        assert_eq!(
            names,
            [
                "kind", "header", "iss", "sub", "exp", "jti", "zz", "signed", "status"
            ]
        );
        assert!(table.contains("invalid: wrong token kind"));
    }
}
