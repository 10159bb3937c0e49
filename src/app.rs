//! The composition root: builds the store, the signing key, the mailer, the audit writer, the
//! metrics and the password hasher into one `Auth` for either door, and runs the listeners
//! around the server's.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::config::JwtAlgorithm;
use crate::config::{Environment, Settings};
use crate::http::server::{self, ConnectionRules};
use crate::http::{AppState, HttpService, metrics_router, router};
use crate::keys::{existing_signing_secret, load_key_encryption_key, load_signing_secret};
use crate::metrics::Metrics;
use crate::store::{Backend, Store};

/// Which door a core is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `authd serve`: every use case, logging in included.
    Server,
    /// The admin commands: no signing key and no mailer (see [`Auth::for_admin`]), and only a
    /// database that exists.
    Cli,
}

/// A built `Auth` and the task writing its audit trail.
pub struct Core {
    pub auth: Auth,
    audit_writer: JoinHandle<()>,
}

impl Core {
    /// Lets go of the `Auth` and waits until the audit trail has what was recorded through it.
    pub async fn close(self) {
        drop(self.auth);
        flush_audit(self.audit_writer).await;
    }
}

/// Builds the core for `door`: the one place that knows how an `Auth` is made. No mail relay is
/// contacted (SMTP connects at the first mail) and PostgreSQL only at the first query.
pub async fn build_core(settings: &Settings, door: Door) -> anyhow::Result<Core> {
    // SQLite gets its schema here (zero setup); PostgreSQL needs `authd migrate`. Only the
    // server creates a missing SQLite database: an admin command never does (see
    // `create_zero_setup_database` for the one that may).
    let store = match door {
        Door::Server => Store::open(settings)
            .await
            .context("cannot prepare the database")?,
        Door::Cli => Store::open_existing(settings).await?,
    };
    if door == Door::Server {
        warn_about_serving_with(settings, &store);
    }
    let metrics = Metrics::new();
    let (audit, audit_writer) = AuditLog::start(store.clone(), &metrics, &settings.audit);
    let auth = match door {
        Door::Server => {
            let kek = load_key_encryption_key(settings, true)?;
            // HS256 signs only when chosen; otherwise a secret already there still verifies
            // the HS256 tokens (and keys the refresh tokens) issued before the switch.
            let hs256 = match settings.jwt.algorithm {
                JwtAlgorithm::Hs256 => Some(load_signing_secret(settings, true)?),
                _ => existing_signing_secret(settings)?,
            };
            Auth::from_settings(settings, store, kek, hs256.as_ref(), audit, metrics).await?
        }
        Door::Cli => Auth::for_admin(settings, store, audit, metrics).await?,
    };
    Ok(Core { auth, audit_writer })
}

/// The settings with `http.public_url` set to `http://<listening>` when it is not configured.
fn with_listening_url(settings: &Settings, listening: std::net::SocketAddr) -> Settings {
    let mut settings = settings.clone();
    if settings.http.public_url.trim().is_empty() {
        settings.http.public_url = format!("http://{listening}");
    }
    settings
}

/// What an operator starting a server should know about its settings.
fn warn_about_serving_with(settings: &Settings, store: &Store) {
    if store.backend() == Backend::Sqlite {
        tracing::info!(
            "using SQLite: fine for a single instance; run more than one instance on PostgreSQL"
        );
    }
    if settings.mail.transport.is_development_only() {
        tracing::warn!(
            transport = ?settings.mail.transport,
            "development-only mail transport: codes are not emailed"
        );
    }
    if !settings.rate_limit.enabled {
        tracing::warn!("rate_limit.enabled = false: no brute-force protection");
    }
    let links = settings
        .mail
        .link_base_url()
        .map_or_else(|| settings.public_url(), str::to_owned);
    if settings.env == Environment::Production && !links.starts_with("https://") {
        tracing::warn!(
            links = %links,
            "the links in verification and reset emails are not https: set http.public_url (authd's own pages) or mail.link_base_url (yours)"
        );
    }
    if settings.env == Environment::Production && !settings.jwt.issuer.starts_with("https://") {
        tracing::warn!(
            issuer = %settings.jwt.issuer,
            "jwt.issuer is not an https URL: clients that check RFC 8414 metadata strictly want the issuer to be this server's URL (http.public_url)"
        );
    }
}

/// Waits for the audit writer, which ends once every handle on its queue is gone.
async fn flush_audit(audit_writer: JoinHandle<()>) {
    if tokio::time::timeout(Duration::from_secs(10), audit_writer)
        .await
        .is_err()
    {
        tracing::warn!("audit trail not fully written at shutdown");
    }
}

/// Creates the zero-setup SQLite database (its file and schema) when it is missing, for the
/// admin commands that make something (`authd user add`). A PostgreSQL database is the
/// operator's: nothing to do.
pub async fn create_zero_setup_database(settings: &Settings) -> anyhow::Result<()> {
    if settings.database_url().starts_with("sqlite:") {
        Store::open(settings).await?;
    }
    Ok(())
}

/// What `authd migrate` did.
pub struct Migrated {
    /// "<version> <description>" of each migration applied.
    pub applied: Vec<String>,
    /// Whether a key-encryption key was there (configured, or generated by a zero-setup start)
    /// and was compared with, or recorded as, the database's check value.
    pub kek_checked: bool,
}

