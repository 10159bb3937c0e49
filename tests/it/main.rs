//! The one integration-test binary: real Postgres, real HTTP server, real SMTP conversation.

mod helpers;
mod smtp_sink;

mod api;
mod cli;
mod hostile;
mod input;
mod limits;
mod lockout;
mod observability;
mod otp_flow;
mod process;
mod prune;
mod resilience;
