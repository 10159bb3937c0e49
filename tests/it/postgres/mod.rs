//! Tests that need PostgreSQL itself; run on PostgreSQL only.

mod instances;
mod observability;
mod resilience;
