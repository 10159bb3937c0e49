//! bcrypt hashing and verification on a dedicated, bounded pool of low-priority threads, so
//! async workers never stall and a login flood cannot starve the rest of the API.
//!
//! The bcrypt itself is `bcrypt.rs`, private to this module: an implementation that yields the
//! core between rounds, checked against the `bcrypt` crate and the published test vectors.
//! `imported.rs` verifies the hashes of other systems that `authd user import` brings in
//! (Argon2id, Django's pbkdf2_sha256) until a login replaces them with a bcrypt.

mod bcrypt;
mod imported;

pub use imported::{
    ARGON2_MAX_LANES, ARGON2_MAX_MEMORY_KIB, ARGON2_MAX_TIME, ARGON2_MAX_WORK_KIB,
    PBKDF2_MAX_ITERATIONS,
};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use anyhow::Context;
use tokio::sync::oneshot;

use crate::config::PasswordSettings;
use crate::domain::{BCRYPT_MIN_COST, PASSWORD_MAX_BYTES, Password};
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
    /// Where the time of each bcrypt goes (`authd_bcrypt_duration_seconds`), when served.
    metrics: Option<Metrics>,
}

impl PasswordHasher {
    /// The hasher the settings describe (`password.bcrypt_cost`, `password.max_queue`).
    pub async fn from_settings(settings: &PasswordSettings) -> anyhow::Result<PasswordHasher> {
        PasswordHasher::with_queue_limit(settings.bcrypt_cost, settings.max_queue).await
    }

    /// Builds a hasher with at most `max_queue` hashes waiting for a thread (0: refuse whenever
    /// every hashing thread is busy).
    pub async fn with_queue_limit(cost: u32, max_queue: usize) -> anyhow::Result<PasswordHasher> {
        if cost < 10 {
            tracing::warn!(
                cost,
                "password.bcrypt_cost is below 10: fine for tests, weak for production"
            );
        }
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(PasswordHasher {
            cost,
            pool: Arc::new(HashingPool::start(threads, max_queue)?),
            metrics: None,
        })
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

    /// [`check_imported_hash`], and a bcrypt's cost at most [`IMPORTED_BCRYPT_MAX_COST`] (or
    /// the configured cost, when that is higher): every login of the account spends that
    /// bcrypt, wrong passwords included, so a cost-31 hash (36 hours of a core per attempt)
    /// would let two guesses stop every login. The bounds of the other formats are of the same
    /// mind (about a second of a core).
    pub fn check_imported(&self, raw: &str) -> std::result::Result<String, String> {
        let hash = check_imported_hash(raw)?;
        let bound = IMPORTED_BCRYPT_MAX_COST.max(self.cost);
        match bcrypt::cost_of(&hash) {
            Some(cost) if cost > bound => Err(format!(
                "bcrypt cost {cost} is over {bound}: a login (a wrong one too) would spend 2^{cost} rounds; re-hash it at a lower cost, or import the users with passwords to set"
            )),
            _ => Ok(hash),
        }
    }

    /// The cost new hashes get (`password.bcrypt_cost`).
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// Whether a stored hash is anything but a bcrypt at the configured cost (a bcrypt at
    /// another cost, an imported Argon2id or pbkdf2_sha256 hash), so a successful login should
    /// hash the password again.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        bcrypt::cost_of(stored) != Some(self.cost)
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

    /// Checks `candidate` against `stored`, spending at least one bcrypt at the configured cost
    /// whatever `stored` is (see [`verify_hash_at_least`]), so neither an unknown email (no
    /// hash) nor a hash from before `password.bcrypt_cost` was raised answers sooner than a
    /// current one. False when there is no hash.
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
        let stored = stored.map(str::to_owned);
        let candidate = candidate.to_owned();
        let floor = self.cost;
        self.timed("verify", Some(slot), move || {
            Ok(verify_hash_at_least(
                candidate.as_bytes(),
                stored.as_deref(),
                floor,
            ))
        })
        .await
    }
}

