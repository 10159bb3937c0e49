//! The security audit trail: what happened, to whom, from where. Written off the request path.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use prometheus::{IntCounter, IntGauge};

use crate::config::AuditSettings;
use crate::metrics::Metrics;
use crate::store::Store;

/// Declares [`EventKind`] with its stored name, and [`EventKind::ALL`] from the same list, so
/// a kind cannot be added without being in `ALL` (which the tests check against README).
macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// What happened.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum EventKind {
            $($(#[$doc])* $variant,)*
        }

        impl EventKind {
            /// Every kind, in declaration order.
            pub const ALL: &[EventKind] = &[$(EventKind::$variant,)*];

            /// The name stored in the `kind` column.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)*
                }
            }
        }
    };
}

event_kinds! {
    UserRegistered => "user_registered",
    UserAddedByAdmin => "user_added_by_admin",
    LoginSucceeded => "login_succeeded",
    LoginFailed => "login_failed",
    LoginThrottled => "login_throttled",
    CodeSent => "code_sent",
    CodeSendFailed => "code_send_failed",
    CodeAccepted => "code_accepted",
    CodeRejected => "code_rejected",
    CodeThrottled => "code_throttled",
    /// The consecutive wrong code that locked the second step until an admin unlocks it.
    SecondFactorLocked => "second_factor_locked",
    /// A login that would have emailed a code past the account's code-email quota.
    CodeEmailLimited => "code_email_limited",
    TwoFactorChanged => "two_factor_changed",
    UserUnlocked => "user_unlocked",
    /// `POST /logout`; the detail says the scope and how many sessions ended.
    Logout => "logout",
    /// One session ended by its user (`DELETE /sessions/{id}`) or by `authd session revoke`.
    SessionRevoked => "session_revoked",
    /// A refresh token presented after it was rotated (past the grace period): the session
    /// was revoked.
    RefreshTokenReused => "refresh_token_reused",
    UserDisabled => "user_disabled",
    UserEnabled => "user_enabled",
    UserDeleted => "user_deleted",
    /// A signing key made: `next` by `authd keys rotate`, or `current` by a first start.
    KeyCreated => "key_created",
    /// `authd keys rotate --activate`: a next key became current, the old current retired.
    KeyActivated => "key_activated",
    /// `authd keys revoke`: a key is never accepted again (and, if it was current, which key
    /// signs now).
    KeyRevoked => "key_revoked",
}

impl EventKind {
    /// The outcome column: success, failure or throttled.
    pub fn outcome(self) -> &'static str {
        match self {
            EventKind::LoginFailed
            | EventKind::CodeSendFailed
            | EventKind::CodeRejected
            | EventKind::RefreshTokenReused => "failure",
            EventKind::LoginThrottled
            | EventKind::CodeThrottled
            | EventKind::SecondFactorLocked
            | EventKind::CodeEmailLimited => "throttled",
            _ => "success",
        }
    }
}

/// One event about to be recorded.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    pub at: DateTime<Utc>,
    pub kind: EventKind,
    pub user_id: Option<Uuid>,
    pub email: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub detail: Option<String>,
}

impl SecurityEvent {
    pub fn new(kind: EventKind) -> SecurityEvent {
        SecurityEvent {
            at: Utc::now(),
            kind,
            user_id: None,
            email: None,
            client_ip: None,
            detail: None,
        }
    }

    pub fn user(mut self, id: Uuid, email: &str) -> Self {
        self.user_id = Some(id);
        self.email = Some(email.to_owned());
        self
    }

    pub fn email(mut self, email: &str) -> Self {
        self.email = Some(email.to_owned());
        self
    }

    pub fn client(mut self, ip: Option<IpAddr>) -> Self {
        self.client_ip = ip;
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// An event as stored, for `authd audit`.
#[derive(Debug, Clone, Serialize)]
pub struct RecordedEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub outcome: String,
    pub user_id: Option<Uuid>,
    pub email: Option<String>,
    pub client_ip: Option<String>,
    pub detail: Option<String>,
}

/// Filters for reading the trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub email: Option<String>,
    pub limit: u32,
}

