//! An example resource server: a service of its own that accepts authd's access tokens, checked
//! with the public keys authd publishes at `/.well-known/jwks.json`. It never talks to authd per
//! request, only to refresh that key set.
//!
//! ```sh
//! cargo run -p authd-example-resource-server -- \
//!     --listen 127.0.0.1:8080 --jwks-url http://127.0.0.1:5050/.well-known/jwks.json
//! curl -H "authorization: Bearer $ACCESS_TOKEN" 127.0.0.1:8080/hello
//! ```
//!
//! The workspace builds reqwest without TLS, so the JWKS URL here is `http://` (loopback). Fetch
//! it over `https://` anywhere else (reqwest's `rustls` feature): whoever can change the key set
//! can sign tokens for us.

mod jwks;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::jwks::Jwks;

/// Serves `GET /hello` to callers with a valid authd access token.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// authd's key set, e.g. http://127.0.0.1:5050/.well-known/jwks.json (the `jwks_uri` of
    /// /.well-known/oauth-authorization-server).
    #[arg(long)]
    jwks_url: String,
    /// The `iss` authd puts in its tokens (its `jwt.issuer`).
    #[arg(long, default_value = "authd")]
    issuer: String,
    /// The `aud` tokens must carry for this service (authd's `jwt.audience`).
    #[arg(long, default_value = "authd")]
    audience: String,
}

/// What every handler needs to check a token.
struct Verifier {
    jwks: Arc<Jwks>,
    issuer: String,
    audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Does nothing where another provider is already the default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let verifier = Verifier {
        jwks: Jwks::start(args.jwks_url)?,
        issuer: args.issuer,
        audience: args.audience,
    };
    let app = Router::new()
        .route("/hello", get(hello))
        .with_state(Arc::new(verifier));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// A handler asks for a `Caller` to require a valid access token.
async fn hello(caller: Caller) -> Json<Value> {
    Json(json!({ "sub": caller.sub, "kid": caller.kid }))
}

/// The user a verified access token speaks for, and the key that signed it.
struct Caller {
    sub: String,
    kid: String,
}

/// The claims we read; `exp`, `iss` and `aud` are checked by `Validation`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
}

impl FromRequestParts<Arc<Verifier>> for Caller {
    type Rejection = Refusal;

    async fn from_request_parts(
        parts: &mut Parts,
        verifier: &Arc<Verifier>,
    ) -> Result<Self, Refusal> {
        let token = bearer_token(parts).ok_or(Refusal("missing bearer token"))?;
        verifier.verify(token).await.map_err(Refusal)
    }
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Verifier {
    async fn verify(&self, token: &str) -> Result<Caller, &'static str> {
        let header = decode_header(token).map_err(|_| "malformed token")?;
        // authd signs its challenge tokens (the second login step, before the code) with the
        // same keys: only `typ` (and `aud`) tell them from access tokens.
        if !header
            .typ
            .as_deref()
            .is_some_and(|typ| typ.eq_ignore_ascii_case("at+jwt"))
        {
            return Err("not an access token");
        }
        // RFC 7515: a `crit` extension we do not understand means the token is not for us.
        if header.crit.is_some() {
            return Err("unsupported crit header");
        }
        let kid = header.kid.ok_or("no kid in header")?;
        let key = self.jwks.find(&kid).await.ok_or("unknown kid")?;
        // Only the key's own algorithm: a token claiming another `alg` is refused by `decode`.
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = 0; // as authd itself: expired means expired
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Claims>(token, &key.key, &validation).map_err(|e| refusal(e.kind()))?;
        Ok(Caller {
            sub: data.claims.sub,
            kid,
        })
    }
}

/// Short reasons, safe to show a client: which check failed, not the library's error text.
fn refusal(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "algorithm is not the key's",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
        _ => "malformed token",
    }
}

/// 401 with the reason, and the `WWW-Authenticate` challenge of RFC 6750.
struct Refusal(&'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let challenge = [(WWW_AUTHENTICATE, r#"Bearer error="invalid_token""#)];
        let body = Json(json!({ "error": "invalid_token", "reason": self.0 }));
        (StatusCode::UNAUTHORIZED, challenge, body).into_response()
    }
}
