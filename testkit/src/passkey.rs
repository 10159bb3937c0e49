//! A software WebAuthn authenticator, browser included: it takes the `publicKey` options a
//! relying party sends and answers with what a browser's `credential.toJSON()` gives, so tests
//! and the benchmark can register and sign in with passkeys without Chromium, and can break one
//! rule at a time (another RP id, no user verification, another key, an old counter).
//!
//! What it signs is what a platform authenticator signs: attestation format `none`, a P-256 key
//! (COSE algorithm -7, ES256), a discoverable (resident) credential per relying party and user,
//! user presence and user verification asserted. JSON field names and base64url without padding
//! are those of WebAuthn Level 3 (`PublicKeyCredentialCreationOptionsJSON`,
//! `RegistrationResponseJSON`, `AuthenticationResponseJSON`).

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::Rng;
use serde_cbor_2::Value as Cbor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Flag bits of the authenticator data (WebAuthn §6.1).
const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;
const BACKUP_ELIGIBLE: u8 = 0x08;
const BACKUP_STATE: u8 = 0x10;
const ATTESTED_CREDENTIAL_DATA: u8 = 0x40;

/// COSE algorithm ES256: ECDSA over P-256 with SHA-256, the only one this authenticator has.
const ES256: i64 = -7;

/// The DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1), before the
/// 65-byte uncompressed point: what `getPublicKey()` gives in a registration's JSON.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A software authenticator and the resident credentials it holds. A clone is a cloned
/// authenticator: same keys, counters that go on separately (the case a signature counter is
/// there to catch).
#[derive(Clone, Debug, Default)]
pub struct SoftAuthenticator {
    credentials: Vec<Credential>,
    /// How the next ceremonies misbehave; all off by default.
    pub behaviour: Behaviour,
}

/// Rules to break on purpose, each off by default. They apply to every ceremony until changed.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Hash this RP id into the authenticator data instead of the options' one (the credential
    /// is still stored under, and looked up by, the options' RP id).
    pub rp_id_override: Option<String>,
    /// Leave the UV flag out, as an authenticator that only tested presence.
    pub skip_user_verification: bool,
    /// Set BE (backup eligible): a synced passkey.
    pub backup_eligible: bool,
    /// Set BS (backed up).
    pub backup_state: bool,
    /// `create` makes its credential with this id; `get` answers with the credential of this id
    /// whatever the options allow.
    pub credential_id: Option<Vec<u8>>,
    /// Answer assertions with this user handle instead of the credential's own.
    pub user_handle_override: Option<Vec<u8>>,
    /// Sign assertions with a fresh key instead of the credential's.
    pub sign_with_another_key: bool,
}

/// One resident credential: a discoverable passkey for one RP id and one user.
#[derive(Clone, Debug)]
pub struct Credential {
    id: Vec<u8>,
    rp_id: String,
    user_handle: Vec<u8>,
    key: SigningKey,
    counter: u32,
}

impl Credential {
    /// The credential id (raw bytes; its base64url form is the JSON's `id`).
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The RP id it was created for.
    pub fn rp_id(&self) -> &str {
        &self.rp_id
    }

    /// The user handle (`user.id` of the registration options), raw bytes.
    pub fn user_handle(&self) -> &[u8] {
        &self.user_handle
    }

    /// The signature counter of the last ceremony (0 after registration).
    pub fn counter(&self) -> u32 {
        self.counter
    }
}

impl SoftAuthenticator {
    /// An authenticator with no credential and no misbehaviour.
    pub fn new() -> SoftAuthenticator {
        SoftAuthenticator::default()
    }

    /// The resident credentials, oldest first.
    pub fn credentials(&self) -> &[Credential] {
        &self.credentials
    }

    /// The ids of the resident credentials, oldest first.
    pub fn credential_ids(&self) -> Vec<Vec<u8>> {
        self.credentials.iter().map(|c| c.id.clone()).collect()
    }

    /// Sets the signature counter of credential `id`; the next assertion signs `counter + 1`.
    pub fn set_counter(&mut self, id: &[u8], counter: u32) -> anyhow::Result<()> {
        let credential = self
            .credentials
            .iter_mut()
            .find(|c| c.id == id)
            .ok_or_else(|| anyhow!("no credential with that id"))?;
        credential.counter = counter;
        Ok(())
    }

