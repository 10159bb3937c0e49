//! Signing keys: every token carries the `kid` of its key and verifies against the JWKS with an
//! implementation other than the one that signed it (ES256 is signed by ring and checked with
//! RustCrypto's p256; EdDSA is signed by RustCrypto's ed25519-dalek and checked with ring);
//! rotation keeps live tokens; a revoked key is refused
//! at once while logins go on; HS256 tokens issued before a switch stay valid until they
//! expire; `alg` confusion and unknown keys are refused; the admin commands; pruning.

use std::time::Duration;

use authd::config::JwtAlgorithm;
use authd::keys::{KeyAlgorithm, PrivateKey};
use authd::store::{NewSigningKey, Revocation, Store, Successor};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    KEK, PASSWORD, SECRET, TempDir, TestApp, admin, admin_output, admin_output_with,
    fresh_database, kid_in_state, problem, refused_line, rotate_now, server_keys, signing_keys,
    test_settings,
};
use crate::smtp_sink::{Behaviour, MailSink};

fn segment(token: &str, at: usize) -> Value {
    let part = token.split('.').nth(at).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    segment(token, 0)
}

/// The published JWK set, with the headers it must come with.
async fn jwks(app: &TestApp) -> Value {
    let response = app.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), StatusCode::OK);
    let cache = response.headers()["cache-control"].to_str().unwrap();
    assert_eq!(
        cache,
        format!("public, max-age={}", app.settings.keys.refresh_secs)
    );
    response.json().await.unwrap()
}

fn kids(set: &Value) -> Vec<String> {
    set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Verifies a token's signature against the key of the JWKS its header names, with another
/// implementation than the one that signed it.
fn independently_verifies(token: &str, set: &Value) -> bool {
    let header = header_of(token);
    let Some(jwk) = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
    else {
        return false;
    };
    let decode = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let (signing_input, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    match (jwk["kty"].as_str(), header["alg"].as_str()) {
        (Some("EC"), Some("ES256")) => {
            use p256::ecdsa::signature::Verifier;
            assert_eq!(jwk["crv"], "P-256");
            let mut point = vec![4u8];
            point.extend(decode("x"));
            point.extend(decode("y"));
            let (Ok(key), Ok(signature)) = (
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&point),
                p256::ecdsa::Signature::from_slice(&signature),
            ) else {
                return false;
            };
            key.verify(signing_input.as_bytes(), &signature).is_ok()
        }
        (Some("OKP"), Some("EdDSA")) => {
            assert_eq!(jwk["crv"], "Ed25519");
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, decode("x"))
                .verify(signing_input.as_bytes(), &signature)
                .is_ok()
        }
        _ => false,
    }
}

async fn keys_json(app: &TestApp, data_dir: &TempDir) -> Vec<Value> {
    signing_keys(&app.db_url, data_dir).await
}

async fn kid_in(app: &TestApp, data_dir: &TempDir, state: &str) -> String {
    kid_in_state(&app.db_url, data_dir, state).await
}

