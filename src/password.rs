//! bcrypt hashing and verification, run on the blocking pool so async workers never stall.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{OnceCell, Semaphore};

use crate::domain::{PASSWORD_MAX_BYTES, Password};
use crate::error::Result;

/// Hashes and verifies passwords. At most one bcrypt per core runs at once; the rest wait their turn.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    permits: Arc<Semaphore>,
    /// Verified against when the user does not exist, so unknown emails cost the same time.
    /// Computed in the background at start so it does not delay the first `/healthz`.
    dummy_hash: Arc<OnceCell<Arc<str>>>,
}

impl PasswordHasher {
    /// Builds a hasher and starts computing its dummy hash (one bcrypt at `cost`) in the background.
    pub async fn new(cost: u32) -> anyhow::Result<PasswordHasher> {
        if cost < 10 {
            tracing::warn!(
                cost,
                "password.bcrypt_cost is below 10: fine for tests, weak for production"
            );
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hasher = PasswordHasher {
            cost,
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: Arc::new(OnceCell::new()),
        };
        let warm = hasher.clone();
        tokio::spawn(async move {
            if let Err(err) = warm.dummy_hash().await {
                tracing::error!(error = %err, "cannot compute the dummy bcrypt hash");
            }
        });
        Ok(hasher)
    }

    async fn dummy_hash(&self) -> Result<Arc<str>> {
        let cost = self.cost;
        self.dummy_hash
            .get_or_try_init(|| async move {
                let hash = tokio::task::spawn_blocking(move || {
                    bcrypt::hash("authd-dummy-password-for-timing", cost)
                })
                .await
                .context("dummy hash task failed")?
                .context("cannot compute the dummy bcrypt hash")?;
                Ok::<_, crate::error::Error>(Arc::from(hash))
            })
            .await
            .cloned()
    }

    /// Hashes a password (already checked to fit bcrypt's 72 bytes).
    pub async fn hash(&self, password: &Password) -> Result<String> {
        let password = password.clone();
        let cost = self.cost;
        // `Password` guarantees at most 72 bytes, all of which bcrypt uses. (bcrypt's
        // non-truncating variant would refuse exactly 72 because it counts the NUL terminator.)
        self.run_blocking(move || {
            bcrypt::hash(password.expose(), cost).context("bcrypt hash failed")
        })
        .await
    }

    /// Checks `candidate` against `stored`, or against the dummy hash when there is no user,
    /// so both paths take the same time. Returns false for the dummy.
    pub async fn verify(&self, candidate: &str, stored: Option<&str>) -> Result<bool> {
        let is_real = stored.is_some();
        let hash: Arc<str> = match stored {
            Some(stored) => Arc::from(stored),
            None => self.dummy_hash().await?,
        };
        // Longer inputs can never match a hash authd made; still spend the same time on them.
        let usable = candidate.len() <= PASSWORD_MAX_BYTES;
        let candidate = if usable {
            candidate.to_owned()
        } else {
            String::new()
        };
        let matched = self
            .run_blocking(move || Ok(bcrypt::verify(candidate, &hash).unwrap_or(false)))
            .await?;
        Ok(matched && is_real && usable)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher closed")?;
        let result = tokio::task::spawn_blocking(work)
            .await
            .context("password task panicked")??;
        Ok(result)
    }
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify_round_trips_and_rejects_others() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let password = Password::parse("correct horse battery").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hash.starts_with("$2"));
        assert!(
            hasher
                .verify("correct horse battery", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse battery", Some(&hash))
                .await
                .unwrap()
        );
        assert!(!hasher.verify(&"x".repeat(100), Some(&hash)).await.unwrap());
        let longest = Password::parse(&"x".repeat(72)).unwrap();
        let hash = hasher.hash(&longest).await.unwrap();
        assert!(hasher.verify(&"x".repeat(72), Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&"x".repeat(71), Some(&hash)).await.unwrap());
    }

    #[tokio::test]
    async fn verifying_without_a_user_is_always_false() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        assert!(
            !hasher
                .verify("authd-dummy-password-for-timing", None)
                .await
                .unwrap()
        );
    }
}
