//! Users in bulk (`authd user import`, `authd user export`): each imported row goes through the
//! same parsing as a registration (the email and name rules, the password policy for a plain
//! password), a hash another system made is checked for well-formedness and kept as it is (a
//! login verifies it and hashes the password again with bcrypt, see `crate::password`), and the
//! whole import is one event in the audit trail.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::Auth;
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Password, PersonName};
use crate::error::Result;
use crate::store::{ExportCursor, ExportedUser, GivenFields, ImportCounts, ImportedUser};
use sha2::{Digest, Sha256};

/// One row of an import file as read: every field as the file gives it, checked by
/// [`Auth::prepare_import`]. Unknown fields are ignored (an errors file's `line` and `error`
/// included, so a fixed errors file imports as it is).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct ImportRow {
    pub email: Option<String>,
    /// A bcrypt (`$2a$`, `$2b$`, `$2y$`), Argon2id (PHC) or Django `pbkdf2_sha256$` hash.
    pub password_hash: Option<String>,
    /// A password in clear, hashed here (and checked against the password policy).
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    pub two_factor_enabled: Option<bool>,
    #[serde(default, deserialize_with = "flag")]
    pub email_verified: Option<bool>,
    /// A disabled account is imported (or, with `--update`, set) disabled.
    #[serde(default, deserialize_with = "flag")]
    pub disabled: Option<bool>,
    /// RFC 3339; default: the time of the import.
    pub created_at: Option<String>,
}

/// A yes/no field: a JSON boolean, or in CSV `true`/`false`, `1`/`0`, `yes`/`no` (any case);
/// empty is absent.
fn flag<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Bool(bool),
        Text(String),
    }
    match Option::<Given>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Given::Bool(value)) => Ok(Some(value)),
        Some(Given::Text(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "true" | "1" | "yes" | "t" => Ok(Some(true)),
            "false" | "0" | "no" | "f" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "{other:?} is not true or false"
            ))),
        },
    }
}

/// How an import treats what it meets.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Users already there take the row's profile and hash (else they are skipped).
    pub update: bool,
    /// A plain password is not checked against the password policy (its length and
    /// characters still are).
    pub skip_policy: bool,
}

/// Why a row was refused: one line for the person fixing the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Refusal {
    fn field(name: &str, message: impl std::fmt::Display) -> Refusal {
        Refusal(format!("{name}: {message}"))
    }
}

/// The most a row's `created_at` may lie ahead of the import's clock (clocks differ a little).
const CREATED_AT_SLACK_SECS: i64 = 300;

/// A row's `created_at`: RFC 3339, or PostgreSQL's text form of a `timestamptz`
/// (`2024-05-01 12:00:00.5+00`), which a `\copy` of the old table writes.
fn parse_time(
    text: &str,
) -> std::result::Result<DateTime<chrono::FixedOffset>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
}

