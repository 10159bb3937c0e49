//! Security events: what the audit trail records (its kinds, their stored names and outcomes),
//! and how it is queried. The store writes and reads them; `audit` queues them off the request
//! path.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// Declares [`EventKind`] with its stored name, and [`EventKind::ALL`] from the same list, so
/// a kind cannot be added without being in `ALL` (which the tests check against README).
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What happened.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            /// The name stored in the `kind` column.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    UserRegistered => "user_registered",
    UserAddedByAdmin => "user_added_by_admin",
    LoginSucceeded => "login_succeeded",
    LoginFailed => "login_failed",
    LoginThrottled => "login_throttled",
    CodeSent => "code_sent",
    CodeSendFailed => "code_send_failed",
    CodeAccepted => "code_accepted",
    CodeRejected => "code_rejected",
    CodeThrottled => "code_throttled",
    /// The consecutive wrong code that locked the second step until an admin unlocks it.
    SecondFactorLocked => "second_factor_locked",
    /// A login that would have emailed a code past the account's code-email quota.
    CodeEmailLimited => "code_email_limited",
    TwoFactorChanged => "two_factor_changed",
    UserUnlocked => "user_unlocked",
    /// `POST /logout`; the detail says the scope and how many sessions ended.
    Logout => "logout",
    /// One session ended by its user (`DELETE /sessions/{id}`) or by `authd session revoke`.
    SessionRevoked => "session_revoked",
    /// A refresh token presented after it was rotated (past the grace period): the session
    /// was revoked.
    RefreshTokenReused => "refresh_token_reused",
    UserDisabled => "user_disabled",
    UserEnabled => "user_enabled",
    UserDeleted => "user_deleted",
    /// A verification code and link were emailed (after registration, or on request).
    EmailVerificationSent => "email_verification_sent",
    /// An account's address was proven by its code or link (or by an administrator).
    EmailVerified => "email_verified",
    /// A password-reset code and link were emailed (`POST /password/forgot`, or
    /// `authd user reset-password --send-link`).
    PasswordResetRequested => "password_reset_requested",
    /// A password was set by a reset code or link: every session ended.
    PasswordReset => "password_reset",
    /// A password was changed by its user (`POST /password/change`) or set by an administrator
    /// (`authd user reset-password`).
    PasswordChanged => "password_changed",
    /// A wrong current password given to `POST /password/change` (counted like a failed login).
    PasswordChangeFailed => "password_change_failed",
    /// A change of address was asked for; the detail says the new address, and whether it
    /// belongs to another account (then nothing was sent to it but a notice).
    EmailChangeRequested => "email_change_requested",
    /// The account moved to a new, proven address; the detail says the old one.
    EmailChanged => "email_changed",
    /// A wrong emailed code (verification, reset, email change).
    AccountCodeRejected => "account_code_rejected",
    /// An account email (verification, reset, email change, notice) not sent: the address's
    /// limits were used up.
    AccountMailLimited => "account_mail_limited",
    /// The right password of an account whose address is not proven, with
    /// `registration.require_verified_email` on: 403, no session, no code.
    LoginUnverified => "login_unverified",
    /// The right password of an account with an authenticator app: its code is asked for
    /// (nothing is sent; the counterpart of `code_sent`).
    AppCodeAsked => "app_code_asked",
    /// An authenticator app became the account's second factor (confirmed by its first code,
    /// or `authd user totp-enroll`).
    TotpEnabled => "totp_enabled",
    /// The account's authenticator app was turned off by its user (with a code or the password).
    TotpDisabled => "totp_disabled",
    /// A recovery code finished a login (each works once).
    RecoveryCodeUsed => "recovery_code_used",
    /// A new set of recovery codes replaced the old one.
    RecoveryCodesRegenerated => "recovery_codes_regenerated",
    /// `authd user mfa --reset`: the app and the recovery codes removed, sessions ended.
    MfaReset => "mfa_reset",
    /// A passkey registered (its name in the detail).
    PasskeyRegistered => "passkey_registered",
    /// A passkey removed, by its user or `authd user passkeys --remove` (sessions ended).
    PasskeyRemoved => "passkey_removed",
    /// A sign-in with a passkey, alone or as the second step of a login.
    PasskeyLogin => "passkey_login",
    /// A passkey's answer refused (the detail says why: a bad signature, origin or RP id, an
    /// unknown credential, a counter that went backwards, a lock).
    PasskeyRejected => "passkey_rejected",
    /// `authd user import`: one event for the whole import, with its counts and its source.
    UsersImported => "users_imported",
    /// `authd user export`: how many users, where to, and whether with password hashes.
    UsersExported => "users_exported",
    /// A signing key made: `next` by `authd keys rotate`, or `current` by a first start.
    KeyCreated => "key_created",
    /// `authd keys rotate --activate`: a next key became current, the old current retired.
    KeyActivated => "key_activated",
    /// `authd keys revoke`: a key is never accepted again (and, if it was current, which key
    /// signs now).
    KeyRevoked => "key_revoked",
}

