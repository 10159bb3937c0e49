//! The ceiling: the least a server can do to answer `/users/me` from PostgreSQL. Its server
//! (`authd-bench ceiling-server`, this binary again in a process of its own) and its start by
//! the bench.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use uuid::Uuid;

use authd::domain::User;
use authd::store::Store;

use crate::database::Database;
use crate::options::Options;
use crate::process::Process;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    user_id: Uuid,
    #[arg(long)]
    session_id: Uuid,
    #[arg(long, default_value_t = 10)]
    max_connections: u32,
}

/// What the route answers for: authd's store, one user and one of their sessions.
#[derive(Clone)]
struct Route {
    store: Store,
    user_id: Uuid,
    session_id: Uuid,
}

/// `ceiling-server --database-url URL --user-id UUID --session-id UUID --max-connections N`:
/// serves `GET /users/me` for that user and session on a free loopback port, printed as
/// "listening on ADDR".
/// The same runtime (Tokio's default multi-thread), and authd's own store (pool settings,
/// statement, row mapping) as authd; no token check, no middleware.
pub fn main(args: &Args) -> Result<()> {
    let mut settings = authd::Settings::defaults();
    settings.database.url = args.database_url.clone().into();
    settings.database.max_connections = args.max_connections;
    let (user_id, session_id) = (args.user_id, args.session_id);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let store = Store::connect_lazy(&settings)?;
        let state = Route {
            store,
            user_id,
            session_id,
        };
        let app = Router::new().route("/users/me", get(me)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                if let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    term.recv().await;
                }
            })
            .await
            .context("ceiling server failed")
    })
}

/// authd's `/users/me` body: the user and the recovery codes they have left, both from the
/// one query of `find_session_user`.
#[derive(serde::Serialize)]
struct Me {
    #[serde(flatten)]
    user: User,
    recovery_codes_left: i64,
}

async fn me(State(state): State<Route>) -> Result<axum::Json<Me>, StatusCode> {
    // A kid, as /users/me passes its token's: the same revoked-key lookup is made.
    state
        .store
        .find_session_user(
            state.user_id,
            state.session_id,
            Some("ceiling-kid"),
            chrono::Utc::now(),
        )
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?
        .map(|found| {
            axum::Json(Me {
                user: found.user,
                recovery_codes_left: found.recovery_codes_left,
            })
        })
        .ok_or(StatusCode::NOT_FOUND)
}

/// The ceiling server: this binary again, in `ceiling-server` mode.
pub struct Ceiling {
    pub base: String,
    pub process: Process,
}

impl Ceiling {
    pub fn start(
        options: &Options,
        database: &Database,
        user_id: &str,
        session_id: &str,
        work_dir: &Path,
    ) -> Result<Ceiling> {
        let log = std::fs::File::create(work_dir.join("ceiling.log"))?;
        // For profiling the ceiling like authd (e.g. under callgrind): a program to run it with.
        let mut command = match std::env::var_os("AUTHD_BENCH_CEILING_WRAPPER") {
            Some(wrapper) => {
                let mut command = Command::new(wrapper);
                command.arg(std::env::current_exe()?);
                command
            }
            None => Command::new(std::env::current_exe()?),
        };
        command
            .args([
                "ceiling-server",
                "--database-url",
                &database.url,
                "--user-id",
                user_id,
                "--session-id",
                session_id,
                "--max-connections",
                &options.max_connections.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = Process::spawn(command, "ceiling")?;
        let stdout = process.child.stdout.take().context("ceiling stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("cannot read the ceiling's port")?;
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from the ceiling: {line:?}"))?;
        Ok(Ceiling {
            base: format!("http://{addr}"),
            process,
        })
    }
}
