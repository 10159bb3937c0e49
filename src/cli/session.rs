//! `authd session ...`: list and end sessions, through the same use cases as the API.

use anyhow::Context;
use clap::{Args, Subcommand};
use uuid::Uuid;

use super::{EXIT_CODES, OutputFormat, UserError, format_utc, new_table, with_auth};
use crate::auth::Actor;
use crate::config::Settings;
use crate::domain::Email;
use crate::error::Error;

/// Most sessions `session list` prints; `--limit` asks for fewer or more.
const DEFAULT_LIMIT: u32 = 1000;

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List live sessions, newest first: id, user, created, last used, expiry, address, agent.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// End one session by id, or every session of a user with --user. Its access tokens are
    /// refused from the next request on, on every instance.
    #[command(after_help = EXIT_CODES)]
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only the sessions of this user.
    #[arg(long, value_name = "EMAIL")]
    user: Option<String>,
    /// Output format: a table, or a JSON array of sessions.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
    /// Show at most N sessions.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT,
          value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The session's id (from `authd session list` or `GET /sessions`).
    #[arg(required_unless_present = "user", conflicts_with = "user")]
    id: Option<String>,
    /// End every session of this user instead.
    #[arg(long, value_name = "EMAIL")]
    user: Option<String>,
}

/// Runs one `authd session` subcommand.
pub async fn run(command: SessionCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        SessionCommand::List(args) => list(args, settings).await,
        SessionCommand::Revoke(args) => revoke(args, settings).await,
    }
}

fn parse_email(raw: &str) -> Result<Email, Error> {
    Email::parse(raw).map_err(|message| Error::validation("user", message))
}

async fn list(args: ListArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = args.user.as_deref().map(parse_email).transpose()?;
    let sessions = with_auth(settings, async |auth| {
        let user = match &email {
            Some(email) => Some(auth.find_user(email).await?),
            None => None,
        };
        auth.list_sessions(user.as_ref(), args.limit)
            .await
            .context("cannot list sessions")
    })
    .await?;
    match args.format {
        OutputFormat::Json => println!("{}", super::to_json(&sessions)?),
        OutputFormat::Table if sessions.is_empty() => println!("no live sessions"),
        OutputFormat::Table => {
            let mut table = new_table();
            table.set_header([
                "id",
                "user",
                "created",
                "last used",
                "expires",
                "address",
                "user agent",
            ]);
            for s in &sessions {
                table.add_row([
                    s.id.to_string(),
                    s.email.clone(),
                    format_utc(s.created_at),
                    format_utc(s.last_used_at),
                    format_utc(s.expires_at),
                    s.client_ip.clone().unwrap_or_else(|| "-".into()),
                    s.user_agent.clone().unwrap_or_else(|| "-".into()),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

async fn revoke(args: RevokeArgs, settings: &Settings) -> anyhow::Result<()> {
    match (args.id, args.user) {
        (Some(id), None) => {
            let id = Uuid::parse_str(id.trim())
                .map_err(|_| UserError(format!("{id:?} is not a session id")))?;
            with_auth(settings, async |auth| {
                auth.revoke_session(id, Actor::Cli)
                    .await
                    .with_context(|| format!("cannot revoke session {id}"))
            })
            .await?;
            println!("session {id} ended");
        }
        (None, Some(user)) => {
            let email = parse_email(&user)?;
            let ended = with_auth(settings, async |auth| {
                auth.revoke_user_sessions(&email, Actor::Cli)
                    .await
                    .with_context(|| format!("cannot revoke the sessions of {email}"))
            })
            .await?;
            println!("{ended} sessions of {email} ended");
        }
        _ => {
            return Err(UserError("give a session id or --user EMAIL, not both".into()).into());
        }
    }
    Ok(())
}
