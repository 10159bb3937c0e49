//! The `authd` binary: parse the command line, load settings, set up logging, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use authd::cli::{self, Cli};
use authd::config::LogFormat;

fn main() -> ExitCode {
    authd::install_crypto_provider();
    let cli = Cli::parse_or_exit();
    let settings = cli::load_settings(&cli);
    let format = settings.as_ref().map_or(LogFormat::Auto, |s| s.log.format);
    init_tracing(cli.command.is_server(), format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::exit_code_for(&err)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level. Admin commands stay quiet unless asked:
/// their failures are reported by the one `error:` line, so a warning logged on the way there
/// (e.g. "database unavailable") would only say the same thing twice. PostgreSQL's notices
/// ("relation already exists, skipping") are noise at info.
fn init_tracing(server: bool, format: LogFormat) {
    let default = if server {
        "info,sqlx::postgres::notice=warn"
    } else {
        "error"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(terminal).init();
    }
}
