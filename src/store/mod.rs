//! Database access: the only place with SQL. `Store` is what the use cases talk to.

mod postgres;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use postgres::Store;

/// A user row about to be inserted.
#[derive(Debug)]
pub struct NewUser {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub two_factor_enabled: bool,
}

/// What login needs: the public user plus the stored hash, which never leaves the core.
#[derive(Debug)]
pub struct Credentials {
    pub user: crate::domain::User,
    pub password_hash: String,
}

/// A new login challenge: the keyed hash of the emailed code and when it dies.
#[derive(Debug)]
pub struct NewChallenge {
    pub id: Uuid,
    pub user_id: Uuid,
    pub code_hash: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// The result of submitting one code to a challenge, decided atomically in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Right code: the challenge is now consumed; nobody else can use it.
    Accepted,
    /// Wrong code: one attempt used, `remaining` left.
    Rejected { remaining: u32 },
    /// Unknown, expired, consumed, retired or out of attempts.
    Dead,
}

/// Filters for listing users.
#[derive(Debug, Default, Clone)]
pub struct UserQuery {
    pub search: Option<String>,
    pub limit: Option<u32>,
}
