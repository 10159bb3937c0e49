//! Passkeys (WebAuthn): registering one, signing in with one (alone, discoverable, or as the
//! second step of a login), listing and removing them.
//!
//! `webauthn-rs` does every CBOR, COSE, origin, RP id and signature check; this file chooses the
//! policy (a resident key and user verification required), keeps each ceremony's state in the
//! database bound to its purpose and taken by exactly one request, and keeps the signature
//! counter: an assertion is only taken if its counter moved forward, in one statement.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticationResult, Credential, CredentialID, DiscoverableAuthentication, Passkey,
    PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    Webauthn, WebauthnBuilder, WebauthnError,
};

use super::sessions::{SessionProof, SessionTokens};
use super::{Actor, Auth, Client, otp_key};
use crate::audit::{EventKind, SecurityEvent};
use crate::config::RelyingPartySettings;
use crate::domain::{Email, PersonName, User};
use crate::error::{Error, Result};
use crate::mail::Mail;
use crate::store::{
    Attempt, CeremonyPurpose, ChallengeAnswer, NewCeremony, NewPasskey, PasskeyInsert,
    PasskeyRecord, PasskeyUse,
};

/// How long a ceremony's options wait for the browser's answer (WebAuthn's own default).
pub const CEREMONY_TTL_SECS: i64 = 300;

/// The most passkeys one account may have.
pub const MAX_PASSKEYS_PER_USER: u32 = 25;

/// The longest credential id WebAuthn allows (Level 3, 5.1.3 step 14 of registration).
const MAX_CREDENTIAL_ID_BYTES: usize = 1023;

/// What a passkey is called when its registration names none.
const DEFAULT_NAME: &str = "Passkey";

/// The relying party: authd as the site passkeys are bound to.
pub struct RelyingParty {
    webauthn: Webauthn,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelyingParty(..)")
    }
}

/// A ceremony's options for the browser, and the state to keep until the browser answers.
pub struct Started {
    /// `{"publicKey": {...}}`, for `PublicKeyCredential.parse*OptionsFromJSON`.
    pub options: Value,
    /// The challenge and policy of this ceremony, kept server-side until the browser answers.
    pub state: Vec<u8>,
}

/// Options handed to a client: the ceremony to name when answering, and the `publicKey`
/// object for `navigator.credentials`.
#[derive(Debug)]
pub struct CeremonyOptions {
    pub ceremony: Uuid,
    pub public_key: Value,
}

/// A passkey as its user (or an administrator) sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PasskeySummary {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The authenticator may sync it to the user's other devices (a synced passkey).
    pub backup_eligible: bool,
    /// It is synced (backed up) now.
    pub backed_up: bool,
}

impl From<PasskeyRecord> for PasskeySummary {
    fn from(record: PasskeyRecord) -> PasskeySummary {
        PasskeySummary {
            id: record.id,
            created_at: record.created_at(),
            last_used_at: record.last_used_at(),
            name: record.name,
            backup_eligible: record.backup_eligible,
            backed_up: record.backed_up,
        }
    }
}

impl RelyingParty {
    /// The relying party of the resolved settings (see `Settings::relying_party`).
    pub fn new(settings: &RelyingPartySettings) -> anyhow::Result<RelyingParty> {
        let (first, others) = settings
            .origins
            .split_first()
            .ok_or_else(|| anyhow!("webauthn.origins: at least one origin is needed"))?;
        let mut builder = WebauthnBuilder::new(&settings.rp_id, first).map_err(|error| {
            anyhow!(
                "passkeys cannot be bound to {:?} for {first}: {error}",
                settings.rp_id
            )
        })?;
        for origin in others {
            builder = builder.append_allowed_origin(origin);
        }
        let webauthn = builder
            .rp_name(&settings.rp_name)
            .build()
            .map_err(|error| anyhow!("passkeys cannot use webauthn.*: {error}"))?;
        Ok(RelyingParty { webauthn })
    }

