//! Signing keys in the store (issue 15, in progress): states move as rotation says, and the
//! database itself keeps at most one key current.

use authd::keyring::{KeyAlgorithm, PrivateKey};
use authd::store::{NewSigningKey, Store};

use crate::helpers::TestApp;

fn new_key(kid: &str, state: &str, at: chrono::DateTime<chrono::Utc>) -> NewSigningKey {
    let key = PrivateKey::generate(KeyAlgorithm::Es256).unwrap();
    NewSigningKey {
        kid: kid.into(),
        algorithm: "ES256".into(),
        public_jwk: serde_json::to_string(&key.public_jwk(kid).unwrap()).unwrap(),
        sealed_private: key.seal(&[1; 32], kid).unwrap(),
        state: state.into(),
        created_at: at,
    }
}

#[tokio::test]
async fn rotation_moves_the_states_and_only_one_key_is_ever_current() {
    let app = TestApp::spawn().await;
    let store = Store::connect_lazy(&app.settings).unwrap();
    let t0 = chrono::Utc::now();
    store
        .insert_signing_key(&new_key("k1", "current", t0))
        .await
        .unwrap();
    // A second current key is refused by the database.
    assert!(
        store
            .insert_signing_key(&new_key("k2", "current", t0))
            .await
            .is_err()
    );
    assert_eq!(store.activate_next_key(t0).await.unwrap(), None);
    let t1 = t0 + chrono::Duration::seconds(1);
    store
        .insert_signing_key(&new_key("k2", "next", t1))
        .await
        .unwrap();
    store
        .insert_signing_key(&new_key("k3", "next", t1 + chrono::Duration::seconds(1)))
        .await
        .unwrap();
    let t2 = t1 + chrono::Duration::seconds(5);
    assert_eq!(
        store.activate_next_key(t2).await.unwrap().as_deref(),
        Some("k2")
    );
    let keys = store.list_signing_keys().await.unwrap();
    let states: Vec<(&str, &str)> = keys
        .iter()
        .map(|k| (k.kid.as_str(), k.state.as_str()))
        .collect();
    assert_eq!(
        states,
        [("k1", "retired"), ("k2", "current"), ("k3", "next")]
    );
    assert_eq!(keys[0].retired_at, keys[1].activated_at);
    // The sealed private half opens again from what was stored.
    PrivateKey::unseal(&keys[1].sealed_private, &[1; 32], "k2", KeyAlgorithm::Es256).unwrap();

    assert!(store.revoke_signing_key("k1", t2).await.unwrap());
    assert!(!store.revoke_signing_key("k1", t2).await.unwrap());
    assert!(!store.revoke_signing_key("nope", t2).await.unwrap());
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(keys[0].state, "revoked");
    assert!(keys[0].revoked_at.is_some());
}
