//! Security events: the audit trail, appended in batches and read newest first.

use uuid::Uuid;

use super::common::{Time, statements};
use crate::error::Result;
use crate::events::{EventQuery, RecordedEvent, SecurityEvent};

#[derive(Debug, sqlx::FromRow)]
pub struct EventRow {
    id: i64,
    at: Time,
    kind: String,
    outcome: String,
    user_id: Option<Uuid>,
    email: Option<String>,
    client_ip: Option<String>,
    detail: Option<String>,
}

impl From<EventRow> for RecordedEvent {
    fn from(row: EventRow) -> RecordedEvent {
        RecordedEvent {
            id: row.id,
            at: row.at.0,
            kind: row.kind,
            outcome: row.outcome,
            user_id: row.user_id,
            email: row.email,
            client_ip: row.client_ip,
            detail: row.detail,
        }
    }
}

statements! {
    pub async fn insert_events(&self, events: &[SecurityEvent]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for event in events {
            sqlx::query(
                "INSERT INTO security_events (at, kind, outcome, user_id, email, client_ip, detail)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(Time(event.at))
            .bind(event.kind.as_str())
            .bind(event.kind.outcome())
            .bind(event.user_id)
            .bind(&event.email)
            .bind(event.client_ip.map(|ip| ip.to_string()))
            .bind(&event.detail)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_events(&self, query: &EventQuery) -> Result<Vec<RecordedEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT id, at, kind, outcome, user_id, email, client_ip, detail
             FROM security_events
             WHERE $1 IS NULL OR email = $1
             ORDER BY at DESC, id DESC
             LIMIT $2",
        )
        .bind(&query.email)
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }
}