    /// The relying party of one origin's host, for tests: `http://localhost:PORT` or a domain.
    pub fn for_origin(origin: &str) -> anyhow::Result<RelyingParty> {
        let origin = url::Url::parse(origin)?;
        let rp_id = origin
            .domain()
            .ok_or_else(|| anyhow!("an origin with a domain name is needed"))?
            .to_owned();
        RelyingParty::new(&RelyingPartySettings {
            rp_id,
            rp_name: "authd".to_owned(),
            origins: vec![origin],
        })
    }

    /// Options to register a passkey for the user handle `handle`, excluding the credentials
    /// the user has already. The crate leaves the resident key to the authenticator; the
    /// options require one, so the passkey can sign in without an address typed first.
    pub fn start_registration(
        &self,
        handle: Uuid,
        email: &str,
        existing: Vec<CredentialID>,
    ) -> Result<Started> {
        let (options, state) = self
            .webauthn
            .start_passkey_registration(handle, email, email, Some(existing))
            .map_err(|error| internal("starting a passkey registration", error))?;
        // On the JSON: the option types live in webauthn-rs-proto, which the crate does not
        // re-export, and the browser only ever sees the JSON.
        let mut options = to_json(&options)?;
        options["publicKey"]["authenticatorSelection"]["residentKey"] = json!("required");
        options["publicKey"]["authenticatorSelection"]["requireResidentKey"] = json!(true);
        Ok(Started {
            options,
            state: to_bytes(&state)?,
        })
    }

    /// The new passkey, when the browser's answer matches the stored state.
    pub fn finish_registration(
        &self,
        credential: &RegisterPublicKeyCredential,
        state: &[u8],
    ) -> std::result::Result<Passkey, WebauthnError> {
        let state: PasskeyRegistration =
            from_bytes(state).map_err(|_| WebauthnError::ChallengeNotFound)?;
        self.webauthn
            .finish_passkey_registration(credential, &state)
    }

    /// Options for a discoverable sign-in: no `allowCredentials`, so nothing about any account
    /// is revealed. The crate marks them for conditional mediation (autofill); that is taken off
    /// so a button can ask with the browser's own dialog.
    pub fn start_discoverable_login(&self) -> Result<Started> {
        let (mut options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|error| internal("starting a passkey sign-in", error))?;
        options.mediation = None;
        Ok(Started {
            options: to_json(&options)?,
            state: to_bytes(&state)?,
        })
    }

    /// Options for the second step of a login: the user's passkeys are the allowed ones.
    pub fn start_second_step(&self, passkeys: &[Passkey]) -> Result<Started> {
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(passkeys)
            .map_err(|error| internal("starting a passkey second step", error))?;
        Ok(Started {
            options: to_json(&options)?,
            state: to_bytes(&state)?,
        })
    }

    /// Whose passkey the browser says signed: the user handle and the credential id, to look
    /// up the stored passkey. Nothing is verified yet.
    pub fn identify(
        &self,
        credential: &PublicKeyCredential,
    ) -> std::result::Result<(Uuid, Vec<u8>), WebauthnError> {
        self.webauthn
            .identify_discoverable_authentication(credential)
            .map(|(user, id)| (user, id.to_vec()))
    }

    /// Checks a discoverable sign-in's assertion against its state and the stored passkey
    /// (origin, RP id, challenge, user verification, signature, counter).
    pub fn finish_discoverable_login(
        &self,
        credential: &PublicKeyCredential,
        state: &[u8],
        passkey: &Passkey,
    ) -> std::result::Result<AuthenticationResult, WebauthnError> {
        let state: DiscoverableAuthentication =
            from_bytes(state).map_err(|_| WebauthnError::ChallengeNotFound)?;
        self.webauthn
            .finish_discoverable_authentication_v2(credential, state, passkey)
    }

