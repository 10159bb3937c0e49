//! The security audit trail: what happened, to whom, from where. Written off the request path.

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::store::Store;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserRegistered,
    UserAddedByAdmin,
    LoginSucceeded,
    LoginFailed,
    LoginThrottled,
    CodeSent,
    CodeSendFailed,
    CodeAccepted,
    CodeRejected,
    CodeThrottled,
    /// The consecutive wrong code that locked the second step until an admin unlocks it.
    SecondFactorLocked,
    /// A login that would have emailed a code past the account's code-email quota.
    CodeEmailLimited,
    TwoFactorChanged,
    UserUnlocked,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserRegistered => "user_registered",
            EventKind::UserAddedByAdmin => "user_added_by_admin",
            EventKind::LoginSucceeded => "login_succeeded",
            EventKind::LoginFailed => "login_failed",
            EventKind::LoginThrottled => "login_throttled",
            EventKind::CodeSent => "code_sent",
            EventKind::CodeSendFailed => "code_send_failed",
            EventKind::CodeAccepted => "code_accepted",
            EventKind::CodeRejected => "code_rejected",
            EventKind::CodeThrottled => "code_throttled",
            EventKind::SecondFactorLocked => "second_factor_locked",
            EventKind::CodeEmailLimited => "code_email_limited",
            EventKind::TwoFactorChanged => "two_factor_changed",
            EventKind::UserUnlocked => "user_unlocked",
        }
    }

    /// The outcome column: success, failure or throttled.
    pub fn outcome(self) -> &'static str {
        match self {
            EventKind::LoginFailed | EventKind::CodeSendFailed | EventKind::CodeRejected => {
                "failure"
            }
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

/// Events waiting in memory before the writer gives up on them.
const QUEUE: usize = 65_536;
/// Events written per transaction at most.
const BATCH: usize = 512;

/// Hands events to a background writer so requests never wait for the audit insert.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<SecurityEvent>,
}

impl AuditLog {
    /// Starts the writer. It stops, after writing what is queued, once every `AuditLog` is dropped.
    pub fn start(store: Store) -> (AuditLog, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let writer = tokio::spawn(write_events(store, rx));
        (AuditLog { tx }, writer)
    }

    pub fn record(&self, event: SecurityEvent) {
        if self.tx.try_send(event).is_err() {
            tracing::warn!("audit queue full or closed: a security event was dropped");
        }
    }
}

async fn write_events(store: Store, mut rx: mpsc::Receiver<SecurityEvent>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut delay = Duration::from_millis(200);
        for attempt in 1..=5 {
            match store.insert_events(&batch).await {
                Ok(()) => break,
                Err(err) if attempt == 5 => {
                    tracing::error!(error = %err, lost = batch.len(), "cannot write security events");
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        batch.clear();
    }
}
