//! Sessions as their user sees them: opening one, refreshing its tokens, logging out, listing
//! and ending one's own, and the access token check every authenticated request makes.

use chrono::Utc;
use uuid::Uuid;

use super::{Auth, Client, SignIn};
use crate::audit::{EventKind, SecurityEvent};
use crate::domain::User;
use crate::error::{Error, Result};
use crate::store::{NewSession, SessionInfo, SessionUser};
use crate::token::refresh::{Presented, new_family};
use crate::token::{IssuedToken, Subject};

/// What a login or a refresh hands out: an access token of the session and its refresh token.
#[derive(Debug)]
pub struct SessionTokens {
    pub access: IssuedToken,
    pub refresh_token: String,
    /// Seconds until the refresh token dies unless used (never past the session's end).
    pub refresh_expires_in: u64,
}

/// What a new session rests on.
#[derive(Debug, Clone, Copy)]
pub(super) enum SessionProof<'a> {
    /// A password-only login: the hash the password was checked against, which must still be
    /// the user's (a reset in between refuses the session).
    Password(&'a str),
    /// The second step of a challenge (which a password change retires).
    SecondStep,
    /// A passkey, alone or as the second step: it must still be the user's.
    Passkey(Uuid),
}

/// Which sessions `POST /logout` ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogoutScope {
    /// The session of the access token.
    #[default]
    Current,
    /// Every other session of the user.
    Others,
    /// Every session of the user.
    All,
}

impl LogoutScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutScope::Current => "current",
            LogoutScope::Others => "others",
            LogoutScope::All => "all",
        }
    }
}

/// A session as its own user sees it in `GET /sessions`.
#[derive(Debug, Clone)]
pub struct OwnSession {
    pub session: SessionInfo,
    /// The session of the access token that asked.
    pub current: bool,
}

fn invalid_refresh() -> Error {
    Error::InvalidToken(
        "this refresh token is unknown, expired, revoked or already used: log in again",
    )
}

fn dead_session() -> Error {
    Error::InvalidToken(
        "this access token's session has ended, or its signing key was revoked: log in again",
    )
}

impl Auth {
    /// The user an access token belongs to.
    /// The user of a valid access token whose session is live, in one query of the user and
    /// the session: a revoked or expired session, or a disabled or deleted user, is refused at
    /// the token's next use on every instance.
    pub async fn current_user(&self, access_token: &str) -> Result<User> {
        Ok(self.session_user(access_token).await?.0.user)
    }

    /// [`Auth::current_user`] with the recovery codes they have left (`GET /users/me`).
    pub async fn me(&self, access_token: &str) -> Result<SessionUser> {
        Ok(self.session_user(access_token).await?.0)
    }

    pub(super) async fn authenticate(&self, access_token: &str) -> Result<(User, Uuid)> {
        let (found, session) = self.session_user(access_token).await?;
        Ok((found.user, session))
    }

    async fn session_user(&self, access_token: &str) -> Result<(SessionUser, Uuid)> {
        let Subject { user, session, kid } = self.access_subject(access_token).await?;
        // Tokens issued before sessions existed carry no `sid`: they belong to no session.
        let session = session.ok_or_else(dead_session)?;
        // The same query sees a revoked signing key: refused here at once, whichever instance
        // revoked it.
        let user = self
            .store
            .find_session_user(user, session, kid.as_deref(), Utc::now())
            .await?
            .ok_or_else(dead_session)?;
        Ok((user, session))
    }