/// Events waiting in memory for the writer; past this new ones are dropped (and counted), so
/// an outage costs bounded memory.
const QUEUE: usize = 65_536;
/// Events written per transaction at most.
const BATCH: usize = 512;
/// First wait before writing a batch again while the database is down; it doubles after each
/// failure up to `audit.retry_max_secs`.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
/// At shutdown, how long the writer keeps trying a database that is down before it gives up
/// on what is left (inside the 10 s the server gives it).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// Hands events to a background writer so requests never wait for the audit insert.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<SecurityEvent>,
    counts: Counts,
}

/// What the writer reports: events lost, and events recorded but not yet written.
#[derive(Clone, Debug)]
struct Counts {
    dropped: IntCounter,
    pending: IntGauge,
}

impl AuditLog {
    /// Starts the writer. It stops, after writing what is queued, once every `AuditLog` is
    /// dropped. Events it could not keep are counted in `audit_events_dropped_total`; events
    /// waiting to be written are `audit_events_pending`.
    pub fn start(
        store: Store,
        metrics: &Metrics,
        settings: &AuditSettings,
    ) -> (AuditLog, JoinHandle<()>) {
        let counts = Counts {
            dropped: metrics.audit_dropped.clone(),
            pending: metrics.audit_pending.clone(),
        };
        let max_delay = Duration::from_secs(settings.retry_max_secs.max(1));
        AuditLog::start_with_queue(store, counts, QUEUE, max_delay, SHUTDOWN_GRACE)
    }

    fn start_with_queue(
        store: Store,
        counts: Counts,
        queue: usize,
        max_delay: Duration,
        shutdown_grace: Duration,
    ) -> (AuditLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let writer = tokio::spawn(write_events(
            store,
            rx,
            counts.clone(),
            max_delay,
            shutdown_grace,
        ));
        (AuditLog { tx, counts }, writer)
    }

    pub fn record(&self, event: SecurityEvent) {
        // Counted before it is sent, so the writer never takes it off a count that lacks it.
        self.counts.pending.inc();
        if self.tx.try_send(event).is_err() {
            self.counts.pending.dec();
            self.counts.dropped.inc();
            tracing::warn!("audit queue full or closed: a security event was dropped");
        }
    }
}