    /// `navigator.credentials.create({publicKey})` from page `origin`: a new resident credential
    /// for `rp.id` and `user.id`, replacing the one this user had there. Refuses, as a real
    /// authenticator's `InvalidStateError`, when `excludeCredentials` names one of its own, and
    /// when ES256 is not among `pubKeyCredParams`.
    pub fn create(&mut self, public_key_options: &Value, origin: &str) -> anyhow::Result<Value> {
        let options = public_key_options;
        let rp_id = options["rp"]["id"]
            .as_str()
            .map(str::to_owned)
            .map_or_else(|| host_of(origin), Ok)?;
        let challenge = string_at(options, "challenge")?;
        let user_handle = decode(string_at(&options["user"], "id")?).context("user.id")?;
        if let Some(excluded) = options["excludeCredentials"].as_array() {
            for descriptor in excluded {
                let id = decode(string_at(descriptor, "id")?).context("excludeCredentials")?;
                if self
                    .credentials
                    .iter()
                    .any(|c| c.id == id && c.rp_id == rp_id)
                {
                    bail!("InvalidStateError: the authenticator holds an excluded credential");
                }
            }
        }
        let params = options["pubKeyCredParams"].as_array();
        if !params.is_some_and(|params| params.iter().any(|p| p["alg"] == json!(ES256))) {
            bail!("NotSupportedError: the options do not offer ES256");
        }

        let id = match &self.behaviour.credential_id {
            Some(id) => id.clone(),
            None => random_bytes(rand::rng().random_range(16..=32)),
        };
        let key = generate_key()?;
        let credential = Credential {
            id,
            rp_id,
            user_handle,
            key,
            counter: 0,
        };

        let point = credential.key.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            bail!("the new key has no affine coordinates");
        };
        let cose_key = Cbor::Map(BTreeMap::from([
            (Cbor::Integer(1), Cbor::Integer(2)),
            (Cbor::Integer(3), Cbor::Integer(ES256.into())),
            (Cbor::Integer(-1), Cbor::Integer(1)),
            (Cbor::Integer(-2), Cbor::Bytes(x.to_vec())),
            (Cbor::Integer(-3), Cbor::Bytes(y.to_vec())),
        ]));
        let id_length = u16::try_from(credential.id.len()).context("credential id too long")?;
        let mut auth_data = self.authenticator_data(
            &credential.rp_id,
            ATTESTED_CREDENTIAL_DATA,
            credential.counter,
        );
        auth_data.extend_from_slice(&[0; 16]); // AAGUID: none, as attestation "none" allows
        auth_data.extend_from_slice(&id_length.to_be_bytes());
        auth_data.extend_from_slice(&credential.id);
        auth_data.extend(serde_cbor_2::to_vec(&cose_key).context("encoding the COSE key")?);
        let attestation_object = Cbor::Map(BTreeMap::from([
            (Cbor::Text("fmt".into()), Cbor::Text("none".into())),
            (Cbor::Text("attStmt".into()), Cbor::Map(BTreeMap::new())),
            (
                Cbor::Text("authData".into()),
                Cbor::Bytes(auth_data.clone()),
            ),
        ]));
        let attestation_object =
            serde_cbor_2::to_vec(&attestation_object).context("encoding the attestation")?;
        let client_data = client_data_json("webauthn.create", challenge, origin);
        let public_key = [P256_SPKI_PREFIX.as_slice(), point.as_bytes()].concat();

        let answer = json!({
            "id": encode(&credential.id),
            "rawId": encode(&credential.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": encode(&client_data),
                "attestationObject": encode(&attestation_object),
                "authenticatorData": encode(&auth_data),
                "transports": ["internal", "hybrid"],
                "publicKey": encode(&public_key),
                "publicKeyAlgorithm": ES256,
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        });
        let rp_id = credential.rp_id.clone();
        let user = credential.user_handle.clone();
        self.credentials
            .retain(|c| !(c.rp_id == rp_id && c.user_handle == user));
        self.credentials.push(credential);
        Ok(answer)
    }