/// The highest bcrypt cost an import takes (unless `password.bcrypt_cost` is higher): about a
/// second of a core per check here, like the other formats' bounds.
pub const IMPORTED_BCRYPT_MAX_COST: u32 = 14;

/// The refusal of a string that is none of the hashes authd verifies.
const NOT_A_HASH: &str = "not a bcrypt, argon2id or pbkdf2_sha256 hash";

/// Whether `raw` is a password hash authd can verify, as `authd user import` asks of every
/// row: a bcrypt hash (`$2a$`, `$2b$`, `$2y$`, cost 4 to 31, spelled exactly as bcrypt writes
/// it), an Argon2id PHC string (`$argon2id$v=19$m=..,t=..,p=..$salt$hash`) or a Django
/// `pbkdf2_sha256$iterations$salt$hash`, whose parameters are within what a login may spend
/// ([`ARGON2_MAX_MEMORY_KIB`], [`ARGON2_MAX_TIME`], [`ARGON2_MAX_LANES`],
/// [`ARGON2_MAX_WORK_KIB`], [`PBKDF2_MAX_ITERATIONS`]). `Ok` holds the hash as authd stores it
/// (today the input unchanged); `Err` one line saying why it is refused. Pure and cheap: it
/// parses, it hashes nothing.
pub fn check_imported_hash(raw: &str) -> std::result::Result<String, String> {
    if imported::claims(raw) {
        imported::parse(raw)?;
    } else if raw.starts_with("$2") {
        bcrypt::check(raw)?;
    } else {
        return Err(NOT_A_HASH.into());
    }
    Ok(raw.to_owned())
}

/// Whether `candidate` is the password the hash `stored` was made from: a bcrypt (`$2a$`,
/// `$2b$` or `$2y$`) or an imported hash [`check_imported_hash`] accepts. The check a hashing
/// thread runs for every login (there padded to the configured cost, see
/// [`verify_hash_at_least`]); synchronous and CPU-bound, so async code calls it only through
/// [`PasswordHasher::verify`]. False for anything else (after a bcrypt at the lowest cost).
pub fn verify_hash(candidate: &[u8], stored: &str) -> bool {
    verify_hash_at_least(candidate, Some(stored), BCRYPT_MIN_COST)
}

