//! The `authd` binary: parse the command line, set up logging, dispatch.

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use authd::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    init_tracing(cli.command.is_server());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            cli::exit_code_for(&err)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` overrides the level. Admin commands stay quiet unless asked:
/// their failures are reported by the one `error:` line, so a warning logged on the way there
/// (e.g. "database unavailable") would only say the same thing twice.
fn init_tracing(server: bool) {
    let default = if server { "info" } else { "error" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