/// Writes batches as they come. While the database is down the current batch is retried with
/// backoff (up to `max_delay` between tries) for as long as the server runs (the queue holds
/// what arrives meanwhile); once the server stops, for at most `shutdown_grace`
/// ([`SHUTDOWN_GRACE`]) in all.
async fn write_events(
    store: Store,
    mut rx: mpsc::Receiver<SecurityEvent>,
    counts: Counts,
    max_delay: Duration,
    shutdown_grace: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut give_up_at: Option<tokio::time::Instant> = None;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut delay = FIRST_RETRY_DELAY.min(max_delay);
        let mut failures = 0u32;
        loop {
            match store.insert_events(&batch).await {
                Ok(()) => {
                    counts.pending.sub(batch.len() as i64);
                    if failures > 0 {
                        tracing::info!(
                            events = batch.len(),
                            failures,
                            "security events written after the database came back"
                        );
                    }
                    break;
                }
                Err(err) => {
                    failures += 1;
                    if rx.is_closed() {
                        let deadline = *give_up_at
                            .get_or_insert_with(|| tokio::time::Instant::now() + shutdown_grace);
                        if tokio::time::Instant::now() >= deadline {
                            let lost = batch.len() + rx.len();
                            counts.dropped.inc_by(lost as u64);
                            counts.pending.sub(lost as i64);
                            tracing::error!(error = %err, lost, "cannot write security events before shutdown: dropped");
                            rx.close();
                            while rx.try_recv().is_ok() {}
                            return;
                        }
                    }
                    if failures == 1 || failures.is_multiple_of(12) {
                        tracing::warn!(error = %err, waiting = batch.len() + rx.len(), "cannot write security events yet; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(max_delay);
                }
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_store() -> Store {
        let mut settings = crate::config::Settings::defaults();
        settings.database.url = "postgres://authd@127.0.0.1:1/none".to_string().into();
        settings.database.acquire_timeout_secs = 1;
        Store::connect_lazy(&settings).unwrap()
    }

    /// README's "Audit trail" section, up to the next heading.
    fn documented_section() -> &'static str {
        let readme = include_str!("../README.md");
        let start = readme
            .find("### Audit trail")
            .expect("README has an Audit trail section");
        let rest = &readme[start + 3..];
        &rest[..rest.find("\n#").unwrap_or(rest.len())]
    }

    #[test]
    fn every_event_kind_is_documented_in_the_readme_under_its_stored_name() {
        let section = documented_section();
        for kind in EventKind::ALL {
            assert!(
                section.contains(&format!("`{}`", kind.as_str())),
                "README's Audit trail does not list {}",
                kind.as_str()
            );
            // The name serde gives (for JSON) is the stored one.
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            EventKind::ALL.len(),
            "a stored name is used twice"
        );
    }

    #[test]
    fn each_kind_has_the_outcome_the_readme_gives_it() {
        use EventKind::*;
        let expected: [(EventKind, &str); 23] = [
            (UserRegistered, "success"),
            (UserAddedByAdmin, "success"),
            (LoginSucceeded, "success"),
            (LoginFailed, "failure"),
            (LoginThrottled, "throttled"),
            (CodeSent, "success"),
            (CodeSendFailed, "failure"),
            (CodeAccepted, "success"),
            (CodeRejected, "failure"),
            (CodeThrottled, "throttled"),
            (SecondFactorLocked, "throttled"),
            (CodeEmailLimited, "throttled"),
            (TwoFactorChanged, "success"),
            (UserUnlocked, "success"),
            (Logout, "success"),
            (SessionRevoked, "success"),
            (RefreshTokenReused, "failure"),
            (UserDisabled, "success"),
            (UserEnabled, "success"),
            (UserDeleted, "success"),
            (KeyCreated, "success"),
            (KeyActivated, "success"),
            (KeyRevoked, "success"),
        ];
        let listed: Vec<EventKind> = expected.iter().map(|(kind, _)| *kind).collect();
        assert_eq!(listed, EventKind::ALL, "every kind, once, in order");
        for (kind, outcome) in expected {
            assert_eq!(kind.outcome(), outcome, "{}", kind.as_str());
        }
    }

    #[tokio::test]
    async fn at_shutdown_with_the_database_down_the_writer_gives_up_after_its_grace_and_counts_the_loss()
     {
        // A shorter grace than the server's 8 s: the rule is the same, the test is quicker.
        let grace = Duration::from_millis(300);
        let counts = Counts {
            dropped: IntCounter::new("dropped", "test").unwrap(),
            pending: IntGauge::new("pending", "test").unwrap(),
        };
        let dropped = counts.dropped.clone();
        let (log, writer) = AuditLog::start_with_queue(
            unreachable_store(),
            counts,
            16,
            Duration::from_secs(5),
            grace,
        );
        for _ in 0..5 {
            log.record(SecurityEvent::new(EventKind::LoginFailed));
        }
        let stopped_at = std::time::Instant::now();
        // The last handle gone is the server stopping.
        drop(log);
        // A bound that only a writer retrying for ever reaches (the database is down for good).
        tokio::time::timeout(Duration::from_secs(30), writer)
            .await
            .expect("the writer gives up instead of retrying for ever")
            .unwrap();
        assert!(
            stopped_at.elapsed() >= grace,
            "gave up before its grace: {:?}",
            stopped_at.elapsed()
        );
        assert_eq!(dropped.get(), 5, "every event left is counted as lost");
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_growing() {
        let counts = Counts {
            dropped: IntCounter::new("dropped", "test").unwrap(),
            pending: IntGauge::new("pending", "test").unwrap(),
        };
        let dropped = counts.dropped.clone();
        let pending = counts.pending.clone();
        let (log, _writer) = AuditLog::start_with_queue(
            unreachable_store(),
            counts,
            4,
            Duration::from_secs(5),
            SHUTDOWN_GRACE,
        );
        for _ in 0..20 {
            log.record(SecurityEvent::new(EventKind::LoginFailed));
        }
        // On this single-threaded runtime the writer has not run yet: the queue holds four,
        // the other sixteen are dropped and counted.
        assert_eq!(dropped.get(), 16);
        assert_eq!(pending.get(), 4);
        // The writer now takes the four and keeps retrying them (the database is down), so
        // there is room for four more, and no more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..10 {
            log.record(SecurityEvent::new(EventKind::LoginFailed));
        }
        assert_eq!(dropped.get(), 22);
        assert_eq!(pending.get(), 8);
    }
}
