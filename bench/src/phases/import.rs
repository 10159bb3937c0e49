//! The `import` phase: `authd user import` of `--import-rows` users (default a million) with
//! precomputed bcrypt hashes, as an operator moving from another system runs it: rows per
//! second, wall time, the importer's peak resident memory and CPU, and PostgreSQL's CPU
//! meanwhile. Issue 25's target: a million rows within 60 s on this 2-core machine.
//!
//! Untimed, before the imports: one file of the users as JSON Lines and one of the same users
//! as CSV, in a work directory of the phase (generated here: realistic names, distinct
//! addresses, eight bcrypt hashes made once at cost 4 and shared, since an import checks a
//! hash's form and never verifies it), and a database of its own beside the bench's on the
//! same server, migrated by `authd migrate` (so every import starts on an empty `users` table,
//! and the other phases' database stays as they expect it).
//!
//! Timed, each a child process of the bench (the authd binary under test, in a session of its
//! own), from its start to its end: the JSON Lines file; the same file again, where every row
//! is already there and is skipped (the idempotent path of an import run twice); then, after
//! `TRUNCATE users`, the CSV file. The peak resident memory and CPU times are the child's own,
//! from `wait4` (`ru_maxrss`). After each, `SELECT count(*) FROM users` must be the file's
//! count and the importer must have exited 0 (it exits 1 when it refused a row), so a broken
//! import fails the phase.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use sqlx::Connection;

use crate::database::Database;
use crate::figures::ImportRun;
use crate::process::{migrate, random_secret, run_to_end};
use crate::workload::{Run, Workload};

