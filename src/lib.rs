//! authd: email and password login with an optional emailed one-time code.
//!
//! One core, three doors: the HTTP API (`http`), the admin command line (`cli`) and the tests
//! all call the same use cases in `auth`.

/// The composition root: builds the core and runs the server around it.
pub mod app;
/// The security audit trail's writer: events queued off the request path, written in batches.
pub mod audit;
/// The use cases: register, log in, exchange a code, manage users.
pub mod auth;
/// The admin command line: clap types and one function per subcommand.
pub mod cli;
/// Settings: layered loading and checks.
pub mod config;
/// Input newtypes that are valid by construction, and the public `User`.
pub mod domain;
/// The core error type.
pub mod error;
/// Security events: the kinds the audit trail records, their outcomes, and how it is queried.
pub mod events;
/// Private files and directories (0600/0700) for secrets and data.
mod files;
/// The HTTP API: routes, handlers, the request envelope, the server, problem+json, OpenAPI.
pub mod http;
/// Key material: the key-encryption key, the HS256 secret, signing key pairs, the key set.
pub mod keys;
/// Outgoing mail.
pub mod mail;
/// Prometheus metrics in an app-owned registry.
pub mod metrics;
/// bcrypt (its own, yielding implementation) on a bounded pool off the async workers, and the
/// imported hashes (argon2id, pbkdf2_sha256) it verifies until a login replaces them.
pub mod password;
/// The password policy: refuses the most common passwords.
pub mod policy;
/// Pruning of expired rows, in the background and on demand.
pub mod prune;
/// Database access.
pub mod store;
/// Tokens: access and challenge JWTs and their inspection, refresh tokens, one-time codes.
pub mod token;

pub use config::Settings;
pub use error::{Error, Result};

/// Makes ring the process's TLS crypto provider (rustls needs one chosen; reqwest is built
/// without its own). Safe to call more than once: later calls change nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    keys::crypto::install();
}
