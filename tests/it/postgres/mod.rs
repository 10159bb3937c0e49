//! Tests that need PostgreSQL itself; run on PostgreSQL only.

mod observability;
mod resilience;