/// Logs in until the access token is signed by `kid` (an instance takes up a change within
/// `keys.refresh_secs`); the token. Bounded.
async fn token_signed_by(app: &TestApp, kid: &str) -> String {
    for _ in 0..60 {
        let token = app.access_token("ada@example.test").await;
        if header_of(&token)["kid"] == kid {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server never signed with {kid}");
}

async fn me_status(app: &TestApp, token: &str) -> StatusCode {
    app.get_with_token("/users/me", token).await.status()
}

#[tokio::test]
async fn tokens_carry_the_kid_of_the_current_key_and_verify_against_the_jwks_independently() {
    for algorithm in [JwtAlgorithm::Es256, JwtAlgorithm::EdDsa] {
        let app = TestApp::spawn_with(Behaviour::Accept, |s| s.jwt.algorithm = algorithm).await;
        app.register("ada@example.test", false).await;
        app.register("bob@example.test", true).await;
        let access = app.access_token("ada@example.test").await;
        let (challenge, _) = app.start_challenge("bob@example.test").await;
        let set = jwks(&app).await;
        assert_eq!(kids(&set).len(), 1, "{set}");
        let published = &set["keys"][0];
        for token in [&access, &challenge] {
            let header = header_of(token);
            assert_eq!(header["alg"], algorithm.as_str());
            assert_eq!(header["kid"], published["kid"]);
            assert!(independently_verifies(token, &set), "{algorithm:?}");
        }
        // Another byte in the claims and the other implementation refuses it too.
        let mut claims = segment(&access, 1);
        claims["sub"] = json!(uuid::Uuid::new_v4());
        let [head, _, signature]: [&str; 3] =
            access.split('.').collect::<Vec<_>>().try_into().unwrap();
        let altered = format!(
            "{head}.{}.{signature}",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert!(!independently_verifies(&altered, &set));
        assert_eq!(me_status(&app, &altered).await, StatusCode::UNAUTHORIZED);
        // RFC 7517 members only: no private part, no secret of any kind.
        let members: Vec<&str> = published
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let allowed = ["kty", "crv", "x", "y", "kid", "alg", "use"];
        assert!(members.iter().all(|m| allowed.contains(m)), "{members:?}");
        assert_eq!(published["use"], "sig");
        assert_eq!(published["alg"], algorithm.as_str());
        let text = set.to_string();
        assert!(!text.contains(SECRET) && !text.contains(KEK), "{text}");

        let response = app.get("/.well-known/oauth-authorization-server").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["cache-control"]
                .to_str()
                .unwrap()
                .starts_with("public, max-age=")
        );
        let metadata: Value = response.json().await.unwrap();
        assert_eq!(metadata["issuer"], app.settings.jwt.issuer);
        assert_eq!(
            metadata["jwks_uri"],
            format!("{}/.well-known/jwks.json", app.base)
        );
        assert_eq!(metadata["grant_types_supported"], json!([]));
        assert_eq!(metadata["response_types_supported"], json!([]));
        assert_eq!(
            metadata["authd_token_signing_alg_values_supported"],
            json!([algorithm.as_str()])
        );
        assert!(metadata.get("token_endpoint").is_none());
        assert!(metadata.get("authorization_endpoint").is_none());
    }
}

#[tokio::test]
async fn rotation_keeps_live_tokens_and_new_tokens_use_the_new_key() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.keys.refresh_secs = 1).await;
    let data_dir = TempDir::new("authd-keys");
    app.register("ada@example.test", false).await;
    let first = kid_in(&app, &data_dir, "current").await;
    let before = app.access_token("ada@example.test").await;
    assert_eq!(header_of(&before)["kid"], first);

    let made = admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let next = kid_in(&app, &data_dir, "next").await;
    assert!(made.contains(&next), "{made}");
    // Published within keys.refresh_secs, before it signs anything.
    let mut published = false;
    for _ in 0..50 {
        if kids(&jwks(&app).await).contains(&next) {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "the next key was never published");
    assert_eq!(
        header_of(&app.access_token("ada@example.test").await)["kid"],
        first,
        "a next key signs nothing"
    );

    admin(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate", "--force"],
        "",
    )
    .await;
    let after = token_signed_by(&app, &next).await;
    assert_eq!(me_status(&app, &after).await, StatusCode::OK);
    // The token signed before the rotation works until it expires: its key is retired, and
    // still published.
    assert_eq!(me_status(&app, &before).await, StatusCode::OK);
    let set = jwks(&app).await;
    assert!(independently_verifies(&before, &set) && independently_verifies(&after, &set));
    let states: Vec<(String, String)> = keys_json(&app, &data_dir)
        .await
        .into_iter()
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [(first, "retired".to_owned()), (next, "current".to_owned())]
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_at_once_and_logins_go_on_with_a_new_key() {
    // The default keys.refresh_secs (60): nothing here waits for a periodic reload.
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    app.register("ada@example.test", false).await;
    app.register("bob@example.test", true).await;
    let token = app.access_token("ada@example.test").await;
    assert_eq!(me_status(&app, &token).await, StatusCode::OK);
    let (challenge, code) = app.start_challenge("bob@example.test").await;
    let revoked = kid_in(&app, &data_dir, "current").await;

    let out = admin(&app.db_url, &data_dir, &["keys", "revoke", &revoked], "").await;
    assert!(out.contains("was current"), "{out}");
    // Remembered as verified, and still refused at the very next request.
    let refused = app.get_with_token("/users/me", &token).await;
    problem(refused, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let refused = app.submit_code(&challenge, &code).await;
    problem(refused, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // A new current key took over in the same transaction; this instance signs with it within
    // a second, and drops the revoked key from its JWKS.
    let successor = kid_in(&app, &data_dir, "current").await;
    assert_ne!(successor, revoked);
    let fresh = token_signed_by(&app, &successor).await;
    assert_eq!(me_status(&app, &fresh).await, StatusCode::OK);
    assert_eq!(kids(&jwks(&app).await), std::slice::from_ref(&successor));
    // Revoking it again changes nothing.
    let again = admin(&app.db_url, &data_dir, &["keys", "revoke", &revoked], "").await;
    assert!(again.contains("already revoked"), "{again}");
    assert_eq!(kid_in(&app, &data_dir, "current").await, successor);
}

#[tokio::test]
async fn hs256_tokens_issued_before_the_switch_stay_valid_and_no_new_one_is_accepted() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    settings.jwt.algorithm = JwtAlgorithm::Hs256;
    let hs256 = TestApp::spawn_on(settings, mail, db_url.clone()).await;
    hs256.register("ada@example.test", false).await;
    let login: Value = hs256
        .login("ada@example.test", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let old = login["access_token"].as_str().unwrap().to_owned();
    let header = header_of(&old);
    assert_eq!(header["alg"], "HS256");
    assert!(header.get("kid").is_none());
    // HS256 alone: nothing to publish.
    assert_eq!(jwks(&hs256).await, json!({"keys": []}));
    // (It keeps running: dropping it would remove a SQLite database with it.)

    // The same database and secret, now ES256.
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let settings = test_settings(&db_url, mail.port);
    assert_eq!(settings.jwt.algorithm, JwtAlgorithm::Es256);
    let es256 = TestApp::spawn_on(settings.clone(), mail, db_url).await;
    assert_eq!(me_status(&es256, &old).await, StatusCode::OK);
    let new = es256.access_token("ada@example.test").await;
    assert_eq!(header_of(&new)["alg"], "ES256");
    // The refresh token of the HS256 days goes on working.
    let refreshed = es256
        .post_json(
            "/token/refresh",
            &json!({"refresh_token": login["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    // The secret still verifies, but an HS256 token made after the switch is refused, even
    // signed with it: authd no longer issues any.
    let claims = segment(&old, 1);
    // (One issued within the second of the switch passes as one of the old ones.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let forged_later = authd::token::TokenKeys::new(SECRET.as_bytes(), &settings.jwt)
        .issue_access(
            claims["sub"].as_str().unwrap().parse().unwrap(),
            claims["sid"].as_str().unwrap().parse().unwrap(),
        )
        .unwrap();
    assert_eq!(
        me_status(&es256, &forged_later.token).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me_status(&es256, &old).await, StatusCode::OK);
}

/// Signs `header` and the claims of `genuine` with HMAC-SHA256 under `secret`.
fn hs256_forgery(header: &Value, genuine: &str, secret: &[u8]) -> String {
    let claims = segment(genuine, 1);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

/// The claims of `genuine` signed with a key authd never made, under `header`.
fn foreign_signature(header: &Value, genuine: &str, algorithm: KeyAlgorithm) -> String {
    let key = PrivateKey::generate(algorithm).unwrap();
    let mut jwt_header = jsonwebtoken::Header::new(algorithm.jwt());
    jwt_header.typ = header["typ"].as_str().map(str::to_owned);
    jwt_header.kid = header["kid"].as_str().map(str::to_owned);
    jsonwebtoken::encode(&jwt_header, &segment(genuine, 1), &key.encoding_key()).unwrap()
}

#[tokio::test]
async fn alg_confusion_none_and_unknown_keys_are_refused() {
    let app = TestApp::spawn().await;
    app.register("ada@example.test", false).await;
    let genuine = app.access_token("ada@example.test").await;
    let set = jwks(&app).await;
    let jwk = &set["keys"][0];
    let kid = jwk["kid"].as_str().unwrap();
    let mut point = vec![4u8];
    point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
    let hs256 = json!({"alg": "HS256", "typ": "at+jwt", "kid": kid});
    // The genuine claims, moved two seconds on: issued after the first key was made.
    let later = {
        let mut claims = segment(&genuine, 1);
        for name in ["iat", "exp"] {
            claims[name] = json!(claims[name].as_i64().unwrap() + 2);
        }
        format!("x.{}.x", URL_SAFE_NO_PAD.encode(claims.to_string()))
    };
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt", "kid": kid}).to_string()),
        genuine.split('.').nth(1).unwrap()
    );
    let attempts = [
        // HS256 "signed" with the public key as the secret, naming the ES256 key.
        (
            "HS256 with the JWK as secret",
            hs256_forgery(&hs256, &genuine, jwk.to_string().as_bytes()),
        ),
        (
            "HS256 with the public point as secret",
            hs256_forgery(&hs256, &genuine, &point),
        ),
        (
            "HS256 with the public point, no kid",
            hs256_forgery(&json!({"alg": "HS256", "typ": "at+jwt"}), &genuine, &point),
        ),
        ("alg none", unsigned),
        (
            "a foreign ES256 key under our kid",
            foreign_signature(&header_of(&genuine), &genuine, KeyAlgorithm::Es256),
        ),
        (
            "an unknown kid",
            foreign_signature(
                &json!({"typ": "at+jwt", "kid": "not-a-key-of-ours"}),
                &genuine,
                KeyAlgorithm::Es256,
            ),
        ),
        (
            "EdDSA naming the ES256 key",
            foreign_signature(&header_of(&genuine), &genuine, KeyAlgorithm::EdDsa),
        ),
        (
            "no kid at all",
            foreign_signature(&json!({"typ": "at+jwt"}), &genuine, KeyAlgorithm::Es256),
        ),
        (
            "the HS256 secret, issued after the switch",
            hs256_forgery(
                &json!({"alg": "HS256", "typ": "at+jwt"}),
                &later,
                SECRET.as_bytes(),
            ),
        ),
    ];
    for (what, token) in &attempts {
        let response = app.get_with_token("/users/me", token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
        problem(response, StatusCode::UNAUTHORIZED, "invalid_token").await;
    }
    assert_eq!(me_status(&app, &genuine).await, StatusCode::OK);
}

#[tokio::test]
async fn a_key_made_by_another_process_is_picked_up_at_its_first_token() {
    // No periodic reload within the test (60 s): the unknown kid makes the server look.
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    app.register("ada@example.test", false).await;
    let genuine = app.access_token("ada@example.test").await;
    rotate_now(&app.db_url, &data_dir).await;
    let claims = segment(&genuine, 1);
    // Signed as another instance that already reads the new key would sign it.
    let elsewhere = server_keys(&app.settings)
        .await
        .issue_access(
            claims["sub"].as_str().unwrap().parse().unwrap(),
            claims["sid"].as_str().unwrap().parse().unwrap(),
        )
        .unwrap();
    assert_eq!(
        header_of(&elsewhere.token)["kid"],
        kid_in(&app, &data_dir, "current").await
    );
    assert_eq!(me_status(&app, &elsewhere.token).await, StatusCode::OK);
    // Made-up kids, many and at once, are each refused.
    let forged: Vec<String> = (0..20)
        .map(|i| {
            foreign_signature(
                &json!({"typ": "at+jwt", "kid": format!("made-up-{i}")}),
                &genuine,
                KeyAlgorithm::Es256,
            )
        })
        .collect();
    // The burst may not have started within a second of the reload above: one more read at
    // most, however many kids.
    let reloads_before = unknown_kid_reloads(&app).await;
    let statuses =
        futures::future::join_all(forged.iter().map(|token| me_status(&app, token))).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED));
    let burst = unknown_kid_reloads(&app).await - reloads_before;
    assert!(burst <= 1, "{burst} reads for one burst of made-up kids");
    // Once the second is out, a made-up kid reads the keys again (and is still refused).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(me_status(&app, &forged[0]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown_kid_reloads(&app).await, reloads_before + burst + 1);
    assert_eq!(me_status(&app, &genuine).await, StatusCode::OK);
}

/// `authd_key_reloads_total{reason="unknown_kid"}` of `app`.
async fn unknown_kid_reloads(app: &TestApp) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(r#"authd_key_reloads_total{reason="unknown_kid"} "#))
        .map_or(0, |count| count.trim().parse().unwrap())
}

#[tokio::test]
async fn the_keys_commands_refuse_bad_input_with_one_line_and_change_nothing() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    let before = keys_json(&app, &data_dir).await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["state"], "current");
    assert_eq!(before[0]["algorithm"], "ES256");
    for field in ["created_at", "activated_at"] {
        assert!(before[0][field].is_string(), "{field}");
    }
    assert!(before[0]["retired_at"].is_null() && before[0]["revoked_at"].is_null());

    let no_next = admin_output(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate", "--force"],
        "",
    )
    .await;
    assert!(refused_line(no_next, "activate").contains("no next key"));
    let unknown = admin_output(&app.db_url, &data_dir, &["keys", "revoke", "nope"], "").await;
    assert!(refused_line(unknown, "revoke").contains("no signing key nope"));
    let other_kek = "ab".repeat(32);
    for args in [
        &["keys", "rotate"][..],
        &["keys", "revoke", before[0]["kid"].as_str().unwrap()],
    ] {
        let refused = admin_output_with(
            &app.db_url,
            &data_dir,
            args,
            "",
            &[("AUTHD_KEYS__ENCRYPTION_KEY", &other_kek)],
        )
        .await;
        assert!(
            refused_line(refused, "wrong KEK")
                .contains("is not the key-encryption key of this database's signing keys")
        );
    }
    // A malformed setting is refused before anything runs, as every invalid setting is (2).
    let malformed = admin_output_with(
        &app.db_url,
        &data_dir,
        &["keys", "rotate"],
        "",
        &[("AUTHD_KEYS__ENCRYPTION_KEY", "not-hex")],
    )
    .await;
    assert_eq!(malformed.status.code(), Some(2));
    let stderr = String::from_utf8(malformed.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("keys.encryption_key"), "{stderr}");
    assert_eq!(keys_json(&app, &data_dir).await, before, "nothing changed");

    // Each change is in the audit trail once, with who made it.
    rotate_now(&app.db_url, &data_dir).await;
    let retired = before[0]["kid"].as_str().unwrap();
    admin(&app.db_url, &data_dir, &["keys", "revoke", retired], "").await;
    let audit: Vec<Value> = serde_json::from_str(
        &admin(
            &app.db_url,
            &data_dir,
            &["audit", "--format", "json", "--limit", "50"],
            "",
        )
        .await,
    )
    .unwrap();
    let of = |kind: &str| {
        audit
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["detail"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let created = of("key_created");
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created
            .iter()
            .any(|d| d.starts_with("by server") && d.ends_with("as current"))
    );
    assert!(
        created
            .iter()
            .any(|d| d.starts_with("by cli") && d.ends_with("as next"))
    );
    let activated = of("key_activated");
    assert_eq!(activated.len(), 1);
    assert!(
        activated[0].contains(&format!("{retired} retired")),
        "{activated:?}"
    );
    let revoked = of("key_revoked");
    assert_eq!(revoked.len(), 1);
    assert!(
        revoked[0].starts_with(&format!("by cli: {retired} (was retired)")),
        "{revoked:?}"
    );
}

#[tokio::test]
async fn token_inspect_names_the_key_and_its_state_from_the_database_or_a_jwks() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    app.register("ada@example.test", false).await;
    let token = app.access_token("ada@example.test").await;
    let kid = kid_in(&app, &data_dir, "current").await;
    let inspect = |args: Vec<String>| {
        let (db_url, data_dir) = (&app.db_url, &data_dir);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_output(db_url, data_dir, &args, "").await
        }
    };
    let json_of = |output: &std::process::Output| -> Value {
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let base = |extra: &[&str]| {
        let mut args: Vec<String> = ["token", "inspect", token.as_str(), "--format", "json"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    };
    let from_db = inspect(base(&[])).await;
    assert!(from_db.status.success(), "{from_db:?}");
    let seen = json_of(&from_db);
    assert_eq!(
        (seen["kid"].as_str(), seen["key_state"].as_str()),
        (Some(kid.as_str()), Some("current"))
    );
    assert_eq!(seen["valid"], true);
    let table = inspect(vec!["token".into(), "inspect".into(), token.clone()]).await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains(&format!("key {kid} (current)")), "{table}");

    let file = data_dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&app).await.to_string()).unwrap();
    let url = app.url("/.well-known/jwks.json");
    for source in [file.display().to_string(), url.clone()] {
        let seen = inspect(base(&["--jwks", &source])).await;
        assert!(seen.status.success(), "{source}: {seen:?}");
        assert_eq!(json_of(&seen)["key_state"], "published", "{source}");
    }
    admin(&app.db_url, &data_dir, &["keys", "revoke", &kid], "").await;
    let revoked = inspect(base(&[])).await;
    assert_eq!(revoked.status.code(), Some(1));
    assert_eq!(json_of(&revoked)["key_state"], "revoked");
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("revoked"));
    // The file still holds the key: a service with an old copy would accept it until renewal.
    let stale = inspect(base(&["--jwks", &file.display().to_string()])).await;
    assert!(stale.status.success());
    // A JWKS that is not one, or a file that is not there: one line, exit 1.
    std::fs::write(&file, "{\"keys\": 5}").unwrap();
    for source in [file.display().to_string(), "/nonexistent/jwks.json".into()] {
        let bad = inspect(base(&["--jwks", &source])).await;
        assert_eq!(bad.status.code(), Some(1), "{source}: {bad:?}");
        assert_eq!(
            String::from_utf8_lossy(&bad.stderr).trim().lines().count(),
            1
        );
    }
}

fn stored_key(kid: &str, state: &str, at: chrono::DateTime<chrono::Utc>) -> NewSigningKey {
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
async fn the_store_moves_states_as_rotation_says_and_keeps_one_key_current() {
    let db_url = fresh_database().await;
    let settings = test_settings(&db_url, 25);
    let store = Store::connect_lazy(&settings).unwrap();
    let t0 = chrono::Utc::now();
    store
        .insert_signing_key(&stored_key("k1", "current", t0))
        .await
        .unwrap();
    // A second current key is refused by the database.
    assert!(
        store
            .insert_signing_key(&stored_key("k2", "current", t0))
            .await
            .is_err()
    );
    // Only a next key is activated.
    assert!(!store.activate_signing_key("k1", t0).await.unwrap());
    assert!(!store.activate_signing_key("nope", t0).await.unwrap());
    let t1 = t0 + chrono::Duration::seconds(1);
    store
        .insert_signing_key(&stored_key("k2", "next", t1))
        .await
        .unwrap();
    store
        .insert_signing_key(&stored_key("k3", "next", t1 + chrono::Duration::seconds(1)))
        .await
        .unwrap();
    let t2 = t1 + chrono::Duration::seconds(5);
    assert!(store.activate_signing_key("k2", t2).await.unwrap());
    let states = |keys: &[authd::store::SigningKeyRecord]| {
        keys.iter()
            .map(|k| (k.kid.clone(), k.state.clone()))
            .collect::<Vec<_>>()
    };
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(
        states(&keys),
        [
            ("k1".into(), "retired".into()),
            ("k2".into(), "current".into()),
            ("k3".into(), "next".into())
        ]
    );
    assert_eq!(keys[0].retired_at, keys[1].activated_at);
    PrivateKey::unseal(&keys[1].sealed_private, &[1; 32], "k2", KeyAlgorithm::Es256).unwrap();

    let spare = stored_key("spare", "current", t2);
    let done = |revocation: Revocation| match revocation {
        Revocation::Done(revoked) => revoked,
        other => panic!("not revoked: {other:?}"),
    };
    // A retired key: revoked, nothing else moves (a successor given is not used).
    let revoked = done(
        store
            .revoke_signing_key("k1", t2, Some(Successor::New(&spare)))
            .await
            .unwrap(),
    );
    assert_eq!(
        (revoked.previous_state.as_str(), revoked.successor),
        ("retired", None)
    );
    assert_eq!(
        done(store.revoke_signing_key("k1", t2, None).await.unwrap()).previous_state,
        "revoked"
    );
    assert_eq!(
        store.revoke_signing_key("nope", t2, None).await.unwrap(),
        Revocation::NoSuchKey
    );
    // The current key needs a successor, and one that is still next: else nothing changes.
    assert_eq!(
        store.revoke_signing_key("k2", t2, None).await.unwrap(),
        Revocation::NeedsSuccessor
    );
    assert_eq!(
        store
            .revoke_signing_key("k2", t2, Some(Successor::Next("k1")))
            .await
            .unwrap(),
        Revocation::Changed
    );
    assert_eq!(
        store.signing_key_state("k2").await.unwrap().as_deref(),
        Some("current")
    );
    // The next key named follows it...
    let revoked = done(
        store
            .revoke_signing_key("k2", t2, Some(Successor::Next("k3")))
            .await
            .unwrap(),
    );
    assert_eq!(revoked.successor.as_deref(), Some("k3"));
    // ...or a new key does.
    let revoked = done(
        store
            .revoke_signing_key("k3", t2, Some(Successor::New(&spare)))
            .await
            .unwrap(),
    );
    assert_eq!(revoked.successor.as_deref(), Some("spare"));
    let keys = store.list_signing_keys().await.unwrap();
    assert_eq!(
        states(&keys),
        [
            ("k1".into(), "revoked".into()),
            ("k2".into(), "revoked".into()),
            ("k3".into(), "revoked".into()),
            ("spare".into(), "current".into())
        ]
    );
    assert_eq!(
        store.signing_key_state("k2").await.unwrap().as_deref(),
        Some("revoked")
    );
    assert_eq!(
        store.signing_key_state("spare").await.unwrap().as_deref(),
        Some("current")
    );
    assert_eq!(store.signing_key_state("nope").await.unwrap(), None);
}

#[tokio::test]
async fn a_retired_key_is_dropped_once_every_token_it_signed_has_expired() {
    let app = TestApp::spawn_with(Behaviour::Accept, |s| s.keys.refresh_secs = 1).await;
    let data_dir = TempDir::new("authd-keys");
    let store = Store::connect_lazy(&app.settings).unwrap();
    let first = kid_in(&app, &data_dir, "current").await;
    // A next key activated long ago: the first key retired two hours back.
    let long_ago = chrono::Utc::now() - chrono::Duration::hours(2);
    let key = authd::keys::new_signing_key(
        &authd::keys::load_key_encryption_key(&app.settings, false).unwrap(),
        KeyAlgorithm::Es256,
        authd::keys::KeyState::Next,
        long_ago,
    )
    .unwrap();
    store.insert_signing_key(&key).await.unwrap();
    assert!(
        store
            .activate_signing_key(&key.kid, long_ago)
            .await
            .unwrap()
    );
    // Neither published nor accepted any more, even before pruning removes the row.
    let mut dropped = false;
    for _ in 0..50 {
        if kids(&jwks(&app).await) == [key.kid.clone()] {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the expired retired key is still published");
    let pruned: Value = serde_json::from_str(
        &admin(&app.db_url, &data_dir, &["prune", "--format", "json"], "").await,
    )
    .unwrap();
    assert_eq!(pruned["keys"], 1);
    let left: Vec<String> = keys_json(&app, &data_dir)
        .await
        .into_iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, std::slice::from_ref(&key.kid));
    assert!(!left.contains(&first));
}

/// `authd` with only a database and a data directory: no key-encryption key, nothing else
/// from the environment.
async fn bare_admin(db_url: &str, data_dir: &TempDir, args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTHD_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("DATABASE_URL")
        .env("AUTHD_DATA_DIR", data_dir.path())
        .env("AUTHD_DATABASE__ACQUIRE_TIMEOUT_SECS", "20")
        .args(["--database-url", db_url])
        .args(args)
        .stdin(std::process::Stdio::null());
    tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.output().unwrap()),
    )
    .await
    .expect("the command finishes")
    .unwrap()
}

#[tokio::test]
async fn the_commands_never_make_a_kek_of_their_own_and_revoke_what_they_can_without_one() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    let current = kid_in(&app, &data_dir, "current").await;
    let bare = TempDir::new("authd-keys-bare");
    for args in [
        &["keys", "rotate"][..],
        &["keys", "rotate", "--activate", "--force"],
    ] {
        let refused = bare_admin(&app.db_url, &bare, args).await;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("keys.encryption_key is not set"),
            "{stderr}"
        );
        assert!(
            !bare.path().join("key-encryption-key").exists(),
            "{args:?} generated a key-encryption key"
        );
    }
    // The current key needs the KEK: only a key it opens may take over. Refused.
    let refused = bare_admin(&app.db_url, &bare, &["keys", "revoke", &current]).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("revoking the current key needs keys.encryption_key")
    );
    assert_eq!(kid_in(&app, &data_dir, "current").await, current);
    // A next key is revoked without one.
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let next = kid_in(&app, &data_dir, "next").await;
    let done = bare_admin(&app.db_url, &bare, &["keys", "revoke", &next]).await;
    assert!(done.status.success(), "{done:?}");
    let states: Vec<Value> = keys_json(&app, &data_dir).await;
    assert_eq!(states[1]["state"], "revoked");
    assert!(!bare.path().join("key-encryption-key").exists());
    // Nor does a wrong one stand in the way of revoking a key that needs no successor.
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let next = kid_in(&app, &data_dir, "next").await;
    let done = admin_output_with(
        &app.db_url,
        &data_dir,
        &["keys", "revoke", &next],
        "",
        &[("AUTHD_KEYS__ENCRYPTION_KEY", &"ab".repeat(32))],
    )
    .await;
    assert!(done.status.success(), "{done:?}");
}

