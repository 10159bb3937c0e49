//! The verified-token cache: access tokens that passed verification, remembered until their
//! `exp` so a token seen again is not verified again.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Subject;

/// Most access tokens remembered as verified. Only tokens that passed verification get in, so
/// the set grows no faster than logins (bcrypt-bound, a few per second per core) and holds the
/// tokens in use; each leaves at its `exp`, and past the bound `moka` evicts the least used.
pub(super) const MAX_VERIFIED_TOKENS: u64 = 10_000;

/// What the cache keeps of a verified access token besides the token itself.
#[derive(Debug, Clone)]
pub(super) struct VerifiedToken {
    pub(super) subject: Subject,
    pub(super) exp: i64,
}

/// Verified access tokens, keyed by the whole token: a token reusing a known signature with
/// other claims or another header is another key, and is verified in full.
#[derive(Clone)]
pub(super) struct VerifiedTokens {
    tokens: moka::sync::Cache<Box<str>, VerifiedToken>,
}

/// Each remembered token leaves the cache at its own `exp`.
struct UntilExp;

impl moka::Expiry<Box<str>, VerifiedToken> for UntilExp {
    fn expire_after_create(
        &self,
        _token: &Box<str>,
        known: &VerifiedToken,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(until(known.exp))
    }

    fn expire_after_update(
        &self,
        _token: &Box<str>,
        known: &VerifiedToken,
        _updated_at: std::time::Instant,
        _until_now: Option<Duration>,
    ) -> Option<Duration> {
        Some(until(known.exp))
    }
}

/// How long from now until `exp` (Unix seconds); zero if it has passed.
fn until(exp: i64) -> Duration {
    let exp = Duration::from_secs(u64::try_from(exp).unwrap_or(0));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    exp.saturating_sub(now)
}

impl VerifiedTokens {
    pub(super) fn with_capacity(capacity: u64) -> VerifiedTokens {
        VerifiedTokens {
            tokens: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// The subject and expiry of `token` if it was verified before.
    pub(super) fn get(&self, token: &str) -> Option<VerifiedToken> {
        self.tokens.get(token)
    }

    pub(super) fn insert(&self, token: &str, subject: Subject, exp: i64) {
        self.tokens
            .insert(token.into(), VerifiedToken { subject, exp });
    }

    pub(super) fn clear(&self) {
        self.tokens.invalidate_all();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> u64 {
        self.tokens.run_pending_tasks();
        self.tokens.entry_count()
    }
}
