//! Passkeys (WebAuthn) as the relying party: the ceremonies of registering a discoverable
//! credential and of signing in with one, with each ceremony's state as bytes a store can keep.
//!
//! A sketch for issue 24, not wired to routes yet (public only so that the browser test
//! `neutral::passkeys` can run both ceremonies against Chromium). `webauthn-rs` does every CBOR, COSE and
//! signature check; this file only chooses the policy (resident key required, user verification
//! required) and turns the state into bytes and back.

// Nothing calls this module yet: the routes, the ceremony table and the settings come next.
#![allow(
    dead_code,
    reason = "sketch for issue 24; wired to routes in the next session"
)]

use anyhow::{Context, anyhow};
use serde_json::{Value, json};
use url::Url;
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticationResult, CredentialID, DiscoverableAuthentication, Passkey, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Webauthn, WebauthnBuilder,
};

use crate::error::{Error, Result};

/// The relying party: authd as the site a passkey is bound to.
pub struct RelyingParty {
    webauthn: Webauthn,
}

/// A ceremony's options for the browser, and the state to keep until the browser answers.
pub struct Started {
    /// `{"publicKey": {...}}` as JSON, for the browser's `PublicKeyCredential.parse*OptionsFromJSON`.
    pub options: Value,
    /// The challenge and policy of this ceremony, to store server-side, bound to its purpose,
    /// and hand back once to the matching `finish_*`.
    pub state: Vec<u8>,
}

impl RelyingParty {
    /// The relying party of `public_url`: its host is the RP id, the URL itself the only origin.
    /// An IP address is refused: WebAuthn RP ids are domains (browsers refuse `127.0.0.1` too),
    /// so development uses `http://localhost:PORT`.
    pub fn from_public_url(public_url: &str, rp_name: &str) -> anyhow::Result<RelyingParty> {
        let origin = Url::parse(public_url).context("http.public_url is not a URL")?;
        let rp_id = origin
            .domain()
            .ok_or_else(|| anyhow!("http.public_url has no domain name for passkeys"))?
            .to_owned();
        let webauthn = WebauthnBuilder::new(&rp_id, &origin)
            .and_then(|builder| builder.rp_name(rp_name).build())
            .map_err(|error| anyhow!("passkeys cannot use {public_url}: {error}"))?;
        Ok(RelyingParty { webauthn })
    }

    /// Options to register a passkey for `user_id`, excluding the credentials it has already.
    /// The crate's passkey registration leaves the resident key to the authenticator; the options
    /// are changed to require one, so the credential can sign in without a name typed first.
    pub fn start_registration(
        &self,
        user_id: Uuid,
        email: &str,
        existing: Vec<CredentialID>,
    ) -> Result<Started> {
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_id, email, email, Some(existing))
            .map_err(|error| {
                Error::Internal(anyhow!("starting a passkey registration: {error}"))
            })?;
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
    ) -> Result<Passkey> {
        let state: PasskeyRegistration = from_bytes(state)?;
        self.webauthn
            .finish_passkey_registration(credential, &state)
            .map_err(|_| Error::InvalidCredentials)
    }

    /// Options for a discoverable sign-in: no `allowCredentials`, so nothing about any account
    /// is revealed. The crate marks them for conditional mediation (autofill); that is taken off
    /// so a button can ask for a passkey with the browser's own dialog.
    pub fn start_discoverable_login(&self) -> Result<Started> {
        let (mut options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|error| Error::Internal(anyhow!("starting a passkey sign-in: {error}")))?;
        options.mediation = None;
        let options = to_json(&options)?;
        Ok(Started {
            options,
            state: to_bytes(&state)?,
        })
    }

    /// Whose passkey the browser says signed: the user handle and the credential id, to look
    /// up the stored passkey before `finish_discoverable_login`. Nothing is verified yet.
    pub fn identify(&self, credential: &PublicKeyCredential) -> Result<(Uuid, CredentialID)> {
        self.webauthn
            .identify_discoverable_authentication(credential)
            .map(|(user, id)| (user, CredentialID::from(id.to_vec())))
            .map_err(|_| Error::InvalidCredentials)
    }

    /// Checks the assertion against the stored state and the user's stored passkey. The caller
    /// stores the counter and backup state of the result (`Passkey::update_credential`) and
    /// refuses a counter that went backwards.
    pub fn finish_discoverable_login(
        &self,
        credential: &PublicKeyCredential,
        state: &[u8],
        passkey: &Passkey,
    ) -> Result<AuthenticationResult> {
        let state: DiscoverableAuthentication = from_bytes(state)?;
        self.webauthn
            .finish_discoverable_authentication_v2(credential, state, passkey)
            .map_err(|_| Error::InvalidCredentials)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_localhost_url_makes_a_relying_party_and_an_ip_address_does_not() {
        assert!(RelyingParty::from_public_url("http://localhost:8080", "authd").is_ok());
        assert!(RelyingParty::from_public_url("https://auth.example.com", "authd").is_ok());
        assert!(RelyingParty::from_public_url("http://127.0.0.1:8080", "authd").is_err());
    }

    #[test]
    fn registration_options_require_a_resident_key_and_user_verification() {
        let rp = RelyingParty::from_public_url("https://auth.example.com", "authd").unwrap();
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
        let rp = RelyingParty::from_public_url("https://auth.example.com", "authd").unwrap();
        let started = rp.start_discoverable_login().unwrap();
        let options = &started.options;
        let allowed = options["publicKey"]["allowCredentials"].as_array();
        assert!(allowed.is_none_or(|list| list.is_empty()));
        assert_eq!(options["publicKey"]["userVerification"], "required");
        assert!(options.get("mediation").is_none_or(|m| m.is_null()));
        let _: DiscoverableAuthentication = from_bytes(&started.state).unwrap();
    }
}