impl EventKind {
    /// The outcome column: success, failure or throttled.
    pub fn outcome(self) -> &'static str {
        match self {
            EventKind::LoginFailed
            | EventKind::CodeSendFailed
            | EventKind::CodeRejected
            | EventKind::RefreshTokenReused
            | EventKind::PasswordChangeFailed
            | EventKind::AccountCodeRejected
            | EventKind::LoginUnverified
            | EventKind::PasskeyRejected => "failure",
            EventKind::LoginThrottled
            | EventKind::CodeThrottled
            | EventKind::SecondFactorLocked
            | EventKind::CodeEmailLimited
            | EventKind::AccountMailLimited => "throttled",
            _ => "success",
        }
    }
}

/// One event about to be recorded.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub user_id: Option<Uuid>,
    pub email: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub detail: Option<String>,
}

impl SecurityEvent {
    pub fn new(kind: EventKind) -> SecurityEvent {
        SecurityEvent {
            at: Utc::now(),
            kind,
            user_id: None,
            email: None,
            client_ip: None,
            detail: None,
        }
    }

    pub fn user(mut self, id: Uuid, email: &str) -> Self {
        self.user_id = Some(id);
        self.email = Some(email.to_owned());
        self
    }

    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }

    pub fn client(mut self, ip: Option<IpAddr>) -> Self {
        self.client_ip = ip;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// An event as stored, for `authd audit`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub email: Option<String>,
    pub client_ip: Option<String>,
    pub detail: Option<String>,
}

/// Filters for reading the trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub email: Option<String>,
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README's "Audit trail" section, up to the next heading.
    fn documented_section() -> &'static str {
        let readme = include_str!("../README.md");
        let start = readme
            .find("### Audit trail")
            .expect("README has an Audit trail section");
        let rest = &readme[start + 3..];
        &rest[..rest.find("\n#").unwrap_or(rest.len())]
    }

    #[test]
    fn every_event_kind_is_documented_in_the_readme_under_its_stored_name() {
        let section = documented_section();
        for kind in EventKind::ALL {
            assert!(
                section.contains(&format!("`{}`", kind.as_str())),
                "README's Audit trail does not list {}",
                kind.as_str()
            );
            // The name serde gives (for JSON) is the stored one.
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            EventKind::ALL.len(),
            "a stored name is used twice"
        );
    }

    #[test]
    fn each_kind_has_the_outcome_the_readme_gives_it() {
        use EventKind::*;
        let expected: [(EventKind, &str); 46] = [
            (UserRegistered, "success"),
            (UserAddedByAdmin, "success"),
            (LoginSucceeded, "success"),
            (LoginFailed, "failure"),
            (LoginThrottled, "throttled"),
            (CodeSent, "success"),
            (CodeSendFailed, "failure"),
            (CodeAccepted, "success"),
            (CodeRejected, "failure"),
            (CodeThrottled, "throttled"),
            (SecondFactorLocked, "throttled"),
            (CodeEmailLimited, "throttled"),
            (TwoFactorChanged, "success"),
            (UserUnlocked, "success"),
            (Logout, "success"),
            (SessionRevoked, "success"),
            (RefreshTokenReused, "failure"),
            (UserDisabled, "success"),
            (UserEnabled, "success"),
            (UserDeleted, "success"),
            (EmailVerificationSent, "success"),
            (EmailVerified, "success"),
            (PasswordResetRequested, "success"),
            (PasswordReset, "success"),
            (PasswordChanged, "success"),
            (PasswordChangeFailed, "failure"),
            (EmailChangeRequested, "success"),
            (EmailChanged, "success"),
            (AccountCodeRejected, "failure"),
            (AccountMailLimited, "throttled"),
            (LoginUnverified, "failure"),
            (AppCodeAsked, "success"),
            (TotpEnabled, "success"),
            (TotpDisabled, "success"),
            (RecoveryCodeUsed, "success"),
            (RecoveryCodesRegenerated, "success"),
            (MfaReset, "success"),
            (PasskeyRegistered, "success"),
            (PasskeyRemoved, "success"),
            (PasskeyLogin, "success"),
            (PasskeyRejected, "failure"),
            (UsersImported, "success"),
            (UsersExported, "success"),
            (KeyCreated, "success"),
            (KeyActivated, "success"),
            (KeyRevoked, "success"),
        ];
        let listed: Vec<EventKind> = expected.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(listed, EventKind::ALL, "every kind, once, in order");
        for (kind, outcome) in expected {
            assert_eq!(kind.outcome(), outcome, "{}", kind.as_str());
        }
    }
}
