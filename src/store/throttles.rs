//! Throttles: the counters an attacker drives (password guesses, code guesses, code emails).
//! Each is changed in one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` that refuses at the
//! limit, never checked in one statement and counted in another. PostgreSQL's row lock and
//! SQLite's single writer serialise concurrent attempts on one key.

use chrono::{DateTime, Utc};

use super::common::{Count, Span, Time, statements};
use crate::error::Result;

/// How a throttle key locks. Failures are consecutive: only a success (or `authd user unlock`)
/// clears them, never a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRule {
    /// Every `every` consecutive failures lock the key.
    pub every: u32,
    /// The first lock, in microseconds; each later lock lasts twice the one before...
    pub first_lock_micros: i64,
    /// ...up to this many microseconds.
    pub max_lock_micros: i64,
    /// After this many consecutive failures the key stays locked until cleared by hand.
    pub hard_limit: Option<u32>,
}

impl ThrottleRule {
    /// Doublings after which a lock has reached `max_lock_micros`; bounds the arithmetic.
    fn max_doublings(&self) -> i64 {
        let mut doublings = 0;
        let mut lock = self.first_lock_micros.max(1);
        while lock < self.max_lock_micros && doublings < 62 {
            lock = lock.saturating_mul(2);
            doublings += 1;
        }
        doublings
    }

    /// The lock set once `max_doublings` doublings are reached, and by every lock after:
    /// `first_lock_micros` doubled that often, capped at `max_lock_micros`. Every earlier lock
    /// is under the cap (that is where `max_doublings` stops), so the statement caps only this
    /// one, and computing it here keeps the overflow out of SQL.
    fn longest_lock_micros(&self) -> i64 {
        self.first_lock_micros
            .saturating_mul(1 << self.max_doublings())
            .min(self.max_lock_micros)
    }

    /// The lock the `failures`-th consecutive failure sets, if it sets one (for tests and docs).
    pub fn lock_after(&self, failures: u32) -> Option<i64> {
        if self.every == 0 || failures == 0 || !failures.is_multiple_of(self.every) {
            return None;
        }
        let doublings = i64::from(failures / self.every - 1).min(self.max_doublings());
        Some(
            self.first_lock_micros
                .saturating_mul(1 << doublings)
                .min(self.max_lock_micros),
        )
    }
}

/// The answer to asking for one more attempt under a [`ThrottleRule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Go ahead: the attempt already counts as failure number `failures` until it is cleared.
    Granted { failures: u32, locked: bool },
    /// Locked until then; nothing was counted.
    Locked(DateTime<Utc>),
    /// At the hard limit: locked until an admin clears it; nothing was counted.
    Frozen,
}

/// Reads the refusal that the reservation statement returned no row for.
fn refusal(
    row: Option<(i64, Option<DateTime<Utc>>)>,
    rule: &ThrottleRule,
    now: DateTime<Utc>,
) -> Reservation {
    match row {
        Some((failures, _))
            if rule
                .hard_limit
                .is_some_and(|hard| failures >= i64::from(hard)) =>
        {
            Reservation::Frozen
        }
        Some((_, Some(until))) if until > now => Reservation::Locked(until),
        // The lock ended between the two statements: ask again in a second.
        _ => Reservation::Locked(now + chrono::Duration::seconds(1)),
    }
}

/// Whether a throttle row locks its key now (none: not locked).
fn state_of(
    row: Option<(i64, Option<DateTime<Utc>>)>,
    rule: &ThrottleRule,
    now: DateTime<Utc>,
) -> Option<Reservation> {
    let (failures, until) = row?;
    if rule
        .hard_limit
        .is_some_and(|hard| failures >= i64::from(hard))
    {
        return Some(Reservation::Frozen);
    }
    until.filter(|until| *until > now).map(Reservation::Locked)
}

/// When a used-up quota window ends (at least a second from now).
fn window_end(row: Option<(i64, Option<DateTime<Utc>>)>, now: DateTime<Utc>) -> DateTime<Utc> {
    row.and_then(|(_, until)| until)
        .filter(|until| *until > now)
        .unwrap_or(now + chrono::Duration::seconds(1))
}

fn granted(failures: i64, rule: &ThrottleRule) -> Reservation {
    let failures = u32::try_from(failures).unwrap_or(u32::MAX);
    Reservation::Granted {
        failures,
        locked: rule.lock_after(failures).is_some()
            || rule.hard_limit.is_some_and(|hard| failures >= hard),
    }
}

