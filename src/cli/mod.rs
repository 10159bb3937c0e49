//! The command line: clap types, and one function per subcommand.

mod audit;
mod healthcheck;
mod keys;
mod output;
mod session;
pub(crate) mod token;
mod transfer;
mod user;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub(crate) use self::output::{Table, printable, to_json};
use crate::app::{self, App, Door};
use crate::auth::Auth;
use crate::config::Settings;
use crate::error::Error;

const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the input is wrong or was refused (bad arguments, invalid email, duplicate, unknown user
     or session, invalid token, a deletion not confirmed, no database where the settings
     point: only serve, migrate and user add create one)
  2  the system failed (database unreachable, bad configuration)";

/// authd: a small, self-hosted login server with emailed one-time codes.
#[derive(Debug, Parser)]
#[command(name = "authd", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Configuration file, layered over config/default.toml and under AUTHD_* variables.
    #[arg(long, global = true, env = "AUTHD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Database URL, overriding the configuration file and AUTHD_DATABASE__URL.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API until SIGINT or SIGTERM.
    Serve,
    /// Apply pending database migrations (safe to run again).
    Migrate,
    /// Print the OpenAPI document (the content of openapi.json).
    Openapi,
    /// Manage users directly in the database.
    #[command(subcommand)]
    User(user::UserCommand),
    /// List and end sessions (logins) directly in the database.
    #[command(subcommand)]
    Session(session::SessionCommand),
    /// List, rotate and revoke the signing keys directly in the database.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Inspect tokens: decode one and verify it with the database's keys or a JWKS.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Exit 0 when the server answers GET /healthz with 200 (for container health checks).
    #[command(after_help = EXIT_CODES)]
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Read the security audit trail (logins, codes, locks, admin changes), newest first.
    #[command(after_help = EXIT_CODES)]
    Audit(audit::AuditArgs),
    /// Delete what has expired now (the server also does it every audit.prune_interval_secs):
    /// expired challenges and account codes, ended sessions, idle throttle rows, audit events
    /// older than audit.retention_days, retired keys past their tokens' expiry.
    #[command(after_help = EXIT_CODES)]
    Prune(audit::PruneArgs),
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// JSON for scripts, in the same shapes the HTTP API uses.
    Json,
}

impl Command {
    /// Whether this command is a long-running server (chatty logs) or a one-shot tool (quiet logs).
    pub fn is_server(&self) -> bool {
        matches!(self, Command::Serve)
    }
}

impl Cli {
    /// Parses the command line. Usage errors exit with 1 (the input is wrong), not clap's 2,
    /// which this tool reserves for system failures; `--help` and `--version` exit with 0.
    pub fn parse_or_exit() -> Cli {
        Cli::try_parse().unwrap_or_else(|err| {
            let _ = err.print();
            std::process::exit(if err.use_stderr() { 1 } else { 0 })
        })
    }
}

/// Whether prompts can be shown: input comes from a terminal and prompts can be drawn on one.
pub(crate) fn is_interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// A timestamp as the tables show it: `2025-01-31 09:15:00 UTC`.
pub(crate) fn format_utc(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An empty table in the house style; every cell put in it is escaped for the terminal.
pub(crate) fn new_table() -> Table {
    Table::new()
}

/// A refusal caused by the user's input: exit code 1 rather than 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// Exit code for an error: 1 when the user's input was wrong or refused, 2 when the system failed.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    let user_fault = err.chain().any(|cause| {
        cause.downcast_ref::<UserError>().is_some()
            || cause.downcast_ref::<crate::store::NoDatabase>().is_some()
            || cause
                .downcast_ref::<Error>()
                .is_some_and(|e| !matches!(e, Error::Unavailable(_) | Error::Internal(_)))
    });
    ExitCode::from(if user_fault { 1 } else { 2 })
}

/// Loads settings for the command, with `--database-url` on top.
pub fn load_settings(cli: &Cli) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    if let Some(url) = &cli.database_url {
        settings.database.url = url.clone().into();
    }
    Ok(settings)
}

/// Runs the parsed command to completion with the settings `load_settings` gave.
pub async fn run(cli: Cli, settings: anyhow::Result<Settings>) -> anyhow::Result<()> {
    if let Command::Openapi = cli.command {
        print!("{}", crate::http::openapi::openapi_json());
        return Ok(());
    }
    let settings = settings?;
    match cli.command {
        Command::Serve => serve(&settings).await,
        Command::Migrate => migrate(&settings).await,
        Command::User(command) => user::run(command, &settings).await,
        Command::Session(command) => session::run(command, &settings).await,
        Command::Keys(command) => keys::run(command, &settings).await,
        Command::Token(command) => token::run(command, &settings).await,
        Command::Audit(args) => audit::run(args, &settings).await,
        Command::Prune(args) => audit::prune(args, &settings).await,
        Command::Healthcheck(args) => healthcheck::run(args, &settings).await,
        Command::Openapi => unreachable!("handled above"),
    }
}

async fn serve(settings: &Settings) -> anyhow::Result<()> {
    let app = App::build(settings).await?;
    app.run_until_stopped().await
}

/// Runs `work` on the core built for the admin commands, then waits for its audit writer, so
/// that everything recorded is stored before the process exits.
async fn with_auth<T>(
    settings: &Settings,
    work: impl AsyncFnOnce(&Auth) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let core = app::build_core(settings, Door::Cli).await?;
    let result = work(&core.auth).await;
    core.close().await;
    result
}

async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    let migrated = app::migrate(settings).await?;
    if migrated.applied.is_empty() {
        println!("database is up to date: no pending migrations");
    } else {
        for name in &migrated.applied {
            println!("applied {name}");
        }
    }
    if migrated.kek_checked {
        println!(
            "keys.encryption_key is the database's key-encryption key (check value recorded or matched)"
        );
    } else {
        println!(
            "no keys.encryption_key here: the first server start records the key-encryption key's check value"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