    /// Checks a second step's assertion against its state (which names the allowed passkeys).
    pub fn finish_second_step(
        &self,
        credential: &PublicKeyCredential,
        state: &[u8],
    ) -> std::result::Result<AuthenticationResult, WebauthnError> {
        let state: PasskeyAuthentication =
            from_bytes(state).map_err(|_| WebauthnError::ChallengeNotFound)?;
        self.webauthn
            .finish_passkey_authentication(credential, &state)
    }
}

fn internal(what: &str, error: WebauthnError) -> Error {
    Error::Internal(anyhow!("{what}: {error}"))
}

fn to_json<T: serde::Serialize>(options: &T) -> Result<Value> {
    serde_json::to_value(options)
        .map_err(|error| Error::Internal(anyhow!("writing passkey options: {error}")))
}

fn to_bytes<T: serde::Serialize>(state: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(state)
        .map_err(|error| Error::Internal(anyhow!("storing a passkey ceremony: {error}")))
}

fn from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|error| Error::Internal(anyhow!("reading a passkey ceremony: {error}")))
}

/// A stored passkey's relying-party record.
fn stored_passkey(record: &PasskeyRecord) -> Result<Passkey> {
    serde_json::from_str(&record.credential)
        .map_err(|error| Error::Internal(anyhow!("a stored passkey does not read: {error}")))
}

/// Why the relying party refused an answer, in the audit trail's words.
fn refusal(error: &WebauthnError) -> &'static str {
    match error {
        WebauthnError::CredentialPossibleCompromise => {
            "the signature counter went backwards: a cloned authenticator?"
        }
        WebauthnError::InvalidRPOrigin => "another origin",
        WebauthnError::InvalidRPIDHash => "another relying party id",
        WebauthnError::UserNotVerified => "the user was not verified",
        WebauthnError::MismatchedChallenge => "another ceremony's challenge",
        WebauthnError::CredentialNotFound => "a credential the ceremony did not allow",
        _ => "the answer does not verify",
    }
}

/// What a verified assertion changes on its passkey, and the JSON it is stored as.
fn passkey_use(
    record: &PasskeyRecord,
    result: &AuthenticationResult,
) -> Result<(String, PasskeyUse<'static>)> {
    let mut passkey = stored_passkey(record)?;
    passkey.update_credential(result);
    let credential = serde_json::to_string(&passkey)
        .map_err(|error| Error::Internal(anyhow!("storing a passkey: {error}")))?;
    Ok((
        credential,
        PasskeyUse {
            id: record.id,
            user_id: record.user_id,
            credential: "",
            sign_count: i64::from(result.counter()),
            backup_eligible: result.backup_eligible() || record.backup_eligible,
            backed_up: result.backup_state(),
            at: Utc::now(),
        },
    ))
}

impl Auth {
    /// The throttle key of an account's passkey sign-ins from one client address (IPv6: its
    /// prefix). Apart from the password's, so password guessing does not lock a passkey out;
    /// and per address, because the credential id and user handle it takes to be refused are no
    /// secret (any registration options of the account name them): keyed by account alone, a
    /// stranger could keep the owner's passkey locked, while a signature cannot be guessed.
    fn passkey_key(&self, user_id: Uuid, client: &Client) -> String {
        match client.ip {
            Some(ip) => format!(
                "passkey:{user_id}:{}",
                super::client_key(ip, self.limits.ipv6_prefix_len)
            ),
            None => format!("passkey:{user_id}:-"),
        }
    }

    fn relying_party(&self) -> Result<&RelyingParty> {
        self.passkeys.as_deref().ok_or(Error::PasskeysUnavailable)
    }

    /// Whether passkeys can be used here and `user_id` has one: a login's `methods` say so.
    pub(super) async fn has_passkeys(&self, user_id: Uuid) -> Result<bool> {
        if self.passkeys.is_none() {
            return Ok(false);
        }
        Ok(self.store.count_passkeys(user_id).await? > 0)
    }