    /// `navigator.credentials.get({publicKey})` from page `origin`: an assertion by the first
    /// credential `allowCredentials` names that this authenticator holds for `rpId`, or, when the
    /// list is empty (a discoverable sign-in), by its newest credential for `rpId`. The
    /// credential's counter goes up by one.
    pub fn get(&mut self, public_key_options: &Value, origin: &str) -> anyhow::Result<Value> {
        let options = public_key_options;
        let rp_id = options["rpId"]
            .as_str()
            .map(str::to_owned)
            .map_or_else(|| host_of(origin), Ok)?;
        let challenge = string_at(options, "challenge")?;
        let allowed = match options["allowCredentials"].as_array() {
            Some(list) => list
                .iter()
                .map(|d| decode(string_at(d, "id")?).context("allowCredentials"))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let index = match &self.behaviour.credential_id {
            Some(id) => self.credentials.iter().rposition(|c| c.id == *id),
            None if allowed.is_empty() => self.credentials.iter().rposition(|c| c.rp_id == rp_id),
            None => allowed.iter().find_map(|id| {
                self.credentials
                    .iter()
                    .position(|c| c.id == *id && c.rp_id == rp_id)
            }),
        }
        .ok_or_else(|| anyhow!("NotAllowedError: no credential for {rp_id}"))?;

        let counter = self.credentials[index].counter.wrapping_add(1);
        self.credentials[index].counter = counter;
        let credential = &self.credentials[index];
        let auth_data = self.authenticator_data(&credential.rp_id, 0, counter);
        let client_data = client_data_json("webauthn.get", challenge, origin);
        let signed = [auth_data.as_slice(), &Sha256::digest(&client_data)].concat();
        let signature: Signature = if self.behaviour.sign_with_another_key {
            generate_key()?.sign(&signed)
        } else {
            credential.key.sign(&signed)
        };
        let user_handle = self
            .behaviour
            .user_handle_override
            .as_ref()
            .unwrap_or(&credential.user_handle);

        Ok(json!({
            "id": encode(&credential.id),
            "rawId": encode(&credential.id),
            "type": "public-key",
            "response": {
                "clientDataJSON": encode(&client_data),
                "authenticatorData": encode(&auth_data),
                "signature": encode(signature.to_der().as_bytes()),
                "userHandle": encode(user_handle),
            },
            "clientExtensionResults": {},
            "authenticatorAttachment": "platform",
        }))
    }

    /// rpIdHash ‖ flags ‖ signCount, with `extra_flags` and the behaviour's flags.
    fn authenticator_data(&self, rp_id: &str, extra_flags: u8, counter: u32) -> Vec<u8> {
        let behaviour = &self.behaviour;
        let rp_id = behaviour.rp_id_override.as_deref().unwrap_or(rp_id);
        let mut flags = USER_PRESENT | extra_flags;
        for (on, flag) in [
            (!behaviour.skip_user_verification, USER_VERIFIED),
            (behaviour.backup_eligible, BACKUP_ELIGIBLE),
            (behaviour.backup_state, BACKUP_STATE),
        ] {
            if on {
                flags |= flag;
            }
        }
        let mut data = Sha256::digest(rp_id.as_bytes()).to_vec();
        data.push(flags);
        data.extend_from_slice(&counter.to_be_bytes());
        data
    }
}

/// The client data a browser writes: the challenge exactly as the options gave it.
fn client_data_json(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    json!({
        "type": kind,
        "challenge": challenge,
        "origin": origin,
        "crossOrigin": false,
    })
    .to_string()
    .into_bytes()
}

/// A browser's default RP id: the origin's host.
fn host_of(origin: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(origin).context("the origin is not a URL")?;
    url.host_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the origin has no host"))
}

fn string_at<'a>(object: &'a Value, field: &str) -> anyhow::Result<&'a str> {
    object[field]
        .as_str()
        .ok_or_else(|| anyhow!("the options have no string {field}"))
}

/// base64url, with or without padding (the JSON forms leave it out; some servers keep it).
fn decode(text: &str) -> anyhow::Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .context("not base64url")
}

fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn random_bytes(length: usize) -> Vec<u8> {
    let mut bytes = vec![0; length];
    rand::rng().fill(bytes.as_mut_slice());
    bytes
}