/// [`verify_hash`], costing at least one bcrypt at `floor` whatever `stored` is: a hash at a
/// lower cost is padded with the rounds it lacks (the difference, not a second bcrypt), and no
/// hash (an unknown email) or one that does not parse costs one bcrypt at `floor`. One fixed
/// floor for every check, rather than a dummy at the cost most stored hashes have: that cost
/// is whatever registrations make it, so whoever registers enough accounts would choose which
/// accounts answer a wrong password sooner than an unknown email.
///
/// An imported hash (Argon2id, pbkdf2_sha256) is checked with its own parameters, then padded
/// with a whole bcrypt at `floor`: its own cost is whatever the system it came from chose, and
/// may be next to nothing. It is checked on the whole candidate, as that system did (the 72-byte
/// limit below is bcrypt's), but a NUL never matches it either: PBKDF2's HMAC pads its key with
/// NULs, so "P\0" would match the hash of "P" there too.
fn verify_hash_at_least(candidate: &[u8], stored: Option<&str>, floor: u32) -> bool {
    if let Some(imported) = stored.and_then(|stored| imported::parse(stored).ok()) {
        let matched = imported.verify(candidate);
        bcrypt::spend(floor);
        return matched && !candidate.contains(&0);
    }
    // Longer inputs can never match a hash authd made, nor can a NUL: bcrypt cycles its key
    // with a NUL after it, so "P\0P" would match the hash of "P", and authd never hashed a
    // NUL. Still spend the same time on them. (Other control characters are refused at
    // registration but still verified, so passwords set before that rule keep working.)
    let usable = candidate.len() <= PASSWORD_MAX_BYTES && !candidate.contains(&0);
    let matched = bcrypt::verify_at_least(if usable { candidate } else { b"" }, stored, floor);
    matched && usable
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
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
        assert!(!hasher.verify("", None).await.unwrap());
        assert!(!hasher.verify("correct horse battery", None).await.unwrap());
    }

    #[tokio::test]
    async fn hashes_past_the_queue_limit_are_refused_as_unavailable() {
        let hasher = PasswordHasher::with_queue_limit(4, 0).await.unwrap();
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

/// Hashes made by other implementations (`scripts/make-hash-fixtures.py`): pyca/bcrypt,
/// argon2-cffi and Django's PBKDF2 hasher, each with the password it was made from.
#[cfg(test)]
mod fixtures {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Fixtures {
        wrong_passwords: Vec<String>,
        hashes: Vec<Fixture>,
    }

    #[derive(serde::Deserialize)]
    struct Fixture {
        scheme: String,
        #[serde(default)]
        cost: u32,
        #[serde(default)]
        params: String,
        password: String,
        hash: String,
    }

    fn load() -> Fixtures {
        serde_json::from_str(include_str!("../../tests/fixtures/hashes.json")).unwrap()
    }

    /// The fixtures that are cheap enough to check many times: bcrypt up to cost 8, and the
    /// imported hashes but argon2-cffi's and Django's defaults (64 MiB x 3, 1,000,000
    /// iterations).
    fn cheap(fixture: &Fixture) -> bool {
        match fixture.scheme.as_str() {
            "bcrypt" => fixture.cost <= 8,
            _ => !fixture.params.contains("default"),
        }
    }

    #[test]
    fn every_fixture_hash_is_accepted_for_import_as_it_is() {
        let fixtures = load();
        assert_eq!(fixtures.hashes.len(), 45);
        for fixture in &fixtures.hashes {
            assert_eq!(
                check_imported_hash(&fixture.hash).as_ref(),
                Ok(&fixture.hash)
            );
        }
        // Every cost 4..=14 in each spelling.
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let costs: Vec<u32> = fixtures
                .hashes
                .iter()
                .filter(|f| f.hash.starts_with(prefix))
                .map(|f| f.cost)
                .collect();
            assert_eq!(costs, (4..=14).collect::<Vec<_>>(), "{prefix}");
        }
    }

    #[tokio::test]
    async fn fixture_hashes_verify_their_password_and_no_wrong_one_on_the_hashing_pool() {
        let fixtures = load();
        let hasher = PasswordHasher::with_queue_limit(4, 32).await.unwrap();
        for fixture in fixtures.hashes.iter().filter(|f| cheap(f)) {
            let stored = Some(fixture.hash.as_str());
            assert!(
                hasher.verify(&fixture.password, stored).await.unwrap(),
                "{}",
                fixture.hash
            );
            for wrong in &fixtures.wrong_passwords {
                assert!(
                    !hasher.verify(wrong, stored).await.unwrap(),
                    "{wrong:?} {}",
                    fixture.hash
                );
            }
        }
    }

    #[tokio::test]
    async fn the_costly_fixture_hashes_verify_once() {
        // bcrypt 9..=14 (once each, one spelling in turn) and the defaults of argon2-cffi and
        // Django: checked here once, not in the tests that run often.
        let fixtures = load();
        let hasher = PasswordHasher::with_queue_limit(4, 32).await.unwrap();
        let costly = fixtures.hashes.iter().filter(|f| !cheap(f));
        for (n, fixture) in costly.enumerate() {
            if fixture.scheme == "bcrypt"
                && !fixture.hash.starts_with(["$2a$", "$2b$", "$2y$"][n % 3])
            {
                continue;
            }
            let stored = Some(fixture.hash.as_str());
            assert!(
                hasher.verify(&fixture.password, stored).await.unwrap(),
                "{}",
                fixture.hash
            );
            if fixture.scheme != "bcrypt" {
                let wrong = &fixtures.wrong_passwords[0];
                assert!(
                    !hasher.verify(wrong, stored).await.unwrap(),
                    "{}",
                    fixture.hash
                );
            }
        }
    }

    #[test]
    fn an_imported_check_costs_a_bcrypt_at_the_floor_as_an_unknown_address_does() {
        let fixtures = load();
        let floor = 6;
        let rounds_of = |candidate: &str, stored: Option<&str>| {
            let before = bcrypt::rounds_on_this_thread();
            let matched = verify_hash_at_least(candidate.as_bytes(), stored, floor);
            (matched, bcrypt::rounds_on_this_thread() - before)
        };
        let unknown = rounds_of("correct horse battery", None);
        assert_eq!(unknown, (false, 1 << floor));
        let imported = fixtures
            .hashes
            .iter()
            .filter(|f| f.scheme != "bcrypt" && cheap(f));
        let mut checked = 0;
        for fixture in imported {
            let stored = Some(fixture.hash.as_str());
            assert_eq!(
                rounds_of(&fixture.password, stored),
                (true, 1 << floor),
                "{}",
                fixture.hash
            );
            for wrong in &fixtures.wrong_passwords {
                assert_eq!(
                    rounds_of(wrong, stored),
                    (false, 1 << floor),
                    "{}",
                    fixture.hash
                );
            }
            checked += 1;
        }
        assert_eq!(checked, 10);
    }

    #[test]
    fn passwords_authd_would_refuse_still_log_in_on_their_imported_hash() {
        // Too short, past 72 bytes, a tab: the systems they come from took them whole, and so
        // does the check; authd cannot make a bcrypt of them, so they keep their imported hash.
        let fixtures = load();
        let unusual: Vec<&Fixture> = fixtures
            .hashes
            .iter()
            .filter(|f| f.password != "correct horse battery")
            .collect();
        assert_eq!(unusual.len(), 6);
        for fixture in unusual {
            assert!(Password::parse(&fixture.password).is_err());
            assert!(verify_hash(fixture.password.as_bytes(), &fixture.hash));
            let mut cut = fixture.password.clone();
            cut.pop();
            assert!(
                !verify_hash(cut.as_bytes(), &fixture.hash),
                "{}",
                fixture.hash
            );
        }
    }

    #[test]
    fn a_nul_never_matches_an_imported_hash() {
        for fixture in load()
            .hashes
            .iter()
            .filter(|f| f.scheme != "bcrypt" && cheap(f))
        {
            for candidate in [
                format!("{}\0", fixture.password),
                format!("{}\0\0", fixture.password),
            ] {
                assert!(
                    !verify_hash(candidate.as_bytes(), &fixture.hash),
                    "{}",
                    fixture.hash
                );
            }
        }
    }

    #[tokio::test]
    async fn every_hash_but_a_bcrypt_at_the_configured_cost_needs_a_rehash() {
        let fixtures = load();
        let hasher = PasswordHasher::with_queue_limit(10, 32).await.unwrap();
        for fixture in &fixtures.hashes {
            let current = fixture.scheme == "bcrypt" && fixture.cost == 10;
            assert_eq!(
                hasher.needs_rehash(&fixture.hash),
                !current,
                "{}",
                fixture.hash
            );
        }
    }
}