    /// Opens a session for a user who just proved who they are, and hands out its tokens.
    /// `refused` is the answer when the user may no longer have one (disabled, deleted, or
    /// switched to two steps while a password-only login was on its way).
    pub(super) async fn open_session(
        &self,
        sign_in: &SignIn,
        user_id: Uuid,
        client: &Client,
        proof: SessionProof<'_>,
        refused: fn() -> Error,
    ) -> Result<SessionTokens> {
        self.check_signer().await?;
        let now = Utc::now();
        let id = Uuid::now_v7();
        let family = new_family();
        let (refresh_token, refresh_hash) = sign_in.refresh.token(&family, 0);
        let expires_at = now + seconds(self.sessions.refresh_ttl_secs);
        let absolute_expires_at = now + seconds(self.sessions.absolute_ttl_secs);
        let ended = self
            .store
            .insert_session(
                &NewSession {
                    id,
                    user_id,
                    family: family.to_vec(),
                    refresh_hash: refresh_hash.to_vec(),
                    created_at: now,
                    expires_at,
                    absolute_expires_at,
                    client_ip: client.ip.map(|ip| ip.to_string()),
                    user_agent: client.user_agent.clone(),
                    // A passkey is two factors in one (the device and its PIN or biometric).
                    after_second_step: !matches!(proof, SessionProof::Password(_)),
                    password_hash: match proof {
                        SessionProof::Password(hash) => Some(hash.to_owned()),
                        SessionProof::SecondStep | SessionProof::Passkey(_) => None,
                    },
                    passkey_id: match proof {
                        SessionProof::Passkey(id) => Some(id),
                        SessionProof::Password(_) | SessionProof::SecondStep => None,
                    },
                },
                self.sessions.max_per_user,
            )
            .await?
            .ok_or_else(refused)?;
        if ended > 0 {
            tracing::info!(%user_id, ended, "oldest sessions ended: session.max_per_user reached");
        }
        Ok(SessionTokens {
            access: sign_in.tokens.issue_access(user_id, id)?,
            refresh_token,
            refresh_expires_in: seconds_between(now, expires_at.min(absolute_expires_at)),
        })
    }

    /// Exchanges a refresh token for a new access token and the chain's next refresh token
    /// (`POST /token/refresh`). Of parallel refreshes of one token exactly one rotates; the
    /// others, and a client that lost the answer, get the session's current tokens while their
    /// token's rotation is younger than `session.reuse_grace_secs` (the last two rotations are
    /// remembered). An older token of the chain is reuse: the session is revoked, every token
    /// descended from it with it. A token this server did not issue changes nothing.
    pub async fn refresh(&self, refresh_token: &str, client: Client) -> Result<SessionTokens> {
        let sign_in = self.sign_in()?;
        // First, so that an instance that cannot sign (or whose KEK, which keys the refresh
        // tokens, was not confirmed yet) neither rotates a session nor calls a token unknown.
        self.ensure_can_sign().await?;
        let presented = Presented::parse(refresh_token).ok_or_else(invalid_refresh)?;
        let presented_hash = sign_in
            .refresh
            .check(&presented)
            .ok_or_else(invalid_refresh)?;
        let mut reread_keys = false;
        // A lost race means another refresh rotated first; the next look sees its result, so
        // two looks decide every case but a third rotation in between (and one more after the
        // keys were read again).
        for _ in 0..4 {
            let signer = self.signer_kid()?;
            let chain = self
                .store
                .find_session_chain(&presented.family, signer.as_deref())
                .await?
                .ok_or_else(invalid_refresh)?;
            if let Some(kid) = signer.as_deref().filter(|_| !chain.signer_current) {
                // Revoked or retired a moment ago: never sign with it. Once per refresh.
                if reread_keys {
                    return Err(Error::Unavailable("signing key"));
                }
                self.signer_changed(kid, None).await?;
                self.ensure_can_sign().await?;
                reread_keys = true;
                continue;
            }
            let now = Utc::now();
            if chain.revoked_at.is_some() || chain.expires_at <= now || chain.user_disabled {
                return Err(invalid_refresh());
            }
            let behind = chain.generation - presented.generation;
            if behind == 0 {
                let (next, next_hash) = sign_in
                    .refresh
                    .token(&presented.family, chain.generation + 1);
                let expires_at = now + seconds(self.sessions.refresh_ttl_secs);
                let rotated = self
                    .store
                    .rotate_session(
                        chain.id,
                        chain.generation,
                        &presented_hash,
                        &next_hash,
                        now,
                        expires_at,
                    )
                    .await?;
                if !rotated {
                    continue;
                }
                self.metrics.refresh("rotated");
                return Ok(SessionTokens {
                    access: sign_in.tokens.issue_access(chain.user_id, chain.id)?,
                    refresh_token: next,
                    refresh_expires_in: seconds_between(
                        now,
                        expires_at.min(chain.absolute_expires_at),
                    ),
                });
            }
            // A token from the chain's future is none this server issued for it.
            if behind < 0 {
                return Err(invalid_refresh());
            }
            let rotated_at = match behind {
                1 => chain.rotated_at,
                2 => chain.earlier_rotated_at,
                _ => None,
            };
            let grace = seconds(self.sessions.reuse_grace_secs);
            if rotated_at.is_some_and(|at| now < at + grace) {
                let (current, current_hash) =
                    sign_in.refresh.token(&presented.family, chain.generation);
                // Only a changed server secret makes these differ; then nothing can be replayed.
                if current_hash.as_slice() != chain.refresh_hash.as_slice() {
                    return Err(invalid_refresh());
                }
                self.metrics.refresh("replayed");
                return Ok(SessionTokens {
                    access: sign_in.tokens.issue_access(chain.user_id, chain.id)?,
                    refresh_token: current,
                    refresh_expires_in: seconds_between(now, chain.expires_at),
                });
            }
            // An older token of this chain, genuinely issued: someone kept a copy. End it all.
            let revoked = self.store.revoke_session(chain.id, None, now).await?;
            self.metrics.refresh("reused");
            tracing::warn!(user_id = %chain.user_id, session = %chain.id, "refresh token reused: session revoked");
            if revoked.is_some() {
                self.audit.record(
                    SecurityEvent::new(EventKind::RefreshTokenReused)
                        .user(chain.user_id, &chain.email)
                        .client(client.ip)
                        .detail(format!(
                            "session {} revoked (token {behind} rotations old)",
                            chain.id
                        )),
                );
            }
            return Err(invalid_refresh());
        }
        Err(Error::Unavailable("session store"))
    }