/// A P-256 key from the operating system's randomness. A 32-byte string is not a valid scalar
/// with probability about 2^-32, so a few tries are plenty.
fn generate_key() -> anyhow::Result<SigningKey> {
    for _ in 0..4 {
        if let Ok(key) = SigningKey::from_slice(&random_bytes(32)) {
            return Ok(key);
        }
    }
    bail!("no valid P-256 key from the random source")
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier;

    use super::*;

    const ORIGIN: &str = "https://auth.example.com";

    fn creation_options(user_id: &[u8], exclude: &[Vec<u8>]) -> Value {
        json!({
            "rp": {"id": "auth.example.com", "name": "authd"},
            "user": {"id": encode(user_id), "name": "ada", "displayName": "Ada"},
            "challenge": "Y2hhbGxlbmdl",
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "excludeCredentials": exclude
                .iter()
                .map(|id| json!({"type": "public-key", "id": encode(id)}))
                .collect::<Vec<_>>(),
        })
    }

    fn request_options() -> Value {
        json!({"rpId": "auth.example.com", "challenge": "c2lnbi1pbg", "allowCredentials": []})
    }

    fn bytes_at(answer: &Value, field: &str) -> Vec<u8> {
        decode(answer["response"][field].as_str().unwrap()).unwrap()
    }

    #[test]
    fn a_registration_carries_the_credential_and_its_key_in_attestation_none() {
        let mut authenticator = SoftAuthenticator::new();
        let answer = authenticator
            .create(&creation_options(b"user-1", &[]), ORIGIN)
            .unwrap();
        let credential = &authenticator.credentials()[0];
        assert!((16..=32).contains(&credential.id().len()));
        assert_eq!(answer["id"], encode(credential.id()));

        let object: Cbor =
            serde_cbor_2::from_slice(&bytes_at(&answer, "attestationObject")).unwrap();
        let Cbor::Map(object) = object else {
            panic!("not a map")
        };
        assert_eq!(object[&Cbor::Text("fmt".into())], Cbor::Text("none".into()));
        let Cbor::Bytes(auth_data) = &object[&Cbor::Text("authData".into())] else {
            panic!("no authData")
        };
        assert_eq!(auth_data[..32], Sha256::digest(b"auth.example.com")[..]);
        assert_eq!(
            auth_data[32],
            USER_PRESENT | USER_VERIFIED | ATTESTED_CREDENTIAL_DATA
        );
        assert_eq!(auth_data[33..37], [0, 0, 0, 0]);
        let id_length = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
        assert_eq!(&auth_data[55..55 + id_length], credential.id());

        let client_data: Value =
            serde_json::from_slice(&bytes_at(&answer, "clientDataJSON")).unwrap();
        assert_eq!(client_data["type"], "webauthn.create");
        assert_eq!(client_data["challenge"], "Y2hhbGxlbmdl");
        assert_eq!(client_data["origin"], ORIGIN);
    }

    #[test]
    fn an_assertion_is_signed_over_the_authenticator_data_and_the_client_data_hash() {
        let mut authenticator = SoftAuthenticator::new();
        authenticator
            .create(&creation_options(b"user-1", &[]), ORIGIN)
            .unwrap();
        let answer = authenticator.get(&request_options(), ORIGIN).unwrap();
        let auth_data = bytes_at(&answer, "authenticatorData");
        let client_data = bytes_at(&answer, "clientDataJSON");
        let signature = Signature::from_der(&bytes_at(&answer, "signature")).unwrap();
        let key = VerifyingKey::from(&authenticator.credentials()[0].key);
        let signed = [auth_data.as_slice(), &Sha256::digest(&client_data)].concat();
        assert!(key.verify(&signed, &signature).is_ok());
        assert_eq!(
            auth_data[33..37],
            [0, 0, 0, 1],
            "the counter went up by one"
        );
        assert_eq!(bytes_at(&answer, "userHandle"), b"user-1");
    }

    #[test]
    fn the_backup_and_verification_knobs_change_the_flags() {
        let mut authenticator = SoftAuthenticator::new();
        authenticator
            .create(&creation_options(b"user-1", &[]), ORIGIN)
            .unwrap();
        authenticator.behaviour = Behaviour {
            skip_user_verification: true,
            backup_eligible: true,
            backup_state: true,
            ..Behaviour::default()
        };
        let answer = authenticator.get(&request_options(), ORIGIN).unwrap();
        let flags = bytes_at(&answer, "authenticatorData")[32];
        assert_eq!(flags, USER_PRESENT | BACKUP_ELIGIBLE | BACKUP_STATE);
    }

    #[test]
    fn the_credential_id_and_user_handle_knobs_name_what_they_say() {
        let mut authenticator = SoftAuthenticator::new();
        authenticator.behaviour.credential_id = Some(vec![7; 16]);
        let answer = authenticator
            .create(&creation_options(b"user-1", &[]), ORIGIN)
            .unwrap();
        assert_eq!(answer["rawId"], encode(&[7; 16]));
        authenticator.behaviour.user_handle_override = Some(b"user-2".to_vec());
        let answer = authenticator.get(&request_options(), ORIGIN).unwrap();
        assert_eq!(answer["id"], encode(&[7; 16]));
        assert_eq!(bytes_at(&answer, "userHandle"), b"user-2");
    }

    #[test]
    fn an_excluded_credential_refuses_the_registration_and_keeps_the_credential() {
        let mut authenticator = SoftAuthenticator::new();
        authenticator
            .create(&creation_options(b"user-1", &[]), ORIGIN)
            .unwrap();
        let ids = authenticator.credential_ids();
        assert!(
            authenticator
                .create(&creation_options(b"user-1", &ids), ORIGIN)
                .is_err()
        );
        assert_eq!(authenticator.credential_ids(), ids);
    }
}