/// What `authd user import` is told about a hash, and what a stored one outside the bounds is.
#[cfg(test)]
mod import_checks {
    use super::*;

    const BCRYPT: &str = "$2b$04$cVWp4XaNU8a4v1uMRum2SO026BWLIoQMD/TXg5uZV.0P.uO8m3YEm";

    fn refusal(raw: &str) -> String {
        check_imported_hash(raw).unwrap_err()
    }

    #[test]
    fn strings_of_no_known_scheme_are_refused() {
        for raw in [
            "",
            "correct horse battery",
            " $2b$04$cVWp4XaNU8a4v1uMRum2SO026BWLIoQMD/TXg5uZV.0P.uO8m3YEm",
            "{SSHA}abcdef",
            "md5$salt$hash",
            "sha1$salt$hash",
            "argon2$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        ] {
            assert_eq!(refusal(raw), NOT_A_HASH, "{raw}");
        }
    }

    #[test]
    fn a_bcrypt_cost_outside_4_to_31_is_refused() {
        assert_eq!(
            refusal(&BCRYPT.replacen("$04$", "$03$", 1)),
            "bcrypt cost 3 is below 4"
        );
        assert_eq!(
            refusal(&BCRYPT.replacen("$04$", "$32$", 1)),
            "bcrypt cost 32 is over 31"
        );
        assert_eq!(
            refusal(&BCRYPT.replacen("$04$", "$4$", 1)),
            "bcrypt cost must be two digits"
        );
        let costliest = BCRYPT.replacen("$04$", "$31$", 1);
        assert_eq!(check_imported_hash(&costliest), Ok(costliest));
    }