    async fn keep_ceremony(
        &self,
        started: Started,
        purpose: CeremonyPurpose,
        user_id: Option<Uuid>,
        challenge_id: Option<Uuid>,
    ) -> Result<CeremonyOptions> {
        let id = Uuid::new_v4();
        self.store
            .insert_ceremony(&NewCeremony {
                id,
                purpose,
                user_id,
                challenge_id,
                state: started.state,
                expires_at: Utc::now() + chrono::Duration::seconds(CEREMONY_TTL_SECS),
            })
            .await?;
        Ok(CeremonyOptions {
            ceremony: id,
            public_key: started.options["publicKey"].clone(),
        })
    }

    fn reject(&self, user: Option<&User>, client: &Client, why: &str) -> Error {
        tracing::info!(reason = why, "passkey refused");
        self.metrics.passkey("rejected");
        let mut event = SecurityEvent::new(EventKind::PasskeyRejected)
            .client(client.ip)
            .detail(why);
        if let Some(user) = user {
            event = event.user(user.id, &user.email);
        }
        self.audit.record(event);
        Error::PasskeyRejected
    }

    /// `POST /passkeys/register/options`: creation options for the access token's user, the
    /// passkeys they have excluded. Needs a login less than `session.fresh_login_secs` old.
    pub async fn passkey_registration_options(
        &self,
        access_token: &str,
    ) -> Result<CeremonyOptions> {
        let rp = self.relying_party()?;
        let (user, session) = self.authenticate(access_token).await?;
        self.ensure_fresh_login(session).await?;
        let existing = self.store.user_passkeys(user.id).await?;
        if existing.len() >= MAX_PASSKEYS_PER_USER as usize {
            return Err(Error::TooManyPasskeys);
        }
        let handle = self
            .store
            .webauthn_handle(user.id)
            .await?
            .ok_or(Error::InvalidToken("this access token's user is gone"))?;
        let excluded = existing
            .into_iter()
            .map(|p| CredentialID::from(p.credential_id))
            .collect();
        let started = rp.start_registration(handle, &user.email, excluded)?;
        self.keep_ceremony(started, CeremonyPurpose::Register, Some(user.id), None)
            .await
    }