    /// Ends the session of an access token, the user's other sessions, or all of them
    /// (`POST /logout`).
    pub async fn logout(
        &self,
        access_token: &str,
        scope: LogoutScope,
        client: Client,
    ) -> Result<()> {
        let (user, session) = self.authenticate(access_token).await?;
        let now = Utc::now();
        let ended = match scope {
            LogoutScope::Current => u64::from(
                self.store
                    .revoke_session(session, Some(user.id), now)
                    .await?
                    .is_some(),
            ),
            LogoutScope::Others => {
                self.store
                    .revoke_user_sessions(user.id, Some(session), now)
                    .await?
            }
            LogoutScope::All => self.store.revoke_user_sessions(user.id, None, now).await?,
        };
        self.audit.record(
            SecurityEvent::new(EventKind::Logout)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("{} ({ended} sessions)", scope.as_str())),
        );
        Ok(())
    }

    /// The live sessions of the access token's user, newest first (`GET /sessions`).
    pub async fn own_sessions(&self, access_token: &str) -> Result<Vec<OwnSession>> {
        let (user, current) = self.authenticate(access_token).await?;
        let sessions = self
            .store
            .list_sessions(Some(user.id), Utc::now(), self.sessions.max_per_user)
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| OwnSession {
                current: session.id == current,
                session,
            })
            .collect())
    }

    /// Ends one of the access token's user's own sessions (`DELETE /sessions/{id}`); anyone
    /// else's, or one already ended, is not found.
    pub async fn revoke_own_session(
        &self,
        access_token: &str,
        id: Option<Uuid>,
        client: Client,
    ) -> Result<()> {
        let (user, _) = self.authenticate(access_token).await?;
        // An id that is not a session id names none of the caller's sessions either.
        let id = id.ok_or(Error::SessionNotFound)?;
        self.store
            .revoke_session(id, Some(user.id), Utc::now())
            .await?
            .ok_or(Error::SessionNotFound)?;
        self.audit.record(
            SecurityEvent::new(EventKind::SessionRevoked)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("by user: session {id}")),
        );
        Ok(())
    }
}

pub(super) fn seconds(secs: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// Seconds from `from` to `to`, rounded up (none when `to` has passed).
fn seconds_between(from: chrono::DateTime<Utc>, to: chrono::DateTime<Utc>) -> u64 {
    u64::try_from((to - from).num_milliseconds())
        .unwrap_or(0)
        .div_ceil(1000)
}
