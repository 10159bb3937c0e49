//! The SMTP sink lives in `testkit` (the bench uses it too); the tests read codes strictly.

pub use testkit::smtp::{Behaviour, MailSink, Received};

/// The six-digit code in a message's body; fails the test unless there is exactly one.
pub fn extract_code(message: &Received) -> String {
    message
        .code()
        .unwrap_or_else(|| panic!("expected exactly one 6-digit code in {:?}", message.data))
}