/// `reserve_attempt` (see `Store::reserve_attempt`): $1 key, $2 failures per lock, $3 now,
/// $4 the first lock and $5 the longest lock (spans), $6 the doublings after which a lock is the
/// longest, $7 the hard limit. The failure that reaches a multiple of $2 locks for $4 doubled
/// once per lock before it, until $6 doublings; from then on for $5. Only integer operations
/// both databases share act on the stored count; the time arithmetic is `Time + Span` and
/// `Span * integer`, which read the same on both (see [`Span`]).
const RESERVE_ATTEMPT: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, CASE WHEN $2 = 1 THEN $3 + $4 END, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = t.failures + 1,
                 locked_until = CASE WHEN (t.failures + 1) % $2 = 0
                     THEN $3 + CASE WHEN (t.failures + 1) / $2 - 1 < $6
                                    THEN $4 * (CAST(1 AS BIGINT)
                                               << CAST((t.failures + 1) / $2 - 1 AS INTEGER))
                                    ELSE $5 END
                     ELSE t.locked_until END,
                 updated_at = $3
             WHERE (t.locked_until IS NULL OR t.locked_until <= $3)
               AND (CAST($7 AS BIGINT) IS NULL OR t.failures < $7)
             RETURNING CAST(failures AS BIGINT)";

/// `take_quota`: $1 key, $2 units per window, $3 now, $4 when a window starting now ends.
const TAKE_QUOTA: &str = "INSERT INTO throttles AS t (key, failures, locked_until, updated_at)
             VALUES ($1, 1, $4, $3)
             ON CONFLICT (key) DO UPDATE SET
                 failures = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                 THEN 1 ELSE t.failures + 1 END,
                 locked_until = CASE WHEN t.locked_until IS NULL OR t.locked_until <= $3
                                     THEN EXCLUDED.locked_until ELSE t.locked_until END,
                 updated_at = $3
             WHERE t.locked_until IS NULL OR t.locked_until <= $3 OR t.failures < $2
             RETURNING CAST(failures AS BIGINT)";

