//! Tests of rules that do not touch the database at all, or touch it the same way whatever it
//! is: the HTTP layer against hostile clients, and `authd serve` with no configuration (always
//! SQLite) or refusing a production configuration before it opens a database; the headless
//! browser harness against a site of its own, authd's pages in that browser, passkey
//! ceremonies between that browser, or testkit's software authenticator, and authd's relying
//! party, and authd's passkeys page there. Run once, in the PostgreSQL pass.

mod browser;
mod hostile;
mod pages;
mod passkeys;
mod passkeys_page;
mod soft_passkey;
mod zero_setup;
