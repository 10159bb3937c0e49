//! Tests of rules that hold on either backend; run on PostgreSQL and on SQLite.

mod api;
mod cli;
mod imported_hashes;
mod input;
mod key_trust;
mod keys;
mod limits;
mod lockout;
mod mfa;
mod otp_flow;
mod passkeys;
mod passkeys_review;
pub mod process;
mod prune;
mod recovery;
mod sessions;
mod timing;
mod transfer;
mod transfer_review;