    /// `POST /passkeys/register`: the browser's answer to a registration ceremony of the same
    /// user becomes a passkey named `name` (default "Passkey"). Needs a fresh login too.
    pub async fn register_passkey(
        &self,
        access_token: &str,
        ceremony: Uuid,
        credential: &RegisterPublicKeyCredential,
        name: Option<&str>,
        client: Client,
    ) -> Result<PasskeySummary> {
        let rp = self.relying_party()?;
        let name = PersonName::parse_optional(name)
            .map_err(|message| Error::validation("name", message))?
            .map_or_else(|| DEFAULT_NAME.to_owned(), PersonName::into_string);
        let (user, session) = self.authenticate(access_token).await?;
        self.ensure_fresh_login(session).await?;
        let taken = self
            .store
            .take_ceremony(ceremony, CeremonyPurpose::Register, Utc::now())
            .await?
            .filter(|taken| taken.user_id == Some(user.id))
            .ok_or(Error::InvalidCeremony)?;
        let passkey = match rp.finish_registration(credential, &taken.state) {
            Ok(passkey) => passkey,
            Err(error) => {
                self.reject(Some(&user), &client, refusal(&error));
                return Err(Error::InvalidPasskey);
            }
        };
        let internals = Credential::from(passkey.clone());
        // WebAuthn caps a credential id at 1023 bytes (the crate takes up to 4096): longer is
        // refused, before it reaches an index.
        if internals.cred_id.len() > MAX_CREDENTIAL_ID_BYTES {
            self.reject(Some(&user), &client, "a credential id over 1023 bytes");
            return Err(Error::InvalidPasskey);
        }
        if !internals.user_verified {
            self.reject(Some(&user), &client, "the user was not verified");
            return Err(Error::InvalidPasskey);
        }
        let stored = serde_json::to_string(&passkey)
            .map_err(|error| Error::Internal(anyhow!("storing a passkey: {error}")))?;
        let now = Utc::now();
        let new = NewPasskey {
            id: Uuid::now_v7(),
            user_id: user.id,
            credential_id: internals.cred_id.to_vec(),
            credential: stored,
            name,
            sign_count: i64::from(internals.counter),
            backup_eligible: internals.backup_eligible,
            backed_up: internals.backup_state,
            created_at: now,
        };
        match self
            .store
            .insert_passkey(&new, MAX_PASSKEYS_PER_USER)
            .await?
        {
            PasskeyInsert::Inserted => {}
            PasskeyInsert::Full => return Err(Error::TooManyPasskeys),
            PasskeyInsert::Duplicate => {
                return Err(Error::validation(
                    "credential",
                    "this passkey is registered already",
                ));
            }
            PasskeyInsert::NoUser => {
                return Err(Error::InvalidToken("this access token's user is gone"));
            }
        }
        tracing::info!(user_id = %user.id, "passkey registered");
        self.metrics.passkey("registered");
        self.audit.record(
            SecurityEvent::new(EventKind::PasskeyRegistered)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("{}: \"{}\"", new.id, new.name)),
        );
        // Whoever holds a session could add a way in: the owner hears of it.
        self.notify(
            "passkey_changed",
            user,
            client,
            Mail::PasskeyChanged {
                name: new.name.clone(),
                added: true,
            },
        );
        Ok(PasskeySummary {
            id: new.id,
            name: new.name,
            created_at: now,
            last_used_at: None,
            backup_eligible: new.backup_eligible,
            backed_up: new.backed_up,
        })
    }

    /// `GET /passkeys`: the access token's user's passkeys, newest first.
    pub async fn list_passkeys(&self, access_token: &str) -> Result<Vec<PasskeySummary>> {
        let (user, _) = self.authenticate(access_token).await?;
        self.passkeys_of(user.id).await
    }

    async fn passkeys_of(&self, user_id: Uuid) -> Result<Vec<PasskeySummary>> {
        Ok(self
            .store
            .user_passkeys(user_id)
            .await?
            .into_iter()
            .map(PasskeySummary::from)
            .collect())
    }

    /// `DELETE /passkeys/{id}`: removes one of the caller's passkeys and ends the sessions that
    /// signed in with it. Needs a fresh login; another user's passkey is not found.
    pub async fn remove_own_passkey(
        &self,
        access_token: &str,
        id: Uuid,
        client: Client,
    ) -> Result<()> {
        let (user, session) = self.authenticate(access_token).await?;
        self.ensure_fresh_login(session).await?;
        self.remove_passkey_of(&user, id, "by user", client.clone())
            .await
            .map(|name| {
                self.notify(
                    "passkey_changed",
                    user,
                    client,
                    Mail::PasskeyChanged { name, added: false },
                );
            })
    }

    /// Removes the passkey and ends its sessions; its name.
    async fn remove_passkey_of(
        &self,
        user: &User,
        id: Uuid,
        by: &str,
        client: Client,
    ) -> Result<String> {
        let (name, ended) = self
            .store
            .remove_passkey(user.id, id, Utc::now())
            .await?
            .ok_or(Error::PasskeyNotFound)?;
        tracing::info!(user_id = %user.id, passkey = %id, ended, "passkey removed");
        self.audit.record(
            SecurityEvent::new(EventKind::PasskeyRemoved)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!("{by}: {id}, {ended} sessions ended")),
        );
        Ok(name)
    }

    /// `authd user passkeys EMAIL`: the user and their passkeys.
    pub async fn user_passkeys(&self, email: &Email) -> Result<(User, Vec<PasskeySummary>)> {
        let user = self.user_by_email(email).await?;
        let passkeys = self.passkeys_of(user.id).await?;
        Ok((user, passkeys))
    }

    /// `authd user passkeys EMAIL --remove ID`.
    pub async fn remove_user_passkey(&self, email: &Email, id: Uuid) -> Result<User> {
        let user = self.user_by_email(email).await?;
        self.remove_passkey_of(&user, id, Actor::Cli.as_str(), Client::default())
            .await?;
        Ok(user)
    }

    /// `POST /login/passkey/options`: with no challenge token, options for a discoverable
    /// sign-in (naming no account); with one (from `/login`), options for that user's passkeys,
    /// bound to that challenge.
    pub async fn passkey_login_options(
        &self,
        challenge_token: Option<&str>,
    ) -> Result<CeremonyOptions> {
        let rp = self.relying_party()?;
        let Some(token) = challenge_token else {
            let started = rp.start_discoverable_login()?;
            return self
                .keep_ceremony(started, CeremonyPurpose::Login, None, None)
                .await;
        };
        let claims = self.open_challenge(token).await?;
        let passkeys = self
            .store
            .user_passkeys(claims.sub)
            .await?
            .iter()
            .map(stored_passkey)
            .collect::<Result<Vec<_>>>()?;
        if passkeys.is_empty() {
            return Err(Error::validation(
                "authorization",
                "this account has no passkey: finish with another of the login's methods",
            ));
        }
        let started = rp.start_second_step(&passkeys)?;
        self.keep_ceremony(
            started,
            CeremonyPurpose::SecondStep,
            Some(claims.sub),
            Some(claims.jti),
        )
        .await
    }

    /// `POST /login/passkey`: the browser's answer to a sign-in ceremony opens a session, with
    /// no password and no emailed code; with a challenge token it finishes that login's second
    /// step instead.
    pub async fn passkey_login(
        &self,
        challenge_token: Option<&str>,
        ceremony: Uuid,
        credential: &PublicKeyCredential,
        client: Client,
    ) -> Result<SessionTokens> {
        let rp = self.relying_party()?;
        let sign_in = self.sign_in()?;
        // Nothing taken while no token could be issued for it.
        self.ensure_can_sign().await?;
        let result = match challenge_token {
            None => {
                self.discoverable_login(rp, ceremony, credential, &client)
                    .await
            }
            Some(token) => {
                self.passkey_second_step(rp, token, ceremony, credential, &client)
                    .await
            }
        };
        let (user, passkey_id) = result?;
        let tokens = self
            .open_session(
                sign_in,
                user.id,
                &client,
                SessionProof::Passkey(passkey_id),
                || Error::PasskeyRejected,
            )
            .await?;
        tracing::info!(user_id = %user.id, "passkey sign-in");
        self.metrics.passkey(if challenge_token.is_some() {
            "second_step"
        } else {
            "sign_in"
        });
        self.audit.record(
            SecurityEvent::new(EventKind::PasskeyLogin)
                .user(user.id, &user.email)
                .client(client.ip)
                .detail(format!(
                    "{}: {passkey_id}",
                    if challenge_token.is_some() {
                        "second step"
                    } else {
                        "sign-in"
                    }
                )),
        );
        Ok(tokens)
    }

    /// A discoverable sign-in: the user is whoever the credential belongs to, if the answer
    /// verifies and its counter moved forward. Failures of a known passkey count toward a lock
    /// of passkey sign-ins of that account (`rate_limit.login_failures_per_account`).
    async fn discoverable_login(
        &self,
        rp: &RelyingParty,
        ceremony: Uuid,
        credential: &PublicKeyCredential,
        client: &Client,
    ) -> Result<(User, Uuid)> {
        let taken = self
            .store
            .take_ceremony(ceremony, CeremonyPurpose::Login, Utc::now())
            .await?
            .ok_or(Error::InvalidCeremony)?;
        let Ok((handle, credential_id)) = rp.identify(credential) else {
            return Err(self.reject(None, client, "no user handle in the answer"));
        };
        let Some(found) = self.store.passkey_by_credential(&credential_id).await? else {
            return Err(self.reject(None, client, "an unknown credential"));
        };
        let user = self
            .store
            .find_user(found.passkey.user_id)
            .await?
            .ok_or(Error::PasskeyRejected)?;
        if found.disabled {
            return Err(self.reject(Some(&user), client, "account disabled"));
        }
        if found.webauthn_handle != Some(handle) {
            return Err(self.reject(Some(&user), client, "another user's handle"));
        }
        let key = self.passkey_key(user.id, client);
        if let Err(error) = self.reserve(&key, &self.login_rule()).await {
            self.reject(
                Some(&user),
                client,
                "passkey sign-ins of this account are locked",
            );
            self.metrics.throttle("passkey");
            return Err(error);
        }
        let passkey = stored_passkey(&found.passkey)?;
        let result = match rp.finish_discoverable_login(credential, &taken.state, &passkey) {
            Ok(result) if result.user_verified() => result,
            Ok(_) => return Err(self.reject(Some(&user), client, "the user was not verified")),
            Err(error) => return Err(self.reject(Some(&user), client, refusal(&error))),
        };
        let (stored, used) = passkey_use(&found.passkey, &result)?;
        let used = PasskeyUse {
            credential: &stored,
            ..used
        };
        if !self.store.use_passkey(&used).await? {
            return Err(self.reject(
                Some(&user),
                client,
                "the signature counter did not move forward: a replayed or cloned authenticator?",
            ));
        }
        self.clear_failures(&key).await?;
        if self.require_verified_email && !user.email_verified {
            self.audit.record(
                SecurityEvent::new(EventKind::LoginUnverified)
                    .user(user.id, &user.email)
                    .client(client.ip),
            );
            return Err(Error::EmailNotVerified);
        }
        Ok((user, found.passkey.id))
    }

    /// The second step of a login with a passkey: the ceremony must be this challenge's, and
    /// the challenge is settled (consumed, or one attempt used) in the transaction that takes
    /// the assertion's counter. Failures count toward the second-step lock like wrong codes.
    async fn passkey_second_step(
        &self,
        rp: &RelyingParty,
        token: &str,
        ceremony: Uuid,
        credential: &PublicKeyCredential,
        client: &Client,
    ) -> Result<(User, Uuid)> {
        let claims = self.open_challenge(token).await?;
        let taken = self
            .store
            .take_ceremony(ceremony, CeremonyPurpose::SecondStep, Utc::now())
            .await?
            .filter(|t| t.challenge_id == Some(claims.jti) && t.user_id == Some(claims.sub))
            .ok_or(Error::InvalidCeremony)?;
        let user = self
            .store
            .find_user(claims.sub)
            .await?
            .ok_or(Error::PasskeyRejected)?;
        let key = otp_key(user.id);
        let locks_if_wrong = match self.reserve(&key, &self.otp_rule()).await {
            Ok(locks) => locks,
            Err(error) => {
                self.reject(Some(&user), client, "the second step is locked");
                self.metrics.throttle("code");
                return Err(error);
            }
        };
        let verified = rp
            .finish_second_step(credential, &taken.state)
            .map_err(|error| refusal(&error))
            .and_then(|result| {
                if result.user_verified() {
                    Ok(result)
                } else {
                    Err("the user was not verified")
                }
            });
        let passkeys = self.store.user_passkeys(user.id).await?;
        let record = verified.as_ref().ok().and_then(|result| {
            passkeys
                .iter()
                .find(|p| p.credential_id.as_slice() == result.cred_id().as_slice())
        });
        let stored;
        let answer = match (&verified, record) {
            (Ok(result), Some(record)) => {
                let (json, used) = passkey_use(record, result)?;
                stored = json;
                ChallengeAnswer::Passkey(PasskeyUse {
                    credential: &stored,
                    ..used
                })
            }
            _ => ChallengeAnswer::Wrong,
        };
        match self
            .store
            .attempt_challenge(claims.jti, user.id, answer, self.max_attempts, Utc::now())
            .await?
        {
            Attempt::Accepted => {
                self.clear_failures(&key).await?;
                let id = record.map(|r| r.id).ok_or(Error::PasskeyRejected)?;
                Ok((user, id))
            }
            Attempt::Rejected { .. } => {
                let why = match verified {
                    Err(why) => why,
                    Ok(_) if record.is_none() => "a credential that is no longer registered",
                    Ok(_) => {
                        "the signature counter did not move forward: a replayed or cloned authenticator?"
                    }
                };
                let refused = self.reject(Some(&user), client, why);
                if locks_if_wrong {
                    tracing::warn!(user_id = %user.id, "second step locked until an admin unlocks it");
                    self.audit.record(
                        SecurityEvent::new(EventKind::SecondFactorLocked)
                            .user(user.id, &user.email)
                            .client(client.ip)
                            .detail("passkey"),
                    );
                }
                Err(refused)
            }
            Attempt::Dead => {
                if self.limits.enabled {
                    self.store.release_attempt(&key).await?;
                }
                Err(super::challenge::dead_challenge())
            }
        }
    }
}

