//! The administrative use cases on users and sessions (`authd user ...`, `authd session ...`,
//! `authd audit`), each recorded in the audit trail before it answers.

use chrono::Utc;
use uuid::Uuid;

use super::{Actor, Auth, login_key, mail_key, otp_key};
use crate::audit::{EventKind, EventQuery, RecordedEvent, SecurityEvent};
use crate::domain::{Email, User};
use crate::error::{Error, Result};
use crate::store::{SessionInfo, UserListing, UserQuery};

impl Auth {
    /// Records an administrative change before the use case answers, unlike the events of the
    /// request path, which are queued: the administrator learns it if the trail misses one.
    pub(super) async fn record_admin_change(&self, event: SecurityEvent) -> Result<()> {
        self.store.insert_events(&[event]).await
    }

    /// Users, oldest first, filtered as `query` says, with their state and live sessions.
    pub async fn list_users(&self, query: &UserQuery) -> Result<Vec<UserListing>> {
        self.store.list_users(query, Utc::now()).await
    }

    /// Switches the second step on or off; takes effect at the user's next login, and ends
    /// every session the user has (they were opened under the other rule).
    pub async fn set_two_factor(&self, email: &Email, enabled: bool) -> Result<User> {
        let user = self
            .store
            .set_two_factor(email, enabled)
            .await?
            .ok_or(Error::UserNotFound)?;
        let ended = self
            .store
            .revoke_user_sessions(user.id, None, Utc::now())
            .await?;
        tracing::info!(user_id = %user.id, enabled, ended, "two-factor setting changed");
        let state = if enabled { "on" } else { "off" };
        self.record_admin_change(
            SecurityEvent::new(EventKind::TwoFactorChanged)
                .user(user.id, &user.email)
                .detail(format!(
                    "{state} {} ({ended} sessions ended)",
                    Actor::Cli.as_str()
                )),
        )
        .await?;
        Ok(user)
    }

    /// Disables a user (`authd user disable`): every session ends at once, and a login fails
    /// as a wrong password would.
    pub async fn disable_user(&self, email: &Email, actor: Actor) -> Result<User> {
        let changed = self.store.set_disabled(email, true, Utc::now()).await;
        self.admin_change(changed, EventKind::UserDisabled, actor)
            .await
    }

    /// Lets a disabled user log in again; their ended sessions stay ended.
    pub async fn enable_user(&self, email: &Email, actor: Actor) -> Result<User> {
        let changed = self.store.set_disabled(email, false, Utc::now()).await;
        self.admin_change(changed, EventKind::UserEnabled, actor)
            .await
    }

    /// Deletes a user with their sessions and challenges; the audit trail keeps their events.
    pub async fn delete_user(&self, email: &Email, actor: Actor) -> Result<User> {
        // Its counters go with the account, so an address registered again starts clean.
        let user = self.find_user(email).await?;
        let counters = [login_key(email), otp_key(user.id), mail_key(user.id)];
        let changed = self.store.delete_user(email, &counters).await;
        self.admin_change(changed, EventKind::UserDeleted, actor)
            .await
    }

    /// The account an administrative change reached (none: no such user), recorded as `kind`.
    async fn admin_change(
        &self,
        changed: Result<Option<User>>,
        kind: EventKind,
        actor: Actor,
    ) -> Result<User> {
        let user = changed?.ok_or(Error::UserNotFound)?;
        tracing::info!(user_id = %user.id, change = kind.as_str(), "account changed");
        self.record_admin_change(
            SecurityEvent::new(kind)
                .user(user.id, &user.email)
                .detail(actor.as_str()),
        )
        .await?;
        Ok(user)
    }

    /// The user an email address names (for the admin commands).
    pub async fn find_user(&self, email: &Email) -> Result<User> {
        self.store
            .find_user_by_email(email)
            .await?
            .ok_or(Error::UserNotFound)
    }

    /// Live sessions, of one user or of everyone, newest first, at most `limit`.
    pub async fn list_sessions(&self, user: Option<&User>, limit: u32) -> Result<Vec<SessionInfo>> {
        self.store
            .list_sessions(user.map(|u| u.id), Utc::now(), limit)
            .await
    }

    /// Ends one live session (`authd session revoke ID`).
    pub async fn revoke_session(&self, id: Uuid, actor: Actor) -> Result<()> {
        let user_id = self
            .store
            .revoke_session(id, None, Utc::now())
            .await?
            .ok_or(Error::SessionNotFound)?;
        let mut event = SecurityEvent::new(EventKind::SessionRevoked)
            .detail(format!("{}: session {id}", actor.as_str()));
        match self.store.find_user(user_id).await? {
            Some(user) => event = event.user(user.id, &user.email),
            None => event.user_id = Some(user_id),
        }
        self.record_admin_change(event).await
    }

    /// Ends every live session of a user (`authd session revoke --user EMAIL`); how many.
    pub async fn revoke_user_sessions(&self, email: &Email, actor: Actor) -> Result<u64> {
        let user = self.find_user(email).await?;
        let ended = self
            .store
            .revoke_user_sessions(user.id, None, Utc::now())
            .await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::SessionRevoked)
                .user(user.id, &user.email)
                .detail(format!("{} ({ended} sessions)", actor.as_str())),
        )
        .await?;
        Ok(ended)
    }

    /// Clears the password and code locks of an account and records who did it. True when
    /// there was anything to clear.
    pub async fn unlock_user(&self, email: &Email, actor: Actor) -> Result<bool> {
        let user = self
            .store
            .find_credentials(email)
            .await?
            .ok_or(Error::UserNotFound)?
            .user;
        let login = self.store.clear_failures(&login_key(email)).await?;
        let otp = self.store.clear_failures(&otp_key(user.id)).await?;
        self.record_admin_change(
            SecurityEvent::new(EventKind::UserUnlocked)
                .user(user.id, &user.email)
                .detail(actor.as_str()),
        )
        .await?;
        tracing::info!(user_id = %user.id, "account unlocked");
        Ok(login || otp)
    }

    /// The audit trail, newest first.
    pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>> {
        self.store.list_events(query).await
    }
}