/// Applies the pending migrations (`authd migrate`); then, when a key-encryption key is there,
/// compares it with the database's check value, recording it when there is none, so admin
/// commands can check theirs even before the first server start. A KEK that differs is an
/// error (the schema is migrated all the same).
pub async fn migrate(settings: &Settings) -> anyhow::Result<Migrated> {
    let store = Store::connect_lazy(settings)?;
    let applied = store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    let kek = if settings.keys.encryption_key.is_some() || settings.generated_kek_path().exists() {
        Some(load_key_encryption_key(settings, false)?)
    } else {
        None
    };
    if let Some(kek) = &kek {
        crate::auth::settle_kek(&store, kek, crate::auth::KekWitness::Server).await?;
    }
    Ok(Migrated {
        applied,
        kek_checked: kek.is_some(),
    })
}

/// A built server: bound to its port, ready to run.
pub struct App {
    listener: TcpListener,
    router: HttpService,
    metrics: Option<(TcpListener, HttpService)>,
    connections: ConnectionRules,
    audit_writer: JoinHandle<()>,
    pruner: AbortOnDrop,
    key_refresher: AbortOnDrop,
}

/// Reads the signing keys again every `interval`, so a rotation or revocation made by the
/// admin commands (or another instance) is in use here within it. A read that fails (the
/// database is away) keeps the set in use and is tried again at the next tick; a read whose
/// current key cannot sign still installs the rest (a revoked key leaves at once) and makes the
/// instance not ready.
fn spawn_key_refresher(auth: Auth, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut settled = false;
        loop {
            // Until the keys were read once (the database was down at start), every second;
            // after a refusal of the KEK, which no retry changes, at the usual pace.
            let wait = if auth.keys_loaded() || settled {
                interval
            } else {
                Duration::from_secs(1)
            };
            tokio::time::sleep(wait).await;
            settled = false;
            match auth.reload_keys().await {
                Ok(()) => {}
                // A KEK that is not the database's (a server that started while its database
                // was away is told only now): not ready for as long as it runs.
                Err(err @ crate::error::Error::Validation(_)) => {
                    settled = true;
                    tracing::error!(error = %err, "cannot use the signing keys: this instance stays not ready until it runs with the database's keys.encryption_key");
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the signing keys; keeping the ones in use until the next try");
                }
            }
        }
    })
}

/// A background task that ends with its owner (a test dropping its app included).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl App {
    /// Connects the pieces and binds the listener (port 0 picks a free port).
    pub async fn build(settings: &Settings) -> anyhow::Result<App> {
        settings.check_production()?;
        let listener = TcpListener::bind(&settings.http.addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.http.addr))?;
        // Without `http.public_url`, the URLs authd hands out (the links in its emails, the
        // metadata) name the address it really listens on: with port 0, the port it was given.
        let settings = &with_listening_url(settings, listener.local_addr()?);
        let Core { auth, audit_writer } = build_core(settings, Door::Server).await?;
        let pruner = AbortOnDrop(crate::prune::spawn_pruner(
            auth.clone(),
            Duration::from_secs(settings.audit.prune_interval_secs),
        ));
        let key_refresher = AbortOnDrop(spawn_key_refresher(
            auth.clone(),
            Duration::from_secs(settings.keys.refresh_secs),
        ));
        let state = AppState::new(auth, settings)?;
        let separate_metrics = settings.metrics.enabled && !settings.metrics.addr.trim().is_empty();
        let metrics = if separate_metrics {
            let addr = settings.metrics.addr.trim();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on metrics.addr {addr}"))?;
            Some((listener, metrics_router(state.clone(), &settings.http)))
        } else {
            None
        };
        // In production the API port is taken to be public: /metrics (what the server is doing,
        // which accounts fail) stays off it unless the operator says the port is private.
        let metrics_on_api_port =
            settings.env != Environment::Production || settings.metrics.api_port_private;
        let serve_metrics_here =
            settings.metrics.enabled && !separate_metrics && metrics_on_api_port;
        if settings.metrics.enabled && !separate_metrics && !metrics_on_api_port {
            tracing::warn!(
                "metrics not served: in production /metrics needs metrics.addr or metrics.api_port_private = true"
            );
        }
        Ok(App {
            listener,
            router: router(state, &settings.http, serve_metrics_here),
            metrics,
            connections: ConnectionRules::from_settings(settings),
            audit_writer,
            pruner,
            key_refresher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// Where `/metrics` is served when it has its own listener.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Serves until SIGINT or SIGTERM, then finishes in-flight requests and returns.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(server::shutdown_signal()).await
    }

    /// Serves until `stop` completes, then stops accepting, drains in-flight requests and
    /// flushes the audit trail.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "authd listening");
        let App {
            listener,
            router,
            metrics,
            connections,
            audit_writer,
            pruner,
            key_refresher,
        } = self;
        let (stopped, watch) = tokio::sync::watch::channel(false);
        let metrics_server = metrics.map(|(listener, router)| {
            tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
            tokio::spawn(server::serve(
                listener,
                router,
                connections.clone(),
                watch.clone(),
            ))
        });
        let api = tokio::spawn(server::serve(listener, router, connections, watch));
        stop.await;
        let _ = stopped.send(true);
        let _ = api.await;
        if let Some(server) = metrics_server {
            let _ = server.await;
        }
        // A pruning pass cut short is rolled back and done again at the next start. The pruner
        // goes first: its `Auth` holds a handle on the audit queue.
        drop(pruner);
        drop(key_refresher);
        // The routers held the other handles: the writer now drains and ends.
        flush_audit(audit_writer).await;
        tracing::info!("authd stopped");
        Ok(())
    }
}
