//! Tests of rules that do not touch the database at all, or touch it the same way whatever it
//! is: the HTTP layer against hostile clients, and `authd serve` with no configuration (always
//! SQLite) or refusing a production configuration before it opens a database; and the headless
//! browser harness the page tests use, against a site of its own. Run once, in the PostgreSQL
//! pass.

mod browser;
mod hostile;
mod zero_setup;
