//! The software authenticator of `testkit::passkey` against authd's relying party
//! (`authd::auth::passkeys`): what it answers is what the relying party accepts, and each rule
//! it can break on purpose is one the relying party refuses. What the HTTP tests of passkeys and
//! the benchmark stand on, without a browser.

use serde_json::Value;
use testkit::passkey::SoftAuthenticator;
use uuid::Uuid;
use webauthn_rs::prelude::{Passkey, PublicKeyCredential, RegisterPublicKeyCredential};

use authd::auth::RelyingParty;

const ORIGIN: &str = "http://localhost:8080";

fn relying_party() -> RelyingParty {
    RelyingParty::for_origin(ORIGIN).unwrap()
}

/// A user who registered a passkey on `authenticator`, as the relying party stored it.
fn register(rp: &RelyingParty, authenticator: &mut SoftAuthenticator) -> (Uuid, Passkey) {
    let user = Uuid::new_v4();
    let started = rp
        .start_registration(user, "ada@example.com", Vec::new())
        .unwrap();
    let answer = authenticator
        .create(&started.options["publicKey"], ORIGIN)
        .unwrap();
    let passkey = rp
        .finish_registration(&registration(answer), &started.state)
        .unwrap();
    (user, passkey)
}

fn registration(answer: Value) -> RegisterPublicKeyCredential {
    serde_json::from_value(answer).unwrap()
}

fn assertion(answer: Value) -> PublicKeyCredential {
    serde_json::from_value(answer).unwrap()
}

/// A discoverable sign-in from `origin`, checked against `passkey`: the relying party's verdict.
fn sign_in(
    rp: &RelyingParty,
    authenticator: &mut SoftAuthenticator,
    origin: &str,
    passkey: &Passkey,
) -> Result<webauthn_rs::prelude::AuthenticationResult, webauthn_rs::prelude::WebauthnError> {
    let started = rp.start_discoverable_login().unwrap();
    let answer = authenticator
        .get(&started.options["publicKey"], origin)
        .unwrap();
    rp.finish_discoverable_login(&assertion(answer), &started.state, passkey)
}

/// The passkey after one good sign-in: the refusals below are then due to the rule they break,
/// not to an authenticator the relying party would refuse anyway.
fn signed_in_once(
    rp: &RelyingParty,
    authenticator: &mut SoftAuthenticator,
    mut passkey: Passkey,
) -> Passkey {
    let result = sign_in(rp, authenticator, ORIGIN, &passkey).unwrap();
    passkey.update_credential(&result);
    passkey
}

#[test]
fn a_registration_by_the_soft_authenticator_is_accepted_with_its_credential_id() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, passkey) = register(&rp, &mut authenticator);
    assert_eq!(
        passkey.cred_id().as_slice(),
        authenticator.credentials()[0].id()
    );
}

#[test]
fn a_discoverable_sign_in_verifies_and_names_the_user_and_the_credential() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (user, mut passkey) = register(&rp, &mut authenticator);

    for expected_counter in 1..=2 {
        let started = rp.start_discoverable_login().unwrap();
        let answer = assertion(
            authenticator
                .get(&started.options["publicKey"], ORIGIN)
                .unwrap(),
        );
        let (named_user, credential_id) = rp.identify(&answer).unwrap();
        assert_eq!(named_user, user);
        assert_eq!(&credential_id, passkey.cred_id());
        let result = rp
            .finish_discoverable_login(&answer, &started.state, &passkey)
            .unwrap();
        assert!(result.user_verified());
        assert_eq!(result.counter(), expected_counter);
        passkey.update_credential(&result);
    }
}

#[test]
fn a_registration_refuses_a_second_passkey_on_an_authenticator_that_has_one() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (user, passkey) = register(&rp, &mut authenticator);
    let started = rp
        .start_registration(user, "ada@example.com", vec![passkey.cred_id().clone()])
        .unwrap();
    assert!(
        authenticator
            .create(&started.options["publicKey"], ORIGIN)
            .is_err()
    );
}

#[test]
fn a_registration_or_a_sign_in_from_another_origin_is_refused() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, passkey) = register(&rp, &mut authenticator);
    let passkey = signed_in_once(&rp, &mut authenticator, passkey);
    let verdict = sign_in(&rp, &mut authenticator, "http://localhost:8081", &passkey);
    assert!(verdict.is_err());
    let verdict = sign_in(
        &rp,
        &mut authenticator,
        "http://evil.example:8080",
        &passkey,
    );
    assert!(verdict.is_err());

    let started = rp
        .start_registration(Uuid::new_v4(), "bob@example.com", Vec::new())
        .unwrap();
    let answer = authenticator
        .create(&started.options["publicKey"], "http://localhost:8081")
        .unwrap();
    assert!(
        rp.finish_registration(&registration(answer), &started.state)
            .is_err()
    );
}

#[test]
fn a_registration_or_a_sign_in_signed_for_another_rp_id_is_refused() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, passkey) = register(&rp, &mut authenticator);
    let passkey = signed_in_once(&rp, &mut authenticator, passkey);

    authenticator.behaviour.rp_id_override = Some("evil.example".into());
    let verdict = sign_in(&rp, &mut authenticator, ORIGIN, &passkey);
    assert!(verdict.is_err());

    let started = rp
        .start_registration(Uuid::new_v4(), "bob@example.com", Vec::new())
        .unwrap();
    let answer = authenticator
        .create(&started.options["publicKey"], ORIGIN)
        .unwrap();
    assert!(
        rp.finish_registration(&registration(answer), &started.state)
            .is_err()
    );
}

#[test]
fn a_registration_or_a_sign_in_without_user_verification_is_refused() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, passkey) = register(&rp, &mut authenticator);
    let passkey = signed_in_once(&rp, &mut authenticator, passkey);

    authenticator.behaviour.skip_user_verification = true;
    let verdict = sign_in(&rp, &mut authenticator, ORIGIN, &passkey);
    assert!(verdict.is_err());

    let started = rp
        .start_registration(Uuid::new_v4(), "bob@example.com", Vec::new())
        .unwrap();
    let answer = authenticator
        .create(&started.options["publicKey"], ORIGIN)
        .unwrap();
    assert!(
        rp.finish_registration(&registration(answer), &started.state)
            .is_err()
    );
}

#[test]
fn a_sign_in_signed_by_another_key_is_refused() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, passkey) = register(&rp, &mut authenticator);
    let passkey = signed_in_once(&rp, &mut authenticator, passkey);
    authenticator.behaviour.sign_with_another_key = true;
    let verdict = sign_in(&rp, &mut authenticator, ORIGIN, &passkey);
    assert!(verdict.is_err());
}

#[test]
fn a_sign_in_whose_counter_went_backwards_is_refused() {
    let rp = relying_party();
    let mut authenticator = SoftAuthenticator::new();
    let (_, mut passkey) = register(&rp, &mut authenticator);
    let mut clone = authenticator.clone();
    for _ in 0..2 {
        let result = sign_in(&rp, &mut authenticator, ORIGIN, &passkey).unwrap();
        passkey.update_credential(&result);
    }
    // The clone signs counter 1 after the relying party saw 2.
    let verdict = sign_in(&rp, &mut clone, ORIGIN, &passkey);
    assert!(verdict.is_err());

    // And an equal counter is no better: the original, set back to sign 2 again.
    let id = authenticator.credential_ids().remove(0);
    authenticator.set_counter(&id, 1).unwrap();
    let verdict = sign_in(&rp, &mut authenticator, ORIGIN, &passkey);
    assert!(verdict.is_err());
}
