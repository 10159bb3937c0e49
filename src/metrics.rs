//! Prometheus metrics, kept in a registry owned by the app (no global state, so tests and
//! several apps in one process do not mix their numbers).

use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric authd exports. Cloning shares the same collectors.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub logins: IntCounterVec,
    pub codes: IntCounterVec,
    pub refreshes: IntCounterVec,
    key_reloads: IntCounterVec,
    /// 1 while the instance can sign tokens with its key set, 0 while it cannot (the current
    /// key does not open or cannot sign; `/readyz` answers 503 meanwhile).
    signing_ready: IntGauge,
    pub throttled: IntCounterVec,
    connections_refused: IntCounterVec,
    pub bcrypt_duration: HistogramVec,
    /// Security events the audit writer could not keep (queue full, or shutdown with the
    /// database down).
    pub audit_dropped: IntCounter,
    /// Security events recorded and not yet written: the queue and the batch being written.
    pub audit_pending: IntGauge,
    /// Batch writes of the audit trail that failed (and were tried again): the database is away.
    pub audit_write_failures: IntCounter,
    db_connections: IntGaugeVec,
    account_mails: IntCounterVec,
    passkeys: IntCounterVec,
    /// Account emails being prepared or sent in the background right now.
    pub account_mails_in_flight: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry =
            Registry::new_custom(Some("authd".into()), None).expect("a valid metrics prefix");
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to answer an HTTP request, by route and method",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route", "method"],
        )
        .expect("valid metric");
        let logins = IntCounterVec::new(
            Opts::new(
                "logins_total",
                "Password logins by outcome: success, code_required, invalid_credentials, email_not_verified, throttled, error",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let codes = IntCounterVec::new(
            Opts::new(
                "codes_total",
                "One-time codes by event: sent, send_failed, accepted, rejected",
            ),
            &["event"],
        )
        .expect("valid metric");
        let refreshes = IntCounterVec::new(
            Opts::new(
                "refreshes_total",
                "Refresh-token uses by outcome: rotated, replayed (within the grace period), reused (session revoked)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let key_reloads = IntCounterVec::new(
            Opts::new(
                "key_reloads_total",
                "Reads of the signing keys by reason: periodic, unknown_kid, signer_changed, not_loaded, stale",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let signing_ready = IntGauge::new(
            "signing_key_usable",
            "1 while this instance can sign tokens with its signing key, 0 while it cannot (see the log; /readyz answers 503)",
        )
        .expect("valid metric");
        let throttled = IntCounterVec::new(
            Opts::new(
                "throttled_total",
                "Requests refused with 429, by limit: account, code, address",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections closed at accept, by the cap they were past: process, client",
            ),
            &["cap"],
        )
        .expect("valid metric");
        let bcrypt_duration = HistogramVec::new(
            HistogramOpts::new(
                "bcrypt_duration_seconds",
                "CPU time of one bcrypt hash or check, by operation",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]),
            &["operation"],
        )
        .expect("valid metric");
        let db_connections = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Database pool connections by state: idle, in_use, max",
            ),
            &["state"],
        )
        .expect("valid metric");
        let audit_dropped = IntCounter::new(
            "audit_events_dropped_total",
            "Security events lost: the audit queue was full, or the database stayed down at shutdown",
        )
        .expect("valid metric");
        let audit_pending = IntGauge::new(
            "audit_events_pending",
            "Security events recorded and not yet written to the database (queued or being written)",
        )
        .expect("valid metric");
        let audit_write_failures = IntCounter::new(
            "audit_write_failures_total",
            "Failed writes of a batch of security events (each is tried again): the database was away",
        )
        .expect("valid metric");
        let account_mails = IntCounterVec::new(
            Opts::new(
                "account_mails_total",
                "Account emails (verify_email, reset_password, change_email, password_changed, email_change_requested, address_in_use, second_factor_changed, passkey_changed) by outcome: sent, failed, limited, no_account, not_needed, dropped",
            ),
            &["kind", "outcome"],
        )
        .expect("valid metric");
        let passkeys = IntCounterVec::new(
            Opts::new(
                "passkeys_total",
                "Passkey ceremonies by event: registered, sign_in, second_step, rejected",
            ),
            &["event"],
        )
        .expect("valid metric");
        let account_mails_in_flight = IntGauge::new(
            "account_mails_in_flight",
            "Account emails being prepared or sent in the background right now (at most 64)",
        )
        .expect("valid metric");
        for collector in [
            Box::new(account_mails.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(account_mails_in_flight.clone()),
            Box::new(passkeys.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_duration.clone()),
            Box::new(logins.clone()),
            Box::new(codes.clone()),
            Box::new(refreshes.clone()),
            Box::new(key_reloads.clone()),
            Box::new(signing_ready.clone()),
            Box::new(throttled.clone()),
            Box::new(connections_refused.clone()),
            Box::new(bcrypt_duration.clone()),
            Box::new(db_connections.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(audit_pending.clone()),
            Box::new(audit_write_failures.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            http_requests,
            http_duration,
            logins,
            codes,
            refreshes,
            key_reloads,
            signing_ready,
            throttled,
            connections_refused,
            bcrypt_duration,
            audit_dropped,
            audit_pending,
            audit_write_failures,
            db_connections,
            account_mails,
            account_mails_in_flight,
            passkeys,
        }
    }

    /// One account email by kind and outcome (see `authd_account_mails_total`).
    pub fn account_mail(&self, kind: &str, outcome: &str) {
        self.account_mails.with_label_values(&[kind, outcome]).inc();
    }

    pub fn login(&self, outcome: &str) {
        self.logins.with_label_values(&[outcome]).inc();
    }

    pub fn passkey(&self, event: &str) {
        self.passkeys.with_label_values(&[event]).inc();
    }

    pub fn code(&self, event: &str) {
        self.codes.with_label_values(&[event]).inc();
    }

    pub fn refresh(&self, outcome: &str) {
        self.refreshes.with_label_values(&[outcome]).inc();
    }

    /// The signing keys were read again, for `reason`.
    pub fn key_reload(&self, reason: &str) {
        self.key_reloads.with_label_values(&[reason]).inc();
    }

    /// Whether the installed key set can sign.
    pub fn signing_usable(&self, usable: bool) {
        self.signing_ready.set(i64::from(usable));
    }

    /// What [`Metrics::signing_usable`] last said.
    pub fn signing_is_usable(&self) -> bool {
        self.signing_ready.get() == 1
    }

    pub fn throttle(&self, limit: &str) {
        self.throttled.with_label_values(&[limit]).inc();
    }

    /// A connection closed at accept: `cap` is `process` or `client`.
    pub fn refuse_connection(&self, cap: &str) {
        self.connections_refused.with_label_values(&[cap]).inc();
    }

    pub fn observe_bcrypt(&self, operation: &str, took: Duration) {
        self.bcrypt_duration
            .with_label_values(&[operation])
            .observe(took.as_secs_f64());
    }

    pub fn observe_request(&self, route: &str, method: &str, status: &str, took: Duration) {
        self.request_series(route, method, status).observe(took);
    }

    /// The series a request of this route, method and status counts in. Resolving them takes
    /// a lock and a label hash; a caller that sees the same labels often keeps them.
    pub fn request_series(&self, route: &str, method: &str, status: &str) -> RequestSeries {
        RequestSeries {
            count: self.http_requests.with_label_values(&[
                route,
                method_label(method),
                status_label(status),
            ]),
            duration: self
                .http_duration
                .with_label_values(&[route, method_label(method)]),
        }
    }

    /// The text exposition format, with the pool gauges read now.
    /// The text exposition, with the database pool's figures as they are now: `(open, idle,
    /// maximum)` connections.
    pub fn render(&self, (size, idle, max): (u32, u32, u32)) -> String {
        self.db_connections
            .with_label_values(&["idle"])
            .set(i64::from(idle));
        self.db_connections
            .with_label_values(&["in_use"])
            .set(i64::from(size.saturating_sub(idle)));
        self.db_connections
            .with_label_values(&["max"])
            .set(i64::from(max));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding of metrics cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The `method` label: a standard method by name, anything else `other`. A client picks the
/// method, and each distinct label value is a series kept for the life of the process.
pub fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("other")
}

/// The `status` label: a three-digit status of the standard range, else `other`, so the
/// series stay bounded whatever a handler answers.
pub fn status_label(status: &str) -> &str {
    match status.parse::<u16>() {
        Ok(100..=599) if status.len() == 3 => status,
        _ => "other",
    }
}

/// The request counter and latency histogram of one route, method and status.
#[derive(Clone, Debug)]
pub struct RequestSeries {
    count: IntCounter,
    duration: Histogram,
}

impl RequestSeries {
    pub fn observe(&self, took: Duration) {
        self.count.inc();
        self.duration.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(metrics: &Metrics) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&metrics.registry.gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn counters_appear_in_the_text_format_with_the_authd_prefix() {
        let metrics = Metrics::new();
        metrics.login("success");
        metrics.observe_request("/login", "POST", "200", Duration::from_millis(3));
        let text = text_of(&metrics);
        assert!(
            text.contains(r#"authd_logins_total{outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"authd_http_requests_total{method="POST",route="/login",status="200"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn made_up_methods_and_statuses_share_one_label() {
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("patch"), "other");
        assert_eq!(method_label("BREW"), "other");
        assert_eq!(status_label("404"), "404");
        assert_eq!(status_label("999"), "other");
        let metrics = Metrics::new();
        for method in ["BREW", "WHEN", "X-1"] {
            metrics.observe_request("other", method, "405", Duration::from_millis(1));
        }
        let text = text_of(&metrics);
        assert!(
            text.contains(
                r#"authd_http_requests_total{method="other",route="other",status="405"} 3"#
            ),
            "{text}"
        );
    }
}