pub async fn measure(w: &Workload, run: &mut Run) -> Result<()> {
    if !w.options.runs_phase("import") {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!(
        "authd-bench-import-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).context("cannot create the import's work directory")?;
    let database = w.database.sibling("import").await?;
    let result = imports(w, run, &database, &dir).await;
    if let Err(err) = database.drop_it().await {
        eprintln!("warning: could not drop the import's database: {err:#}");
    }
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        // The files go (they are large); the importer's output stays, to read.
        Err(_) => {
            for name in [JSONL, CSV] {
                let _ = std::fs::remove_file(dir.join(name));
            }
            eprintln!("the importer's output is kept in {}", dir.display());
        }
    }
    result
}

const JSONL: &str = "users.jsonl";
const CSV: &str = "users.csv";

async fn imports(w: &Workload, run: &mut Run, database: &Database, dir: &Path) -> Result<()> {
    let rows = w.options.import_rows;
    let generating = Instant::now();
    let hashes = bcrypt_hashes().await?;
    let (jsonl, csv) = (dir.join(JSONL), dir.join(CSV));
    write_files(rows, &hashes, &jsonl, &csv)?;
    println!(
        "import: {rows} users written as JSON Lines ({:.0} MB) and CSV ({:.0} MB) in {:.1} s",
        file_bytes(&jsonl) as f64 / 1e6,
        file_bytes(&csv) as f64 / 1e6,
        generating.elapsed().as_secs_f64()
    );
    migrate(&w.options.authd, database, dir)?;

    let first = import(w, database, dir, &jsonl, run).await?;
    expect_users(database, rows, "the JSON Lines import").await?;
    let again = import(w, database, dir, &jsonl, run).await?;
    expect_users(database, rows, "the JSON Lines import run again").await?;
    database
        .execute("TRUNCATE users CASCADE")
        .await
        .context("cannot empty the import's database")?;
    expect_users(database, 0, "TRUNCATE").await?;
    let csv_run = import(w, database, dir, &csv, run).await?;
    expect_users(database, rows, "the CSV import").await?;

    let f = &mut run.figures;
    f.import_rows = rows;
    f.import_jsonl = first;
    f.import_again = again;
    f.import_csv = csv_run;
    Ok(())
}

/// One `authd user import FILE` against `database`, timed from the child's start to its end.
async fn import(
    w: &Workload,
    database: &Database,
    dir: &Path,
    file: &Path,
    run: &mut Run,
) -> Result<ImportRun> {
    let log_path = dir.join("import.log");
    let log = std::fs::File::create(&log_path).context("cannot create the importer's log")?;
    let mut command = Command::new(&w.options.authd);
    command
        .args(["user", "import"])
        .arg(file)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env("AUTHD_DATA_DIR", dir.join("data"))
        .env("AUTHD_DATABASE__URL", &database.url)
        .env("AUTHD_JWT__SECRET", random_secret())
        .env("AUTHD_PASSWORD__BCRYPT_COST", w.options.cost.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let (before, postgres_before) = (w.cpu.sample(), w.cpu.postgres_with_exited());
    let ended = run_to_end(command, "authd user import").await?;
    let (after, postgres_after) = (w.cpu.sample(), w.cpu.postgres_with_exited());
    let postgres = postgres_after - postgres_before;
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    ensure!(
        ended.exited_zero(),
        "authd user import {} ended with wait status {:#x}:\n{output}",
        file.display(),
        ended.status
    );
    // The machine's busy time less what the bench's processes, PostgreSQL and the importer
    // took.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let ours: f64 = [0, 1, 3].iter().map(|&i| after[i] - before[i]).sum::<f64>() + postgres;
    let busy = after[4] - before[4];
    let other = (busy - ours - ended.cpu_secs) / (ended.wall.as_secs_f64() * cores);
    run.other_load(other.clamp(0.0, 1.0));
    let secs = ended.wall.as_secs_f64();
    Ok(ImportRun {
        file_bytes: file_bytes(file),
        secs,
        rows_per_sec: w.options.import_rows as f64 / secs,
        peak_rss_kib: ended.max_rss_kib,
        importer_cpu_secs: ended.cpu_secs,
        postgres_cpu_secs: postgres,
    })
}

/// Fails unless the import's database holds `expected` users.
async fn expect_users(database: &Database, expected: u64, after: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(&database.url).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut conn)
        .await
        .context("cannot count the imported users")?;
    conn.close().await?;
    ensure!(
        u64::try_from(count).ok() == Some(expected),
        "after {after} the database holds {count} users, not {expected}"
    );
    Ok(())
}

fn file_bytes(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Eight bcrypt hashes at cost 4 (authd's own bcrypt), of eight passwords.
async fn bcrypt_hashes() -> Result<Vec<String>> {
    let hasher = authd::password::PasswordHasher::with_queue_limit(4, 8).await?;
    let mut hashes = Vec::new();
    for i in 0..8 {
        let password = authd::domain::Password::parse(&format!("Imported-Passphrase-{i}-Otter"))
            .map_err(|err| anyhow!("the import's password: {err}"))?;
        hashes.push(hasher.hash(&password).await?);
    }
    Ok(hashes)
}

/// First names, some beyond ASCII, as people spell them.
const FIRST: [&str; 48] = [
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Sophia",
    "Elijah",
    "Mia",
    "James",
    "Charlotte",
    "Lucas",
    "Zoë",
    "Mateo",
    "Chloé",
    "Léa",
    "José",
    "María",
    "Søren",
    "Björn",
    "Ängla",
    "Łukasz",
    "Małgorzata",
    "Jürgen",
    "François",
    "Siobhán",
    "Ngozi",
    "Chidi",
    "Aiko",
    "Haruto",
    "Wei",
    "Priya",
    "Arjun",
    "Fatima",
    "Omar",
    "Yusuf",
    "Anaïs",
    "Dmitri",
    "Olga",
    "Kwame",
    "Thandiwe",
    "Mei",
    "Jae-won",
    "Nadia",
    "Tomás",
    "Inés",
    "Ravi",
    "Ebony",
];

/// Last names, with spaces, apostrophes and hyphens as they come.
const LAST: [&str; 48] = [
    "Smith",
    "Johnson",
    "García",
    "Müller",
    "Nguyen",
    "Kowalski",
    "O'Brien",
    "van der Berg",
    "Rossi",
    "Dubois",
    "Jensen",
    "Andersson",
    "Nowak",
    "Fernández",
    "Silva",
    "Kim",
    "Tanaka",
    "Chen",
    "Patel",
    "Okafor",
    "Mensah",
    "Ivanova",
    "Schmidt",
    "López",
    "Martin",
    "Brown",
    "Wilson",
    "Taylor",
    "Hernández",
    "Moreau",
    "Larsen",
    "Novák",
    "Horvath",
    "Papadopoulos",
    "Yılmaz",
    "Haddad",
    "Khan",
    "Singh",
    "da Costa",
    "Ó Súilleabháin",
    "Murphy",
    "Walsh",
    "Lefèvre",
    "Bianchi",
    "Petrov",
    "Adeyemi",
    "Smith-Jones",
    "MacDonald",
];

const DOMAINS: [&str; 6] = [
    "example.com",
    "example.org",
    "example.net",
    "mail.example.com",
    "corp.example.org",
    "university.example.edu",
];

/// The `i`th user's fields: a name, a distinct address made of it, one of the hashes, 2FA for
/// one in ten, a verified address for four in five, created over the last five years.
struct User<'a> {
    email: String,
    hash: &'a str,
    first: &'static str,
    last: &'static str,
    two_factor: bool,
    verified: bool,
    created_at: String,
}

fn user(i: u64, hashes: &[String], epoch: chrono::DateTime<chrono::Utc>) -> User<'_> {
    // A cheap, fixed scramble of the index, so neighbours do not share every field.
    let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let first = FIRST[(mix % FIRST.len() as u64) as usize];
    let last = LAST[((mix >> 8) % LAST.len() as u64) as usize];
    let domain = DOMAINS[((mix >> 16) % DOMAINS.len() as u64) as usize];
    let local: String = format!("{first}.{last}")
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | 'A'..='Z' | '.' | '-' => Some(c.to_ascii_lowercase()),
            ' ' | '\'' => None,
            _ => Some('x'),
        })
        .collect();
    let seconds_ago = (mix >> 24) % (5 * 365 * 86_400);
    let created = epoch - chrono::Duration::seconds(seconds_ago as i64);
    User {
        email: format!("{local}.{i}@{domain}"),
        hash: &hashes[(i % hashes.len() as u64) as usize],
        first,
        last,
        two_factor: mix.is_multiple_of(10),
        verified: !mix.is_multiple_of(5),
        created_at: created.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }
}