#[tokio::test]
async fn a_next_key_sealed_under_another_kek_is_never_activated_by_the_switch() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    settings.jwt.algorithm = JwtAlgorithm::Hs256;
    let hs256 = TestApp::spawn_on(settings, mail, db_url.clone()).await;
    let data_dir = TempDir::new("authd-keys");
    // The HS256 server recorded its KEK's check value: a command with another KEK is refused,
    // though the table is empty.
    let other_kek = "cd".repeat(32);
    let refused = admin_output_with(
        &db_url,
        &data_dir,
        &["keys", "rotate"],
        "",
        &[("AUTHD_KEYS__ENCRYPTION_KEY", &other_kek)],
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(signing_keys(&db_url, &data_dir).await.is_empty());
    // A database from before the check value may still hold such a key: planted here.
    let stray = authd::keys::new_signing_key(
        &[0xcd; 32],
        KeyAlgorithm::Es256,
        authd::keys::KeyState::Next,
        chrono::Utc::now(),
    )
    .unwrap();
    Store::connect_lazy(&hs256.settings)
        .unwrap()
        .insert_signing_key(&stray)
        .await
        .unwrap();
    let stray = stray.kid;
    // The switch to ES256 starts, with a key of its own; the stray key stays next.
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let es256 = TestApp::spawn_on(test_settings(&db_url, mail.port), mail, db_url).await;
    let current = kid_in(&es256, &data_dir, "current").await;
    assert_ne!(current, stray);
    assert_eq!(kid_in(&es256, &data_dir, "next").await, stray);
    es256.register("ada@example.test", false).await;
    assert_eq!(
        header_of(&es256.access_token("ada@example.test").await)["kid"],
        current
    );
    // Activating it is refused with the servers' KEK (there is no next key it opens);
    // revoking it needs none.
    let refused = admin_output(
        &es256.db_url,
        &data_dir,
        &["keys", "rotate", "--activate", "--force"],
        "",
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("there is no next key to activate"));
    assert_eq!(kid_in(&es256, &data_dir, "current").await, current);
    admin(&es256.db_url, &data_dir, &["keys", "revoke", &stray], "").await;
    drop(hs256);
}

