//! bcrypt hashing and verification on a dedicated, bounded pool of low-priority threads, so
//! async workers never stall and a login flood cannot starve the rest of the API.
//!
//! The bcrypt itself is `bcrypt.rs`, private to this module: an implementation that yields the
//! core between rounds, checked against the `bcrypt` crate and the published test vectors.

mod bcrypt;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use anyhow::Context;
use tokio::sync::{OnceCell, oneshot};

use crate::config::PasswordSettings;
use crate::domain::{BCRYPT_MAX_COST, BCRYPT_MIN_COST, PASSWORD_MAX_BYTES, Password};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::policy::check_password;

/// How much less CPU a hashing thread gets than the async workers when both want it. Nice 10
/// gives it a CFS weight of 110 against 1024: an idle server still spends every spare cycle
/// on logins, a busy one answers everything else first.
const HASHING_THREAD_NICE: i32 = 10;

/// Hashes and verifies passwords. One hashing thread per core; at most `max_queue` hashes wait
/// for one, and past that new ones are refused at once instead of piling up.
#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    pool: Arc<HashingPool>,
    /// Verified against when the user does not exist, so unknown emails cost the same time.
    /// Computed in the background at start so it does not delay the first `/healthz`.
    /// Its cost follows the stored hashes (see [`PasswordHasher::match_dummy_cost`]).
    dummy_hash: Arc<std::sync::RwLock<Arc<DummyHash>>>,
    /// Where the time of each bcrypt goes (`authd_bcrypt_duration_seconds`), when served.
    metrics: Option<Metrics>,
}

impl PasswordHasher {
    /// The hasher the settings describe (`password.bcrypt_cost`, `password.max_queue`).
    pub async fn from_settings(settings: &PasswordSettings) -> anyhow::Result<PasswordHasher> {
        PasswordHasher::with_queue_limit(settings.bcrypt_cost, settings.max_queue).await
    }

    /// Builds a hasher with at most `max_queue` hashes waiting for a thread (0: refuse whenever
    /// every hashing thread is busy) and starts computing its dummy hash (one bcrypt at
    /// `cost`) in the background.
    pub async fn with_queue_limit(cost: u32, max_queue: usize) -> anyhow::Result<PasswordHasher> {
        if cost < 10 {
            tracing::warn!(
                cost,
                "password.bcrypt_cost is below 10: fine for tests, weak for production"
            );
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hasher = PasswordHasher {
            cost,
            pool: Arc::new(HashingPool::start(threads, max_queue)?),
            dummy_hash: Arc::new(std::sync::RwLock::new(Arc::new(DummyHash::new(cost)))),
            metrics: None,
        };
        let warm = hasher.clone();
        tokio::spawn(async move {
            if let Err(err) = warm.dummy_hash().await {
                tracing::error!(error = %err, "cannot compute the dummy bcrypt hash");
            }
        });
        Ok(hasher)
    }

    /// Records the time of every bcrypt this hasher runs in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> PasswordHasher {
        self.metrics = Some(metrics);
        self
    }

    /// Takes a place on the hashing pool for a later [`PasswordHasher::verify_admitted`]:
    /// 503 at once when the pool is full.
    pub fn admit(&self) -> Result<Admitted> {
        self.pool.admit()
    }

