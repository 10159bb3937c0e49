//! `authd audit`: read the security audit trail; `authd prune`: delete what has expired.

use anyhow::Context;
use clap::Args;

use super::{OutputFormat, format_utc, new_table, with_auth};
use crate::audit::{EventQuery, RecordedEvent};
use crate::config::Settings;
use crate::domain::Email;
use crate::error::Error;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only events about this email address (any letter case).
    #[arg(long, value_name = "EMAIL")]
    user: Option<String>,
    /// Show at most N events, newest first.
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    limit: u32,
    /// Output format: a table, or a JSON array of events.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub async fn run(args: AuditArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = args
        .user
        .as_deref()
        .map(Email::parse)
        .transpose()
        .map_err(|message| Error::validation("user", message))?;
    let query = EventQuery {
        email: email.map(|e| e.as_str().to_owned()),
        limit: args.limit,
    };
    let events = with_auth(settings, async |auth| {
        auth.list_events(&query)
            .await
            .context("cannot read the audit trail")
    })
    .await?;
    match args.format {
        OutputFormat::Table if events.is_empty() => println!("no events"),
        OutputFormat::Table => println!("{}", events_table(&events)),
        OutputFormat::Json => println!("{}", super::to_json(&events)?),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Output format: a line, or a JSON object of the counts.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

pub async fn prune(args: PruneArgs, settings: &Settings) -> anyhow::Result<()> {
    let pruned = with_auth(settings, async |auth| {
        auth.prune(true)
            .await
            .context("cannot prune")?
            .context("the pruning lock was not granted")
    })
    .await?;
    match args.format {
        OutputFormat::Table => println!(
            "removed {} expired challenges, {} expired account codes, {} expired passkey ceremonies, {} ended sessions, {} idle throttle rows, {} audit events older than {} days, {} retired signing keys past their tokens' expiry",
            pruned.challenges,
            pruned.account_codes,
            pruned.ceremonies,
            pruned.sessions,
            pruned.throttles,
            pruned.events,
            settings.audit.retention_days,
            pruned.keys
        ),
        OutputFormat::Json => println!("{}", super::to_json(&pruned)?),
    }
    Ok(())
}

fn events_table(events: &[RecordedEvent]) -> super::Table {
    let mut table = new_table();
    table.set_header(["time", "event", "outcome", "email", "client", "detail"]);
    for event in events {
        table.add_row([
            format_utc(event.at),
            event.kind.clone(),
            event.outcome.clone(),
            event.email.clone().unwrap_or_default(),
            event.client_ip.clone().unwrap_or_default(),
            event.detail.clone().unwrap_or_default(),
        ]);
    }
    table
}