    #[test]
    fn a_bcrypt_version_other_than_2a_2b_2y_is_refused() {
        for version in ["$2x$", "$2c$"] {
            assert_eq!(
                refusal(&BCRYPT.replacen("$2b$", version, 1)),
                format!("bcrypt version {version} is not verified, only $2a$, $2b$ and $2y$")
            );
        }
    }

    #[test]
    fn a_bcrypt_salt_or_hash_that_bcrypt_would_not_write_is_refused() {
        assert_eq!(
            refusal(&BCRYPT[..59]),
            "bcrypt salt and hash must be 53 characters, not 52"
        );
        let not_base64 = format!("{}+{}", &BCRYPT[..10], &BCRYPT[11..]);
        // The hash's last character with a spare bit set.
        let spare_bit = format!("{}n", &BCRYPT[..59]);
        for raw in [not_base64, spare_bit] {
            assert_eq!(
                refusal(&raw),
                "bcrypt salt or hash is not bcrypt's base64 as bcrypt writes it",
                "{raw}"
            );
        }
    }

    #[test]
    fn imported_hashes_past_the_bounds_are_refused_with_their_reason() {
        let over = "$argon2id$v=19$m=2097152,t=1,p=4$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaA";
        assert_eq!(
            refusal(over),
            "argon2id memory 2097152 KiB is over the 262144 KiB authd verifies"
        );
        let over = "pbkdf2_sha256$20000000$salt$lqqdoUzoS01PIxiUgvUZyn4gl7mDxW1zzkcoTC+rtRg=";
        assert_eq!(
            refusal(over),
            "pbkdf2_sha256 iterations 20000000 are not within 1..=5000000 authd verifies"
        );
    }

    /// An Argon2id PHC string of `password` with `time` passes over 8 KiB: cheap, whatever
    /// the pass count.
    fn argon2id(password: &[u8], time: u32) -> String {
        use base64::Engine;
        let salt = b"saltsaltsaltsalt";
        let params = argon2::Params::new(8, time, 1, Some(32)).unwrap();
        let mut hash = [0u8; 32];
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
            .hash_password_into(password, salt, &mut hash)
            .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        format!(
            "$argon2id$v=19$m=8,t={time},p=1${}${}",
            b64.encode(salt),
            b64.encode(hash)
        )
    }

    #[test]
    fn a_stored_hash_past_the_bounds_never_verifies() {
        // Put in the table by hand rather than imported: the login refuses it as malformed,
        // after the same bcrypt at the floor.
        let within = argon2id(b"correct horse battery", ARGON2_MAX_TIME);
        assert!(check_imported_hash(&within).is_ok());
        assert!(verify_hash(b"correct horse battery", &within));
        let past = argon2id(b"correct horse battery", ARGON2_MAX_TIME + 1);
        assert!(check_imported_hash(&past).is_err());
        let before = bcrypt::rounds_on_this_thread();
        assert!(!verify_hash_at_least(
            b"correct horse battery",
            Some(&past),
            5
        ));
        assert_eq!(bcrypt::rounds_on_this_thread() - before, 1 << 5);
    }
}