/// Builds the relying party when the settings name a domain; logs why passkeys are off when
/// they do not.
pub fn relying_party_of(
    settings: &crate::config::Settings,
) -> anyhow::Result<Option<Arc<RelyingParty>>> {
    match settings.relying_party()? {
        Some(rp) => Ok(Some(Arc::new(RelyingParty::new(&rp)?))),
        None => {
            tracing::warn!(
                public_url = %settings.public_url(),
                "passkeys off: WebAuthn needs a domain name and http.public_url names an IP address; set http.public_url or webauthn.rp_id"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_localhost_origin_makes_a_relying_party_and_an_ip_address_does_not() {
        assert!(RelyingParty::for_origin("http://localhost:8080").is_ok());
        assert!(RelyingParty::for_origin("https://auth.example.com").is_ok());
        assert!(RelyingParty::for_origin("http://127.0.0.1:8080").is_err());
    }

    #[test]
    fn an_origin_outside_the_rp_id_is_refused_at_start() {
        let settings = |origin: &str| RelyingPartySettings {
            rp_id: "example.com".to_owned(),
            rp_name: "authd".to_owned(),
            origins: vec![url::Url::parse(origin).unwrap()],
        };
        assert!(RelyingParty::new(&settings("https://auth.example.com")).is_ok());
        assert!(RelyingParty::new(&settings("https://example.com")).is_ok());
        let err = RelyingParty::new(&settings("https://example.org"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("example.com"), "{err}");
    }

    #[test]
    fn registration_options_require_a_resident_key_and_user_verification() {
        let rp = RelyingParty::for_origin("https://auth.example.com").unwrap();
        let started = rp
            .start_registration(Uuid::new_v4(), "ada@example.com", Vec::new())
            .unwrap();
        let options = &started.options;
        let selection = &options["publicKey"]["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "required");
        assert_eq!(selection["requireResidentKey"], true);
        assert_eq!(selection["userVerification"], "required");
        assert_eq!(options["publicKey"]["rp"]["id"], "auth.example.com");
        let _: PasskeyRegistration = from_bytes(&started.state).unwrap();
    }

    #[test]
    fn discoverable_login_options_name_no_credential_and_its_state_reads_back() {
        let rp = RelyingParty::for_origin("https://auth.example.com").unwrap();
        let started = rp.start_discoverable_login().unwrap();
        let options = &started.options;
        let allowed = options["publicKey"]["allowCredentials"].as_array();
        assert!(allowed.is_none_or(|list| list.is_empty()));
        assert_eq!(options["publicKey"]["userVerification"], "required");
        assert!(options.get("mediation").is_none_or(|m| m.is_null()));
        let _: DiscoverableAuthentication = from_bytes(&started.state).unwrap();
    }
}
