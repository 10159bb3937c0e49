//! The security audit trail's writer: events are queued off the request path and written in
//! batches, retried while the database is down. What an event is lives in `events`.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use prometheus::{IntCounter, IntGauge};

use crate::config::AuditSettings;
pub use crate::events::{EventKind, EventQuery, RecordedEvent, SecurityEvent};
use crate::metrics::Metrics;
use crate::store::Store;

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
    write_failures: IntCounter,
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
            write_failures: metrics.audit_write_failures.clone(),
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
                    counts.write_failures.inc();
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

    impl Counts {
        /// Counters of a writer's own, registered nowhere.
        fn for_test() -> Counts {
            Counts {
                dropped: IntCounter::new("dropped", "test").unwrap(),
                pending: IntGauge::new("pending", "test").unwrap(),
                write_failures: IntCounter::new("write_failures", "test").unwrap(),
            }
        }
    }

    fn unreachable_store() -> Store {
        let mut settings = crate::config::Settings::defaults();
        settings.database.url = "postgres://authd@127.0.0.1:1/none".to_string().into();
        settings.database.acquire_timeout_secs = 1;
        Store::connect_lazy(&settings).unwrap()
    }

    #[tokio::test]
    async fn at_shutdown_with_the_database_down_the_writer_gives_up_after_its_grace_and_counts_the_loss()
     {
        // A shorter grace than the server's 8 s: the rule is the same, the test is quicker.
        let grace = Duration::from_millis(300);
        let counts = Counts::for_test();
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
        let counts = Counts::for_test();
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
