//! Passkeys: the registered credentials, each user's WebAuthn user handle, and the ceremonies
//! under way (each taken by exactly one request).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::common::{Count, Time, lock_user, statements};
use crate::error::Result;

/// What a ceremony is for: its state is only ever taken back for the same purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyPurpose {
    /// Registering a passkey for one user.
    Register,
    /// A sign-in with a discoverable passkey (no user known yet).
    Login,
    /// The second step of one login challenge.
    SecondStep,
}

impl CeremonyPurpose {
    fn as_str(self) -> &'static str {
        match self {
            CeremonyPurpose::Register => "register",
            CeremonyPurpose::Login => "login",
            CeremonyPurpose::SecondStep => "second_step",
        }
    }
}

/// A ceremony about to be kept until the browser answers.
#[derive(Debug)]
pub struct NewCeremony {
    pub id: Uuid,
    pub purpose: CeremonyPurpose,
    pub user_id: Option<Uuid>,
    /// For the second step: the login challenge it finishes.
    pub challenge_id: Option<Uuid>,
    pub state: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// A ceremony taken back: gone from the database, so nobody else can finish it.
#[derive(Debug, sqlx::FromRow)]
pub struct Ceremony {
    pub user_id: Option<Uuid>,
    pub challenge_id: Option<Uuid>,
    pub state: Vec<u8>,
    expires_at: Time,
}

/// A registered passkey.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: Vec<u8>,
    /// The relying party's record of the credential (webauthn-rs `Passkey`, as JSON).
    pub credential: String,
    pub name: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backed_up: bool,
    created_at: Time,
    last_used_at: Option<Time>,
}

impl PasskeyRecord {
    pub fn created_at(&self) -> DateTime<Utc> {
        self.created_at.0
    }

    pub fn last_used_at(&self) -> Option<DateTime<Utc>> {
        self.last_used_at.map(|t| t.0)
    }
}

/// A passkey found by its credential id, with what a discoverable sign-in checks of its user.
#[derive(Debug, sqlx::FromRow)]
pub struct FoundPasskey {
    #[sqlx(flatten)]
    pub passkey: PasskeyRecord,
    /// The user handle the authenticator must have answered with.
    pub webauthn_handle: Option<Uuid>,
    /// Its user is disabled: the answer is refused (and recorded against the user).
    pub disabled: bool,
}

/// A passkey about to be registered.
#[derive(Debug)]
pub struct NewPasskey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: Vec<u8>,
    pub credential: String,
    pub name: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub created_at: DateTime<Utc>,
}

/// What registering a passkey came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyInsert {
    Inserted,
    /// The user already has the most passkeys one may have.
    Full,
    /// This credential is registered already (to this user or another).
    Duplicate,
    /// The user is gone or disabled.
    NoUser,
}

/// A verified assertion's effect on its passkey: the new counter and flags. Applied only if
/// the counter moved forward (or the authenticator keeps none: 0 and 0), in one statement, so
/// of two assertions with one counter value only one is taken.
#[derive(Debug, Clone, Copy)]
pub struct PasskeyUse<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential: &'a str,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backed_up: bool,
    pub at: DateTime<Utc>,
}

/// Applies a [`PasskeyUse`] ($1 id, $2 user, $3 record, $4 counter, $5 eligible, $6 backed
/// up, $7 time). A counter of 0 means the authenticator keeps none (many synced passkeys): it
/// is taken only while the stored one is 0 too.
pub(super) const USE_PASSKEY: &str = "UPDATE passkeys
     SET credential = $3, sign_count = $4, backup_eligible = $5, backed_up = $6,
         last_used_at = $7
     WHERE id = $1 AND user_id = $2 AND (sign_count < $4 OR (sign_count = 0 AND $4 = 0))";

/// Binds a [`PasskeyUse`] to [`USE_PASSKEY`].
macro_rules! use_passkey {
    ($used:expr) => {
        sqlx::query(USE_PASSKEY)
            .bind($used.id)
            .bind($used.user_id)
            .bind($used.credential)
            .bind($used.sign_count)
            .bind($used.backup_eligible)
            .bind($used.backed_up)
            .bind(Time($used.at))
    };
}

pub(super) use use_passkey;

/// The columns [`PasskeyRecord`] reads, of `passkeys p`, for `concat!` into a statement.
macro_rules! passkey_columns {
    () => {
        "p.id, p.user_id, p.credential_id, p.credential, p.name, p.sign_count, \
         p.backup_eligible, p.backed_up, p.created_at, p.last_used_at"
    };
}