statements! {
    async fn throttle_row(&self, key: &str) -> Result<Option<(Count, Option<DateTime<Utc>>)>> {
        let row: Option<(Count, Option<Time>)> = sqlx::query_as(
            "SELECT CAST(failures AS BIGINT), locked_until FROM throttles WHERE key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(failures, until)| (failures, until.map(|t| t.0))))
    }

    pub async fn reserve_attempt(
        &self,
        key: &str,
        rule: &ThrottleRule,
        now: DateTime<Utc>,
    ) -> Result<Reservation> {
        let failures: Option<Count> = sqlx::query_scalar(RESERVE_ATTEMPT)
            .bind(key)
            .bind(i64::from(rule.every))
            .bind(Time(now))
            .bind(Span {
                micros: rule.first_lock_micros,
            })
            .bind(Span {
                micros: rule.longest_lock_micros(),
            })
            .bind(rule.max_doublings())
            .bind(rule.hard_limit.map(i64::from))
            .fetch_optional(&self.pool)
            .await?;
        match failures {
            Some(failures) => Ok(granted(failures, rule)),
            None => Ok(refusal(self.throttle_row(key).await?, rule, now)),
        }
    }

    pub async fn take_quota(
        &self,
        key: &str,
        max: u32,
        window_micros: i64,
        now: DateTime<Utc>,
    ) -> Result<Result<u32, DateTime<Utc>>> {
        // A window past the last time chrono keeps never ends: past year 262143 either way.
        let ends = now
            .checked_add_signed(chrono::Duration::microseconds(window_micros))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let used: Option<Count> = sqlx::query_scalar(TAKE_QUOTA)
            .bind(key)
            .bind(i64::from(max))
            .bind(Time(now))
            .bind(Time(ends))
            .fetch_optional(&self.pool)
            .await?;
        match used {
            Some(used) => Ok(Ok(u32::try_from(used).unwrap_or(0))),
            None => Ok(Err(window_end(self.throttle_row(key).await?, now))),
        }
    }

    pub async fn throttle_state(
        &self,
        key: &str,
        rule: &ThrottleRule,
        now: DateTime<Utc>,
    ) -> Result<Option<Reservation>> {
        Ok(state_of(self.throttle_row(key).await?, rule, now))
    }

    pub async fn release_attempt(&self, key: &str) -> Result<()> {
        sqlx::query(
            "UPDATE throttles SET failures = failures - 1 WHERE key = $1 AND failures > 0",
        )
        .bind(key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn clear_failures(&self, key: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM throttles WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SqliteStore, Store};

    #[test]
    fn each_lock_lasts_twice_the_one_before_up_to_the_cap() {
        let rule = ThrottleRule {
            every: 10,
            first_lock_micros: 300_000_000,
            max_lock_micros: 86_400_000_000,
            hard_limit: None,
        };
        assert_eq!(rule.lock_after(9), None);
        assert_eq!(rule.lock_after(10), Some(300_000_000));
        assert_eq!(rule.lock_after(11), None);
        assert_eq!(rule.lock_after(20), Some(600_000_000));
        assert_eq!(rule.lock_after(30), Some(1_200_000_000));
        assert_eq!(rule.lock_after(90), Some(76_800_000_000));
        assert_eq!(rule.lock_after(100), Some(86_400_000_000));
        assert_eq!(rule.lock_after(u32::MAX / 10 * 10), Some(86_400_000_000));
        // Under 100 guesses a day once the locks have grown: 10 per lock of at least 24 h.
        let day_of_guesses: u32 = (1..)
            .map(|n| n * 10)
            .scan(0i64, |elapsed, failures| {
                *elapsed += rule.lock_after(failures).unwrap();
                Some(*elapsed)
            })
            .take_while(|elapsed| *elapsed < 86_400_000_000)
            .count() as u32
            * 10
            + 10;
        assert!(day_of_guesses < 100, "{day_of_guesses}");
    }

    #[test]
    fn a_reservation_at_the_hard_limit_freezes_the_key() {
        let rule = ThrottleRule {
            every: 3,
            first_lock_micros: 1,
            max_lock_micros: 2,
            hard_limit: Some(3),
        };
        let now = Utc::now();
        assert_eq!(
            granted(3, &rule),
            Reservation::Granted {
                failures: 3,
                locked: true
            }
        );
        assert_eq!(
            refusal(Some((3, Some(now))), &rule, now),
            Reservation::Frozen
        );
        assert_eq!(state_of(Some((2, None)), &rule, now), None);
        assert_eq!(
            state_of(Some((3, None)), &rule, now),
            Some(Reservation::Frozen)
        );
    }

    /// A store on a private in-memory SQLite database (one connection, so one database).
    async fn memory_store() -> Store {
        let settings = crate::config::DatabaseSettings {
            url: "sqlite::memory:".to_owned().into(),
            max_connections: 1,
            acquire_timeout_secs: 5,
        };
        let store = Store::Sqlite(SqliteStore::connect_lazy("sqlite::memory:", &settings).unwrap());
        store.migrate().await.unwrap();
        store
    }

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_764_633_600_000_000 + micros).unwrap()
    }

    /// Drives one key through twelve failures, each made once the lock before it has ended,
    /// and returns the locks set (a lock is refused until its last microsecond).
    async fn locks_set(store: &Store) -> Vec<i64> {
        let rule = ThrottleRule {
            every: 2,
            first_lock_micros: 3_000_000,
            max_lock_micros: 20_000_000,
            hard_limit: None,
        };
        let mut now = at(0);
        let mut locks = Vec::new();
        for failures in 1..=12 {
            let locked = failures % 2 == 0;
            assert_eq!(
                store.reserve_attempt("login:k", &rule, now).await.unwrap(),
                Reservation::Granted { failures, locked }
            );
            match store.throttle_state("login:k", &rule, now).await.unwrap() {
                None => assert!(!locked, "failure {failures} set no lock"),
                Some(Reservation::Locked(until)) => {
                    assert!(locked, "failure {failures} locked");
                    locks.push((until - now).num_microseconds().unwrap());
                    let just_before = until - chrono::Duration::microseconds(1);
                    assert_eq!(
                        store
                            .reserve_attempt("login:k", &rule, just_before)
                            .await
                            .unwrap(),
                        Reservation::Locked(until)
                    );
                    now = until;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            locks,
            (1..=6)
                .map(|n| rule.lock_after(n * 2).unwrap())
                .collect::<Vec<_>>()
        );
        locks
    }

    #[tokio::test]
    async fn the_reservation_statement_doubles_each_lock_up_to_the_cap_and_refuses_while_it_lasts()
    {
        let locks = locks_set(&memory_store().await).await;
        assert_eq!(
            locks,
            [
                3_000_000, 6_000_000, 12_000_000, 20_000_000, 20_000_000, 20_000_000
            ]
        );
    }

    /// Takes units of a quota of two per five seconds at chosen moments.
    async fn check_quota_windows(store: &Store) {
        let take = |now| store.take_quota("mail:k", 2, 5_000_000, now);
        assert_eq!(take(at(0)).await.unwrap(), Ok(1));
        assert_eq!(take(at(1)).await.unwrap(), Ok(2));
        assert_eq!(take(at(4_999_999)).await.unwrap(), Err(at(5_000_000)));
        assert_eq!(take(at(5_000_000)).await.unwrap(), Ok(1));
        // The new window started with its first use, not where the old one ended.
        assert_eq!(take(at(5_000_001)).await.unwrap(), Ok(2));
        assert_eq!(take(at(9_999_999)).await.unwrap(), Err(at(10_000_000)));
    }

    #[tokio::test]
    async fn a_quota_refuses_past_its_units_until_its_window_ends() {
        check_quota_windows(&memory_store().await).await;
    }
}