    /// Runs one bcrypt on the pool, timing it on its thread (queueing excluded).
    async fn timed<T: Send + 'static>(
        &self,
        operation: &'static str,
        slot: Option<Admitted>,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let metrics = self.metrics.clone();
        let slot = match slot {
            Some(slot) => slot,
            None => self.pool.admit()?,
        };
        self.pool
            .run_admitted(slot, move || {
                let started = Instant::now();
                let result = work();
                if let Some(metrics) = metrics {
                    metrics.observe_bcrypt(operation, started.elapsed());
                }
                result
            })
            .await
    }

    async fn dummy_hash(&self) -> Result<Arc<str>> {
        let dummy = self.current_dummy();
        let cost = dummy.cost;
        dummy
            .hash
            .get_or_try_init(|| async move {
                let hash = self
                    .pool
                    .run(move || {
                        bcrypt::hash(b"authd-dummy-password-for-timing", cost)
                            .context("cannot compute the dummy bcrypt hash")
                    })
                    .await?;
                Ok::<_, Error>(Arc::from(hash))
            })
            .await
            .cloned()
    }

    fn current_dummy(&self) -> Arc<DummyHash> {
        match self.dummy_hash.read() {
            Ok(dummy) => dummy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The cost new hashes get (`password.bcrypt_cost`).
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The cost of the hash an unknown email is checked against.
    pub fn dummy_cost(&self) -> u32 {
        self.current_dummy().cost
    }

    /// Makes unknown emails cost what most stored hashes cost, so that after
    /// `password.bcrypt_cost` changes, login time does not tell accounts (old cost) from
    /// unknown addresses (new cost) while the stored hashes are being upgraded.
    pub fn match_dummy_cost(&self, cost: u32) {
        if !(BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cost) || cost == self.dummy_cost() {
            return;
        }
        tracing::info!(
            cost,
            "unknown emails are now checked at the cost of most stored hashes"
        );
        let fresh = Arc::new(DummyHash::new(cost));
        match self.dummy_hash.write() {
            Ok(mut dummy) => *dummy = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
    }

    /// Whether a stored hash was made at another cost than the configured one, so a successful
    /// login should hash the password again.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        bcrypt::cost_of(stored).is_some_and(|cost| cost != self.cost)
    }

    /// Checks the password policy (`crate::policy`) on a hashing thread: zxcvbn can spend a
    /// few hundred milliseconds on a 72-byte password, which must not stall an async worker.
    /// `Ok(Err(why))` when the password is refused.
    pub async fn check_policy(
        &self,
        password: &Password,
        personal_words: Vec<String>,
    ) -> Result<Result<(), String>> {
        let password = password.clone();
        self.pool
            .run(move || {
                let words: Vec<&str> = personal_words.iter().map(String::as_str).collect();
                Ok(check_password(&password, &words))
            })
            .await
    }

    /// Hashes a password (already checked to fit bcrypt's 72 bytes).
    pub async fn hash(&self, password: &Password) -> Result<String> {
        let password = password.clone();
        let cost = self.cost;
        // `Password` guarantees at most 72 bytes, all of which bcrypt uses. (bcrypt's
        // non-truncating variant would refuse exactly 72 because it counts the NUL terminator.)
        self.timed("hash", None, move || {
            bcrypt::hash(password.expose().as_bytes(), cost).context("bcrypt hash failed")
        })
        .await
    }

    /// Checks `candidate` against `stored`, or against the dummy hash when there is no user,
    /// so both paths take the same time. Returns false for the dummy.
    pub async fn verify(&self, candidate: &str, stored: Option<&str>) -> Result<bool> {
        let slot = self.admit()?;
        self.verify_admitted(slot, candidate, stored).await
    }

    /// [`PasswordHasher::verify`] in a place taken earlier with [`PasswordHasher::admit`].
    pub async fn verify_admitted(
        &self,
        slot: Admitted,
        candidate: &str,
        stored: Option<&str>,
    ) -> Result<bool> {
        let is_real = stored.is_some();
        let hash: Arc<str> = match stored {
            Some(stored) => Arc::from(stored),
            None => self.dummy_hash().await?,
        };
        let candidate = candidate.to_owned();
        let matched = self
            .timed("verify", Some(slot), move || {
                Ok(verify_hash(candidate.as_bytes(), &hash))
            })
            .await?;
        Ok(matched && is_real)
    }
}

/// Whether `candidate` is the password the bcrypt hash `stored` (`$2a$`, `$2b$` or `$2y$`) was
/// made from: the check a hashing thread runs for every login. It is one bcrypt at the stored
/// cost, synchronous and CPU-bound, so async code calls it only through
/// [`PasswordHasher::verify`]. False for anything that is not a well-formed bcrypt hash.
pub fn verify_hash(candidate: &[u8], stored: &str) -> bool {
    // Longer inputs can never match a hash authd made, nor can a NUL: bcrypt cycles its key
    // with a NUL after it, so "P\0P" would match the hash of "P", and authd never hashed a
    // NUL. Still spend the same time on them. (Other control characters are refused at
    // registration but still verified, so passwords set before that rule keep working.)
    let usable = candidate.len() <= PASSWORD_MAX_BYTES && !candidate.contains(&0);
    let matched = bcrypt::verify(if usable { candidate } else { b"" }, stored);
    matched && usable
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

/// The hash unknown emails are verified against, computed once per cost.
struct DummyHash {
    cost: u32,
    hash: OnceCell<Arc<str>>,
}

impl DummyHash {
    fn new(cost: u32) -> DummyHash {
        DummyHash {
            cost,
            hash: OnceCell::new(),
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Threads that do nothing but hash, fed by a queue whose length is bounded at submission.
/// The threads stop when the last `PasswordHasher` clone is dropped (the sender goes with it).
struct HashingPool {
    queue: Sender<Job>,
    /// Jobs accepted and not finished: running plus waiting.
    admitted: Arc<AtomicUsize>,
    /// Most jobs `admitted` may count: one running per thread plus `max_queue` waiting.
    limit: usize,
}

impl HashingPool {
    fn start(threads: usize, max_queue: usize) -> anyhow::Result<HashingPool> {
        let (queue, jobs) = std::sync::mpsc::channel::<Job>();
        let jobs = Arc::new(Mutex::new(jobs));
        for index in 0..threads {
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("authd-bcrypt-{index}"))
                .spawn(move || work(&jobs))
                .context("cannot start a password hashing thread")?;
        }
        Ok(HashingPool {
            queue,
            admitted: Arc::new(AtomicUsize::new(0)),
            limit: threads + max_queue,
        })
    }

    /// Runs `work` on a hashing thread, or refuses at once when every thread is busy and
    /// `max_queue` jobs already wait.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = self.admit()?;
        self.run_admitted(slot, work).await
    }

    /// Takes a place in the pool, or refuses at once when every thread is busy and `max_queue`
    /// jobs already wait. Taken before anything else is counted, so a refusal costs nothing.
    fn admit(&self) -> Result<Admitted> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("password hashing queue is full: refusing");
            return Err(Error::Unavailable("password hasher"));
        }
        Ok(Admitted(self.admitted.clone()))
    }

    /// Runs `work` on a hashing thread in the place `slot` holds.
    async fn run_admitted<T: Send + 'static>(
        &self,
        slot: Admitted,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move || {
            // The request was dropped (client gone, timeout) while it waited: skip the work.
            if reply.is_closed() {
                return;
            }
            let result = work();
            // Free the slot before answering, so whoever reads the answer finds room again.
            drop(slot);
            let _ = reply.send(result);
        });
        self.queue
            .send(job)
            .map_err(|_| anyhow::anyhow!("password hashing threads are gone"))?;
        Ok(answer.await.context("password task panicked")??)
    }
}

