//! The HTTP door: routes and handlers, the envelope around every request, the server's
//! lifecycle. It is handed a built `Auth` (see `crate::app`) and calls its methods.

/// The client's address: the peer, or a trusted proxy's header.
pub mod client;
/// The envelope around every request: request id, panic guard, headers, access log, metrics.
pub mod envelope;
/// `ApiError`: core errors as problem+json.
pub mod error;
/// Extractors whose failures are problem+json.
pub mod extract;
/// Route handlers: HTTP to `Auth` calls and back.
pub mod handlers;
/// The per-address request limit and the connection caps.
pub mod limits;
/// Handlers of the second factors: authenticator apps and recovery codes.
pub mod mfa;
/// The OpenAPI document.
pub mod openapi;
/// The HTML pages the emailed links open.
pub mod pages;
/// Passkeys: the WebAuthn ceremonies, listing and removing.
pub mod passkeys;
/// Handlers of the account lifecycle: verification, reset, password and email change.
pub mod recovery;
/// The route table and the state its handlers share.
pub mod routes;
/// The accept loop, connection deadlines and graceful shutdown.
pub mod server;

pub use envelope::{HandlerLogs, HttpService, with_common_layers};
pub use routes::{AppParts, AppState, MAX_BODY_BYTES, metrics_router, router};