statements! {
    pub async fn insert_ceremony(&self, ceremony: &NewCeremony) -> Result<()> {
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, purpose, user_id, challenge_id, state, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ceremony.id)
        .bind(ceremony.purpose.as_str())
        .bind(ceremony.user_id)
        .bind(ceremony.challenge_id)
        .bind(&ceremony.state)
        .bind(Time(ceremony.expires_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes ceremony `id` of `purpose` out of the database: of concurrent takes one gets it.
    /// An expired one is taken too (and not returned).
    pub async fn take_ceremony(
        &self,
        id: Uuid,
        purpose: CeremonyPurpose,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>> {
        let taken: Option<Ceremony> = sqlx::query_as(
            "DELETE FROM webauthn_ceremonies WHERE id = $1 AND purpose = $2
             RETURNING user_id, challenge_id, state, expires_at",
        )
        .bind(id)
        .bind(purpose.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(taken.filter(|ceremony| ceremony.expires_at.0 > now))
    }

    /// The user's WebAuthn user handle, made (random) at the first ask; `None` for no such user.
    pub async fn webauthn_handle(&self, user_id: Uuid) -> Result<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "UPDATE users SET webauthn_handle = COALESCE(webauthn_handle, $2)
             WHERE id = $1 RETURNING webauthn_handle",
        )
        .bind(user_id)
        .bind(Uuid::new_v4())
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The user's passkeys, newest first.
    pub async fn user_passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyRecord>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            passkey_columns!(),
            " FROM passkeys p WHERE p.user_id = $1 ORDER BY p.created_at DESC, p.id DESC"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn count_passkeys(&self, user_id: Uuid) -> Result<i64> {
        let count: Count = sqlx::query_scalar(
            "SELECT CAST(count(*) AS BIGINT) FROM passkeys WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    /// The passkey of `credential_id`, its user's handle and whether the user is disabled.
    pub async fn passkey_by_credential(&self, credential_id: &[u8]) -> Result<Option<FoundPasskey>> {
        Ok(sqlx::query_as(concat!(
            "SELECT ",
            passkey_columns!(),
            ", u.webauthn_handle, u.disabled_at IS NOT NULL AS disabled
             FROM passkeys p JOIN users u ON u.id = p.user_id WHERE p.credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Registers a passkey, under the user's lock: at most `max_per_user`, each credential once.
    pub async fn insert_passkey(&self, passkey: &NewPasskey, max_per_user: u32) -> Result<PasskeyInsert> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, passkey.user_id);
        let (live, count): (bool, Count) = match sqlx::query_as::<_, (bool, Count)>(
            "SELECT u.disabled_at IS NULL,
                    (SELECT CAST(count(*) AS BIGINT) FROM passkeys p WHERE p.user_id = u.id)
             FROM users u WHERE u.id = $1",
        )
        .bind(passkey.user_id)
        .fetch_optional(&mut *tx)
        .await?
        {
            Some(row) => row,
            None => return Ok(PasskeyInsert::NoUser),
        };
        if !live {
            return Ok(PasskeyInsert::NoUser);
        }
        if count >= i64::from(max_per_user) {
            return Ok(PasskeyInsert::Full);
        }
        let inserted = sqlx::query(
            "INSERT INTO passkeys (id, user_id, credential_id, credential, name, sign_count,
                                   backup_eligible, backed_up, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(passkey.id)
        .bind(passkey.user_id)
        .bind(&passkey.credential_id)
        .bind(&passkey.credential)
        .bind(&passkey.name)
        .bind(passkey.sign_count)
        .bind(passkey.backup_eligible)
        .bind(passkey.backed_up)
        .bind(Time(passkey.created_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(if inserted > 0 { PasskeyInsert::Inserted } else { PasskeyInsert::Duplicate })
    }

    /// Records a sign-in's assertion (see [`PasskeyUse`]); false when the counter did not move
    /// forward (a cloned authenticator, or the same assertion twice) or the passkey is gone.
    pub async fn use_passkey(&self, used: &PasskeyUse<'_>) -> Result<bool> {
        Ok(use_passkey!(used).execute(&self.pool).await?.rows_affected() > 0)
    }

    /// Removes the user's passkey `id` and ends the sessions that signed in with it: its name
    /// and the number of sessions ended, or `None` when the user has no such passkey.
    pub async fn remove_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, u64)>> {
        let mut tx = self.pool.begin().await?;
        lock_user!(tx, user_id);
        let removed: Option<String> =
            sqlx::query_scalar("DELETE FROM passkeys WHERE id = $1 AND user_id = $2 RETURNING name")
                .bind(id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(name) = removed else {
            return Ok(None);
        };
        let ended = sqlx::query(
            "UPDATE sessions SET revoked_at = $3
             WHERE user_id = $1 AND passkey_id = $2 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(id)
        .bind(Time(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(Some((name, ended)))
    }
}