/// One accepted job's place in the pool; given back when the job is done, skipped or panics.
pub struct Admitted(Arc<AtomicUsize>);

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admitted")
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The loop of one hashing thread: take the next job, run it, until the pool is dropped.
fn work(jobs: &Mutex<Receiver<Job>>) {
    lower_thread_priority(HASHING_THREAD_NICE);
    loop {
        // Hold the lock only while waiting for a job, never while hashing.
        let job = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        // A panicking job drops its reply, which its caller reports; the thread lives on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

/// Makes the calling thread yield the CPU to nice-0 threads. On Linux the nice value is per
/// thread, so this touches only the hashing thread. Raising one's own nice value needs no
/// privilege; if it fails anyway, hashing still works, only at normal priority.
#[cfg(target_os = "linux")]
fn lower_thread_priority(nice: i32) {
    const PRIO_PROCESS: i32 = 0;
    unsafe extern "C" {
        fn setpriority(which: i32, who: u32, prio: i32) -> i32;
    }
    // SAFETY: setpriority only reads its integer arguments; who = 0 is the calling thread.
    if unsafe { setpriority(PRIO_PROCESS, 0, nice) } != 0 {
        tracing::debug!("cannot lower the priority of a password hashing thread");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority(_nice: i32) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify_round_trips_and_rejects_others() {
        let hasher = PasswordHasher::with_queue_limit(4, 32).await.unwrap();
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
    async fn the_policy_runs_on_a_hashing_thread_and_reports_refusals() {
        let hasher = PasswordHasher::with_queue_limit(4, 32).await.unwrap();
        let common = Password::parse("p@ssw0rd").unwrap();
        let refused = hasher.check_policy(&common, Vec::new()).await.unwrap();
        assert!(refused.unwrap_err().contains("common"));
        let own = Password::parse("ada.lovelace").unwrap();
        let refused = hasher
            .check_policy(&own, vec!["ada.lovelace".into()])
            .await
            .unwrap();
        assert_eq!(
            refused.unwrap_err(),
            "must not be your email address or name"
        );
        let thread = hasher
            .pool
            .run(|| Ok(std::thread::current().name().map(str::to_owned)))
            .await
            .unwrap();
        assert!(thread.unwrap().starts_with("authd-bcrypt-"));
        let fine = Password::parse("correct horse battery").unwrap();
        assert_eq!(
            hasher.check_policy(&fine, Vec::new()).await.unwrap(),
            Ok(())
        );
    }

    #[test]
    fn verify_hash_refuses_what_authd_never_hashed() {
        let stored = bcrypt::hash(b"password", 4).unwrap();
        assert!(verify_hash(b"password", &stored));
        assert!(!verify_hash(b"passwore", &stored));
        // bcrypt itself takes "P\0P" for "P" (see bcrypt.rs); authd never hashed a NUL.
        assert!(!verify_hash(b"password\0password", &stored));
        let longest = [b'x'; PASSWORD_MAX_BYTES];
        let stored = bcrypt::hash(&longest, 4).unwrap();
        assert!(verify_hash(&longest, &stored));
        // bcrypt ignores a 73rd byte; authd never hashed 73 bytes.
        assert!(!verify_hash(&[b'x'; PASSWORD_MAX_BYTES + 1], &stored));
        assert!(!verify_hash(b"password", "not a hash"));
    }

    #[tokio::test]
    async fn verifying_without_a_user_is_always_false() {
        let hasher = PasswordHasher::with_queue_limit(4, 32).await.unwrap();
        assert!(
            !hasher
                .verify("authd-dummy-password-for-timing", None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn hashes_past_the_queue_limit_are_refused_as_unavailable() {
        let hasher = PasswordHasher::with_queue_limit(4, 0).await.unwrap();
        hasher.dummy_hash().await.unwrap();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        // Occupy every thread, then one more hash finds no thread free and no room to wait.
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let mut busy = Vec::new();
        for _ in 0..threads {
            let (started, running) = oneshot::channel();
            let gate = gate.clone();
            let pool = hasher.pool.clone();
            busy.push(tokio::spawn(async move {
                pool.run(move || {
                    let _ = started.send(());
                    let _ = gate.lock().unwrap().recv();
                    Ok(())
                })
                .await
            }));
            running.await.unwrap();
        }
        let password = Password::parse("correct horse battery").unwrap();
        assert!(matches!(
            hasher.hash(&password).await,
            Err(Error::Unavailable("password hasher"))
        ));
        // The password policy (zxcvbn) is admitted the same way: it never runs elsewhere.
        assert!(matches!(
            hasher.check_policy(&password, Vec::new()).await,
            Err(Error::Unavailable("password hasher"))
        ));
        for _ in 0..threads {
            release.send(()).unwrap();
        }
        for task in busy {
            task.await.unwrap().unwrap();
        }
        // Room again once the threads are free.
        assert!(hasher.hash(&password).await.is_ok());
    }
}