/// Writes the same `rows` users to `jsonl` and to `csv` (with a header row).
fn write_files(rows: u64, hashes: &[String], jsonl: &PathBuf, csv: &PathBuf) -> Result<()> {
    let create = |path: &PathBuf| -> Result<BufWriter<std::fs::File>> {
        Ok(BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ))
    };
    let (mut j, mut c) = (create(jsonl)?, create(csv)?);
    writeln!(
        c,
        "email,password_hash,first_name,last_name,two_factor_enabled,email_verified,created_at"
    )?;
    let epoch = chrono::Utc::now() - chrono::Duration::days(1);
    for i in 1..=rows {
        let u = user(i, hashes, epoch);
        serde_json::to_writer(
            &mut j,
            &serde_json::json!({
                "email": u.email,
                "password_hash": u.hash,
                "first_name": u.first,
                "last_name": u.last,
                "two_factor_enabled": u.two_factor,
                "email_verified": u.verified,
                "created_at": u.created_at,
            }),
        )?;
        j.write_all(b"\n")?;
        // No field has a comma, a quote or a line break, so none needs quoting.
        writeln!(
            c,
            "{},{},{},{},{},{},{}",
            u.email, u.hash, u.first, u.last, u.two_factor, u.verified, u.created_at
        )?;
    }
    j.flush()?;
    c.flush()?;
    Ok(())
}