#[tokio::test]
async fn activation_waits_until_verifiers_can_have_the_key_unless_forced() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    admin(&app.db_url, &data_dir, &["keys", "rotate"], "").await;
    let before = keys_json(&app, &data_dir).await;
    let early = admin_output(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate"],
        "",
    )
    .await;
    assert_eq!(early.status.code(), Some(1), "{early:?}");
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(
        stderr.contains("less than 2 x keys.refresh_secs ago"),
        "{stderr}"
    );
    assert_eq!(keys_json(&app, &data_dir).await, before, "nothing changed");
    // Under HS256 the servers sign with the secret: activating is theirs to do.
    let hs256 = admin_output_with(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate", "--force"],
        "",
        &[("AUTHD_JWT__ALGORITHM", "HS256")],
    )
    .await;
    assert_eq!(hs256.status.code(), Some(1), "{hs256:?}");
    assert_eq!(keys_json(&app, &data_dir).await, before, "nothing changed");
    // The wait is 2 x keys.refresh_secs (120 s here) from the next key's creation, which is
    // moved back instead of waited for: 110 s ago is still early...
    let next = kid_in(&app, &data_dir, "next").await;
    let minute = [("AUTHD_KEYS__REFRESH_SECS", "60")];
    app.db
        .exec(
            "UPDATE signing_keys SET created_at = created_at - interval '110 seconds' WHERE state = 'next'",
            "UPDATE signing_keys SET created_at = created_at - 110000000 WHERE state = 'next'",
        )
        .await;
    let still_early = admin_output_with(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate"],
        "",
        &minute,
    )
    .await;
    assert_eq!(still_early.status.code(), Some(1), "{still_early:?}");
    assert_eq!(kid_in(&app, &data_dir, "next").await, next);
    // ...130 s ago is past the wait: it activates without --force.
    app.db
        .exec(
            "UPDATE signing_keys SET created_at = created_at - interval '20 seconds' WHERE state = 'next'",
            "UPDATE signing_keys SET created_at = created_at - 20000000 WHERE state = 'next'",
        )
        .await;
    let waited = admin_output_with(
        &app.db_url,
        &data_dir,
        &["keys", "rotate", "--activate"],
        "",
        &minute,
    )
    .await;
    assert!(waited.status.success(), "{waited:?}");
    assert_eq!(kid_in(&app, &data_dir, "current").await, next);
}

