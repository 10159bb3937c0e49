//! The one integration-test binary: real PostgreSQL or SQLite, real HTTP server, real SMTP
//! conversation.
//!
//! Where a test runs is declared by the module it is in:
//! - `both`: the rule holds whatever the database is. `make test` runs these on PostgreSQL and
//!   again on SQLite (`AUTHD_TEST_BACKEND=sqlite cargo test --test it -- both::`).
//! - `postgres`: needs PostgreSQL itself (a server to stop and restart, several instances on one
//!   database, pool figures), so it runs on PostgreSQL only.
//! - `neutral`: the database plays no part (the HTTP layer against hostile clients, a start with
//!   no configuration, which is SQLite whatever the suite's backend), so a second pass would
//!   test nothing new: these run once, in the PostgreSQL pass.

mod helpers;
mod smtp_sink;

pub mod both;
mod neutral;
mod postgres;
