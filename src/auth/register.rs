//! Registration: parsing what a door received, and the one path to a new user (`POST /register`
//! and `authd user add`).

use chrono::Utc;
use uuid::Uuid;

use super::{Auth, Client};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::{Email, Password, PersonName, User};
use crate::error::{Error, FieldError, Result};
use crate::store::NewUser;

/// Raw registration input as it arrives from any door, before parsing.
#[derive(Debug, Default, Clone)]
pub struct RegistrationInput {
    pub email: Option<String>,
    pub password: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
}

/// A registration whose every field is valid.
#[derive(Debug, Clone)]
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub first_name: Option<PersonName>,
    pub last_name: Option<PersonName>,
    pub two_factor_enabled: bool,
}

impl Registration {
    /// Parses every field and reports all problems at once.
    pub fn parse(input: RegistrationInput) -> Result<Registration> {
        let mut errors = Vec::new();
        let email = required(&mut errors, "email", input.email.as_deref(), Email::parse);
        let password = required(
            &mut errors,
            "password",
            input.password.as_deref(),
            Password::parse,
        );
        let first_name = field(
            &mut errors,
            "first_name",
            PersonName::parse_optional(input.first_name.as_deref()),
        );
        let last_name = field(
            &mut errors,
            "last_name",
            PersonName::parse_optional(input.last_name.as_deref()),
        );
        match (email, password, first_name, last_name) {
            (Some(email), Some(password), Some(first_name), Some(last_name))
                if errors.is_empty() =>
            {
                Ok(Registration {
                    email,
                    password,
                    first_name,
                    last_name,
                    two_factor_enabled: input.two_factor_enabled,
                })
            }
            _ => Err(Error::Validation(errors)),
        }
    }
}

fn required<T>(
    errors: &mut Vec<FieldError>,
    name: &str,
    raw: Option<&str>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    match raw {
        None => {
            errors.push(FieldError::new(name, "is required"));
            None
        }
        Some(raw) => field(errors, name, parse(raw)),
    }
}

fn field<T>(errors: &mut Vec<FieldError>, name: &str, parsed: Result<T, String>) -> Option<T> {
    parsed
        .map_err(|message| errors.push(FieldError::new(name, message)))
        .ok()
}

impl Registration {
    /// What the password must not be made of: the email, its local part and the names.
    fn personal_words(&self) -> Vec<String> {
        personal_words(
            self.email.as_str(),
            [&self.first_name, &self.last_name]
                .into_iter()
                .flatten()
                .map(PersonName::as_str),
        )
    }
}

/// What a user's password must not be made of: the address, its local part and the names.
pub(super) fn personal_words<'a>(
    email: &str,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let local_part = email.split('@').next().unwrap_or_default();
    let mut words = vec![email.to_owned(), local_part.to_owned()];
    words.extend(names.into_iter().map(str::to_owned));
    words
}

impl Auth {
    /// Creates a user (`POST /register`) and records it in the audit trail.
    /// A verification email goes out in the background (see `recovery`): the answer neither
    /// waits for the relay nor fails with it (`POST /email/verify/resend` sends another).
    pub async fn register(&self, registration: Registration, client: Client) -> Result<User> {
        let user = self.create_user(registration).await?;
        self.audit.record(
            SecurityEvent::new(EventKind::UserRegistered)
                .user(user.id, &user.email)
                .client(client.ip),
        );
        self.send_verification_in_background(user.clone(), client);
        Ok(user)
    }

    /// Creates a user for an administrator (`authd user add`), with the same rules as
    /// [`Auth::register`], and records it in the audit trail.
    pub async fn add_user(&self, registration: Registration) -> Result<User> {
        let user = self.create_user(registration).await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::UserAddedByAdmin).user(user.id, &user.email),
        )
        .await?;
        Ok(user)
    }

    /// The one path to a new user, whichever door asks. The password policy, whose cost grows
    /// with the password, runs on the hashing pool like bcrypt: never on an async worker, and
    /// refused with 503 when the pool is full.
    async fn create_user(&self, registration: Registration) -> Result<User> {
        let words = registration.personal_words();
        if let Err(message) = self
            .hasher
            .check_policy(&registration.password, words)
            .await?
        {
            return Err(Error::validation("password", message));
        }
        let password_hash = self.hasher.hash(&registration.password).await?;
        let user = self
            .store
            .insert_user(NewUser {
                id: Uuid::now_v7(),
                email: registration.email.as_str().to_owned(),
                password_hash,
                first_name: registration.first_name.map(PersonName::into_string),
                last_name: registration.last_name.map(PersonName::into_string),
                two_factor_enabled: registration.two_factor_enabled,
                created_at: Utc::now(),
            })
            .await?;
        tracing::info!(user_id = %user.id, "user registered");
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_reports_every_invalid_field() {
        let err = Registration::parse(RegistrationInput {
            email: Some("nope".into()),
            password: Some("short".into()),
            first_name: Some("x".repeat(101)),
            ..Default::default()
        })
        .unwrap_err();
        let Error::Validation(errors) = err else {
            panic!("expected validation error")
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "password", "first_name"]);
    }

    #[test]
    fn registration_requires_email_and_password() {
        let Error::Validation(errors) =
            Registration::parse(RegistrationInput::default()).unwrap_err()
        else {
            panic!("expected validation error")
        };
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| e.message == "is required"));
    }
}