#[tokio::test]
async fn a_key_published_ahead_on_hs256_is_the_one_the_switch_activates() {
    let db_url = fresh_database().await;
    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let mut settings = test_settings(&db_url, mail.port);
    settings.jwt.algorithm = JwtAlgorithm::Hs256;
    settings.keys.refresh_secs = 1;
    let hs256 = TestApp::spawn_on(settings, mail, db_url.clone()).await;
    let data_dir = TempDir::new("authd-keys");
    hs256.register("ada@example.test", false).await;
    admin(&db_url, &data_dir, &["keys", "rotate"], "").await;
    let ahead = kid_in(&hs256, &data_dir, "next").await;
    // Published while HS256 still signs (within keys.refresh_secs), so verifiers have it
    // before the switch.
    let mut published = Vec::new();
    for _ in 0..50 {
        published = kids(&jwks(&hs256).await);
        if !published.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(published, std::slice::from_ref(&ahead));
    let issued_after_rotate = hs256.access_token("ada@example.test").await;
    assert_eq!(header_of(&issued_after_rotate)["alg"], "HS256");

    let mail = MailSink::start(Behaviour::Accept).await.unwrap();
    let es256 = TestApp::spawn_on(test_settings(&db_url, mail.port), mail, db_url).await;
    let keys = keys_json(&es256, &data_dir).await;
    assert_eq!(keys.len(), 1, "no second key was made: {keys:?}");
    assert_eq!(
        (keys[0]["kid"].as_str(), keys[0]["state"].as_str()),
        (Some(ahead.as_str()), Some("current"))
    );
    assert_eq!(
        header_of(&es256.access_token("ada@example.test").await)["kid"],
        ahead
    );
    // The HS256 token issued after the rotation (and before the switch) still works.
    assert_eq!(
        me_status(&es256, &issued_after_rotate).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_jwks_with_keys_of_other_kinds_still_verifies_with_the_usable_ones() {
    let app = TestApp::spawn().await;
    let data_dir = TempDir::new("authd-keys");
    app.register("ada@example.test", false).await;
    let token = app.access_token("ada@example.test").await;
    let mut set = jwks(&app).await;
    let ours = set["keys"][0].clone();
    let mut without_alg = ours.clone();
    without_alg.as_object_mut().unwrap().remove("alg");
    let mut encryption = ours.clone();
    encryption["use"] = json!("enc");
    encryption["kid"] = json!("enc-key");
    let mut mislabelled = ours.clone();
    mislabelled["alg"] = json!("EdDSA");
    mislabelled["kid"] = json!("mislabelled");
    set["keys"] = json!([
        {"kty": "RSA", "kid": "rsa", "n": "AQAB", "e": "AQAB", "alg": "RS256"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
        {"kty": "EC", "crv": "P-256", "kid": "broken", "x": "", "y": "", "alg": "ES256"},
        {"kty": "EC", "crv": "P-256", "kid": "off-curve", "x": ours["x"], "y": URL_SAFE_NO_PAD.encode([7u8; 32]), "alg": "ES256"},
        encryption,
        mislabelled,
        without_alg,
    ]);
    let file = data_dir.path().join("jwks.json");
    std::fs::write(&file, set.to_string()).unwrap();
    let path = file.display().to_string();
    let seen = admin_output(
        &app.db_url,
        &data_dir,
        &[
            "token", "inspect", &token, "--jwks", &path, "--format", "json",
        ],
        "",
    )
    .await;
    assert!(seen.status.success(), "{seen:?}");
    // Only an encryption key, or a point off the curve, carries the kid: no key verifies it.
    let mut only = ours.clone();
    only["use"] = json!("enc");
    let mut off_curve = ours.clone();
    off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    set["keys"] = json!([only, off_curve]);
    std::fs::write(&file, set.to_string()).unwrap();
    let refused = admin_output(
        &app.db_url,
        &data_dir,
        &["token", "inspect", &token, "--jwks", &path],
        "",
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("unknown"));
}