impl Auth {
    /// One row, checked as a registration is, into a user to write; or why not. A plain
    /// password is hashed here (on the hashing pool, so this may wait for it).
    pub async fn prepare_import(
        &self,
        row: ImportRow,
        options: ImportOptions,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<ImportedUser, Refusal>> {
        let email = match row.email.as_deref().map(Email::parse) {
            None => return Ok(Err(Refusal::field("email", "is required"))),
            Some(Err(message)) => return Ok(Err(Refusal::field("email", message))),
            Some(Ok(email)) => email,
        };
        let first_name = match PersonName::parse_optional(row.first_name.as_deref()) {
            Ok(name) => name.map(PersonName::into_string),
            Err(message) => return Ok(Err(Refusal::field("first_name", message))),
        };
        let last_name = match PersonName::parse_optional(row.last_name.as_deref()) {
            Ok(name) => name.map(PersonName::into_string),
            Err(message) => return Ok(Err(Refusal::field("last_name", message))),
        };
        let created_at = match row.created_at.as_deref().map(str::trim) {
            None | Some("") => now,
            Some(text) => match parse_time(text) {
                Ok(at)
                    if at.with_timezone(&Utc)
                        > now + chrono::Duration::seconds(CREATED_AT_SLACK_SECS) =>
                {
                    return Ok(Err(Refusal::field("created_at", "is in the future")));
                }
                Ok(at) if at.timestamp() < 0 => {
                    return Ok(Err(Refusal::field("created_at", "is before 1970")));
                }
                Ok(at) => at.with_timezone(&Utc),
                Err(_) => {
                    return Ok(Err(Refusal::field(
                        "created_at",
                        "is not an RFC 3339 time (2024-05-01T12:00:00Z) or PostgreSQL's (2024-05-01 12:00:00+00)",
                    )));
                }
            },
        };
        let given = |value: &Option<String>| value.as_deref().filter(|v| !v.is_empty()).is_some();
        // What a later import compares: the hash as the file gave it (a plain password's own
        // hash is new each time, so it is compared by verifying, below).
        let mut hash_digest = None;
        let password_hash = match (&row.password_hash, &row.password) {
            (Some(_), Some(_)) if given(&row.password_hash) && given(&row.password) => {
                return Ok(Err(Refusal(
                    "give password_hash or password, not both".to_owned(),
                )));
            }
            (Some(hash), _) if given(&row.password_hash) => {
                match self.hasher.check_imported(hash.trim()) {
                    Ok(hash) => {
                        hash_digest = Some(Sha256::digest(hash.as_bytes()).to_vec());
                        hash
                    }
                    Err(message) => return Ok(Err(Refusal::field("password_hash", message))),
                }
            }
            (_, Some(plain)) if given(&row.password) => {
                let password = match Password::parse(plain) {
                    Ok(password) => password,
                    Err(message) => return Ok(Err(Refusal::field("password", message))),
                };
                if !options.skip_policy {
                    let words = super::register::personal_words(
                        email.as_str(),
                        [&first_name, &last_name]
                            .into_iter()
                            .flatten()
                            .map(String::as_str),
                    );
                    if let Err(message) = self.hasher.check_policy(&password, words).await? {
                        return Ok(Err(Refusal::field("password", message)));
                    }
                }
                // With --update, a password the user already has keeps its hash: a new salt
                // would be a change (and end their sessions) every time the file is imported.
                let kept = match options.update {
                    true => self.store.find_credentials(&email).await?,
                    false => None,
                };
                match kept {
                    Some(stored)
                        if self
                            .hasher
                            .verify(password.expose(), Some(&stored.password_hash))
                            .await? =>
                    {
                        stored.password_hash
                    }
                    _ => self.hasher.hash(&password).await?,
                }
            }
            _ => {
                return Ok(Err(Refusal(
                    "password_hash or password is required".to_owned(),
                )));
            }
        };
        let given = GivenFields {
            first_name: given(&row.first_name),
            last_name: given(&row.last_name),
            two_factor_enabled: row.two_factor_enabled.is_some(),
            email_verified: row.email_verified.is_some(),
            disabled: row.disabled.is_some(),
        };
        Ok(Ok(ImportedUser {
            id: Uuid::now_v7(),
            email: email.as_str().to_owned(),
            hash_digest: hash_digest
                .unwrap_or_else(|| Sha256::digest(password_hash.as_bytes()).to_vec()),
            password_hash,
            first_name,
            last_name,
            two_factor_enabled: row.two_factor_enabled.unwrap_or(false),
            email_verified: row.email_verified.unwrap_or(false),
            disabled: row.disabled.unwrap_or(false),
            created_at,
            given,
        }))
    }

    /// Writes a batch of prepared users (emails unique within it).
    pub async fn import_batch(
        &self,
        batch: &[ImportedUser],
        options: ImportOptions,
    ) -> Result<ImportCounts> {
        self.store
            .import_users(batch, options.update, Utc::now())
            .await
    }

    /// The import, as one event in the audit trail: its counts and where it came from.
    pub async fn record_import(
        &self,
        counts: &ImportCounts,
        refused: u64,
        source: &str,
    ) -> Result<()> {
        self.record_admin_change(SecurityEvent::new(EventKind::UsersImported).detail(format!(
            "by cli: {} imported, {} updated ({} with a new hash or disabled: sessions ended), {} skipped, {} refused, from {source}",
            counts.imported, counts.updated, counts.sessions_ended_for, counts.skipped, refused
        )))
        .await
    }

    /// The next page of an export.
    pub async fn export_page(
        &self,
        after: Option<ExportCursor>,
        limit: u32,
    ) -> Result<Vec<ExportedUser>> {
        self.store.export_users_page(after, limit).await
    }

    /// An export, in the audit trail: how many users, where to, with hashes or not.
    pub async fn record_export(&self, users: u64, hashes: bool, target: &str) -> Result<()> {
        self.record_admin_change(SecurityEvent::new(EventKind::UsersExported).detail(format!(
            "by cli: {users} users to {target}, {}",
            if hashes {
                "with password hashes"
            } else {
                "without password hashes"
            }
        )))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_is_read_as_rfc_3339_or_as_postgresql_writes_it() {
        let utc = |text: &str| parse_time(text).map(|t| t.with_timezone(&Utc).to_rfc3339());
        assert_eq!(
            utc("2024-05-01T12:00:00Z").unwrap(),
            "2024-05-01T12:00:00+00:00"
        );
        assert_eq!(
            utc("2024-05-01 12:00:00+00").unwrap(),
            "2024-05-01T12:00:00+00:00"
        );
        assert_eq!(
            utc("2024-05-01 14:00:00.25+02").unwrap(),
            "2024-05-01T12:00:00.250+00:00"
        );
        assert_eq!(
            utc("2024-05-01 14:30:00+02:30").unwrap(),
            "2024-05-01T12:00:00+00:00"
        );
        for bad in [
            "yesterday",
            "2024-05-01",
            "2024-05-01 12:00:00",
            "2024-13-01T00:00:00Z",
        ] {
            assert!(utc(bad).is_err(), "{bad}");
        }
    }
}
