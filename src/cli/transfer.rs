//! `authd user import` and `authd user export`: users in and out as JSON Lines or CSV,
//! streaming (memory is one batch, whatever the file's size), through the same core checks as
//! registration. Bad rows do not stop an import: each is reported with its line and reason.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};

use super::{UserError, output::printable, with_auth};
use crate::auth::{Auth, ImportOptions, ImportRow, Refusal};
use crate::config::Settings;
use crate::store::{ExportCursor, ExportedUser, ImportCounts, ImportedUser};

/// Rows written per transaction.
const BATCH_ROWS: usize = 1000;

/// The longest line of a JSON Lines file (or CSV record) taken; a longer one is refused
/// without being held in memory whole.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// How often progress is printed when standard error is not a terminal.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The columns of the CSV form, in order (also the fields of a JSON Lines row).
const COLUMNS: [&str; 8] = [
    "email",
    "password_hash",
    "first_name",
    "last_name",
    "two_factor_enabled",
    "email_verified",
    "disabled",
    "created_at",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FileFormat {
    /// JSON Lines: one JSON object per line.
    Jsonl,
    /// CSV with a header row naming the columns.
    Csv,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file to read, or `-` for standard input.
    file: PathBuf,
    /// The file's format; default: by its extension (`.jsonl`, `.ndjson` or `.json`: JSON Lines;
    /// `.csv`: CSV). Required for standard input.
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
    /// Users already there take the row's profile and password hash (their sessions end when
    /// the hash changes); without it they are skipped and counted.
    #[arg(long)]
    update: bool,
    /// Do not check plain passwords against the password policy (length and characters still
    /// are).
    #[arg(long)]
    skip_policy: bool,
    /// Also write each refused row to FILE as JSON Lines (the row's fields plus `line` and
    /// `error`), to fix and import again.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The output's format.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: FileFormat,
    /// Write to FILE (created; an existing file is not overwritten) instead of standard output.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Include each user's password hash (what an import elsewhere needs). The output is then
    /// as sensitive as the database: a file is created readable by its owner only.
    #[arg(long)]
    include_password_hashes: bool,
}

/// Where rows come from: one line (JSON Lines) or record (CSV) at a time.
enum Rows {
    Jsonl {
        reader: Box<dyn BufRead>,
        line: u64,
    },
    Csv {
        reader: csv::Reader<Box<dyn Read>>,
        headers: csv::StringRecord,
        /// Where reading must stop ([`Counted`]), moved on after each record.
        limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    },
}

/// One row as read: its line, what the file said (for the errors file), and the row or why it
/// could not be read.
struct ReadRow {
    line: u64,
    raw: Value,
    row: Result<ImportRow, String>,
}

impl Rows {
    fn open(
        input: Box<dyn Read>,
        format: FileFormat,
        limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Rows> {
        Ok(match format {
            FileFormat::Jsonl => Rows::Jsonl {
                reader: Box::new(BufReader::with_capacity(256 * 1024, input)),
                line: 0,
            },
            FileFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(false)
                    .trim(csv::Trim::Headers)
                    .from_reader(input);
                let headers = reader
                    .headers()
                    .map_err(|err| UserError(format!("the CSV header cannot be read: {err}")))?
                    .clone();
                if !headers.iter().any(|h| h == "email") {
                    return Err(UserError(
                        "the CSV header has no `email` column (columns: email, password_hash or password, first_name, last_name, two_factor_enabled, email_verified, created_at)"
                            .to_owned(),
                    )
                    .into());
                }
                Rows::Csv {
                    reader,
                    headers,
                    limit,
                }
            }
        })
    }

    /// The next row, or None at the end. An error reading the input itself (not a bad row)
    /// stops the import.
    fn next(&mut self) -> anyhow::Result<Option<ReadRow>> {
        match self {
            Rows::Jsonl { reader, line } => loop {
                *line += 1;
                let mut bytes = Vec::new();
                let read = reader
                    .by_ref()
                    .take(MAX_LINE_BYTES as u64 + 1)
                    .read_until(b'\n', &mut bytes)
                    .context("cannot read the input")?;
                if read == 0 {
                    return Ok(None);
                }
                if bytes.len() > MAX_LINE_BYTES && !bytes.ends_with(b"\n") {
                    // Skip the rest of the line without keeping it.
                    loop {
                        let buffer = reader.fill_buf().context("cannot read the input")?;
                        if buffer.is_empty() {
                            break;
                        }
                        match buffer.iter().position(|b| *b == b'\n') {
                            Some(end) => {
                                reader.consume(end + 1);
                                break;
                            }
                            None => {
                                let all = buffer.len();
                                reader.consume(all);
                            }
                        }
                    }
                    return Ok(Some(ReadRow {
                        line: *line,
                        raw: Value::Null,
                        row: Err(format!("the line is longer than {MAX_LINE_BYTES} bytes")),
                    }));
                }
                let Ok(text) = std::str::from_utf8(&bytes) else {
                    // Not changed into something else: the row says what the file says or nothing.
                    return Ok(Some(ReadRow {
                        line: *line,
                        raw: Value::Null,
                        row: Err("the line is not UTF-8".to_owned()),
                    }));
                };
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                // The text itself, for the errors file, when it is no object to fix field by field.
                let unread = |reason: String| {
                    let mut raw = Map::new();
                    raw.insert("text".to_owned(), Value::String(text.to_owned()));
                    Ok(Some(ReadRow {
                        line: *line,
                        raw: Value::Object(raw),
                        row: Err(reason),
                    }))
                };
                let raw: Value = match serde_json::from_str(text) {
                    Ok(value @ Value::Object(_)) => value,
                    Ok(_) => return unread("the line is not a JSON object".to_owned()),
                    Err(err) => return unread(format!("the line is not JSON: {err}")),
                };
                let row = serde_json::from_value::<ImportRow>(raw.clone())
                    .map_err(|err| format!("a field has the wrong type: {err}"));
                return Ok(Some(ReadRow {
                    line: *line,
                    raw,
                    row,
                }));
            },
            Rows::Csv {
                reader,
                headers,
                limit,
            } => {
                let mut record = csv::StringRecord::new();
                let start_line = reader.position().line();
                let read = reader.read_record(&mut record);
                limit.store(
                    reader.position().byte() + CSV_READ_AHEAD,
                    std::sync::atomic::Ordering::Relaxed,
                );
                match read {
                    Ok(false) => Ok(None),
                    Ok(true) => {
                        let line = record.position().map_or(0, |p| p.line());
                        let mut raw = Map::new();
                        for (name, value) in headers.iter().zip(record.iter()) {
                            raw.insert(name.to_owned(), Value::String(value.to_owned()));
                        }
                        let row = if record.as_slice().len() > MAX_LINE_BYTES {
                            Err(format!("the record is longer than {MAX_LINE_BYTES} bytes"))
                        } else {
                            record
                                .deserialize::<ImportRow>(Some(headers))
                                .map_err(|err| format!("a field cannot be read: {err}"))
                        };
                        // Empty cells are absent fields.
                        let row = row.map(|mut row| {
                            for field in [
                                &mut row.email,
                                &mut row.password_hash,
                                &mut row.password,
                                &mut row.first_name,
                                &mut row.last_name,
                                &mut row.created_at,
                            ] {
                                if field.as_deref() == Some("") {
                                    *field = None;
                                }
                            }
                            row
                        });
                        Ok(Some(ReadRow {
                            line,
                            raw: Value::Object(raw),
                            row,
                        }))
                    }
                    Err(err) => {
                        let line = err.position().map_or(start_line, |p| p.line());
                        if let csv::ErrorKind::Io(io) = err.kind() {
                            if io.get_ref().is_some_and(|e| e.is::<RecordTooLong>()) {
                                // Nothing after it can be read as records: an unterminated
                                // quote, most likely. The rows before it are in.
                                return Err(UserError(format!(
                                    "line {line}: a CSV record runs on for more than {MAX_LINE_BYTES} bytes (an unterminated quote?): the import stops there"
                                ))
                                .into());
                            }
                            return Err(anyhow::Error::new(err).context("cannot read the input"));
                        }
                        Ok(Some(ReadRow {
                            line,
                            raw: Value::Null,
                            row: Err(format!("the record cannot be read: {err}")),
                        }))
                    }
                }
            }
        }
    }
}

/// What an import prints as it goes: a bar on a terminal, a line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(total) => indicatif::ProgressBar::new(total),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} (ETA {eta}) {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, rows: u64, bytes: u64) {
        let rate = rows as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        match &self.bar {
            Some(bar) => {
                bar.set_position(bytes);
                bar.set_message(format!("{rows} rows, {rate:.0} rows/s"));
            }
            None if self.last_line.elapsed() >= PROGRESS_EVERY => {
                eprintln!("read {rows} rows ({rate:.0} rows/s)");
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    /// Prints a line without breaking the bar.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Counts the bytes read through it, for the progress bar.
/// Counts the bytes read through it, for the progress bar, and stops at `limit`: the CSV
/// reader holds a record whole, so it is not let read far past where the current record began
/// (see [`Rows::next`]); past it reading fails with [`RecordTooLong`].
struct Counted<R> {
    inner: R,
    read: std::sync::Arc<std::sync::atomic::AtomicU64>,
    limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Reading stopped: one CSV record runs on for more than [`MAX_LINE_BYTES`].
#[derive(Debug, thiserror::Error)]
#[error("a CSV record longer than {MAX_LINE_BYTES} bytes")]
struct RecordTooLong;

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::sync::atomic::Ordering;
        if self.read.load(Ordering::Relaxed) > self.limit.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                RecordTooLong,
            ));
        }
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// How far past the start of the current CSV record reading may go: a record's allowance plus
/// the reader's own buffer.
const CSV_READ_AHEAD: u64 = MAX_LINE_BYTES as u64 + 64 * 1024;

fn format_of(path: &Path, given: Option<FileFormat>) -> anyhow::Result<FileFormat> {
    if let Some(format) = given {
        return Ok(format);
    }
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("jsonl" | "ndjson" | "json") => Ok(FileFormat::Jsonl),
        Some("csv") => Ok(FileFormat::Csv),
        _ if path == Path::new("-") => Err(UserError(
            "reading standard input needs --format jsonl or --format csv".to_owned(),
        )
        .into()),
        _ => Err(UserError(format!(
            "cannot tell the format of {} from its extension: give --format jsonl or --format csv",
            printable(&path.display().to_string())
        ))
        .into()),
    }
}

/// Totals of a whole import.
#[derive(Default)]
struct Totals {
    counts: ImportCounts,
    refused: u64,
    rows: u64,
}

pub async fn import(args: ImportArgs, settings: &Settings) -> anyhow::Result<()> {
    let format = format_of(&args.file, args.format)?;
    let stdin = args.file == Path::new("-");
    let (input, total_bytes): (Box<dyn Read>, Option<u64>) = if stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let file = std::fs::File::open(&args.file).map_err(|err| {
            UserError(format!(
                "cannot open {}: {err}",
                printable(&args.file.display().to_string())
            ))
        })?;
        let size = file.metadata().ok().map(|m| m.len());
        (Box::new(file), size)
    };
    let read_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let limit = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(match format {
        FileFormat::Csv => CSV_READ_AHEAD,
        FileFormat::Jsonl => u64::MAX,
    }));
    let input: Box<dyn Read> = Box::new(Counted {
        inner: input,
        read: read_bytes.clone(),
        limit: limit.clone(),
    });
    let mut rows = Rows::open(input, format, limit)?;
    // Like `authd user add`, an import may make the zero-setup SQLite database.
    crate::app::create_zero_setup_database(settings).await?;
    // Refused rows hold passwords and hashes: the file is the owner's alone, and never one
    // that is there already (the input itself, say).
    let mut errors = match &args.errors {
        Some(path) => Some(std::io::BufWriter::new(create_private(path)?)),
        None => None,
    };
    let options = ImportOptions {
        update: args.update,
        skip_policy: args.skip_policy,
    };
    let source = if stdin {
        "standard input".to_owned()
    } else {
        args.file.display().to_string()
    };
    let started = Instant::now();
    let mut progress = Progress::new(total_bytes);
    let totals = with_auth(settings, async |auth| {
        let mut totals = Totals::default();
        let outcome = import_all(
            auth,
            &mut rows,
            options,
            &mut totals,
            &mut progress,
            &mut errors,
            &read_bytes,
        )
        .await;
        progress.finish();
        // Said and recorded whatever happened, with what was written (whole batches).
        print_summary(&totals, started.elapsed().as_secs_f64());
        let recorded = auth
            .record_import(&totals.counts, totals.refused, &source)
            .await;
        outcome?;
        recorded.context("cannot record the import in the audit trail")?;
        Ok(totals)
    })
    .await?;
    if let Some(errors) = errors.as_mut() {
        errors.flush().context("cannot write the errors file")?;
    }
    if totals.refused > 0 {
        return Err(UserError(format!(
            "{} of {} rows refused (each is listed above{})",
            totals.refused,
            totals.rows,
            args.errors
                .as_ref()
                .map(|p| format!(" and in {}", printable(&p.display().to_string())))
                .unwrap_or_default()
        ))
        .into());
    }
    Ok(())
}

/// This process's peak resident memory in KiB, as the kernel counts it (Linux's `VmHWM`).
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What an import did, on standard output.
fn print_summary(totals: &Totals, secs: f64) {
    let counts = totals.counts;
    let peak = peak_memory_kib()
        .map(|kib| format!(", peak memory {} MiB", kib.div_ceil(1024)))
        .unwrap_or_default();
    println!(
        "{} rows in {secs:.1} s ({:.0} rows/s{peak}): {} imported, {} updated, {} skipped (already there), {} refused",
        totals.rows,
        totals.rows as f64 / secs.max(0.001),
        counts.imported,
        counts.updated,
        counts.skipped,
        totals.refused
    );
    if counts.sessions_ended_for > 0 {
        println!(
            "{} updated users had a new password hash or were disabled: their sessions ended",
            counts.sessions_ended_for
        );
    }
}

/// Reads, checks and writes every row, a batch at a time.
async fn import_all(
    auth: &Auth,
    rows: &mut Rows,
    options: ImportOptions,
    totals: &mut Totals,
    progress: &mut Progress,
    errors: &mut Option<std::io::BufWriter<std::fs::File>>,
    read_bytes: &std::sync::atomic::AtomicU64,
) -> anyhow::Result<()> {
    // Plain passwords are hashed on the pool: as many at once as it has threads.
    let parallel = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut at_end = false;
    while !at_end {
        let mut read = Vec::with_capacity(BATCH_ROWS);
        // A reading that fails stops the import, but after what was read before it is written.
        let mut stopped = None;
        while read.len() < BATCH_ROWS {
            match rows.next() {
                Ok(Some(row)) => read.push(row),
                Ok(None) => {
                    at_end = true;
                    break;
                }
                Err(error) => {
                    stopped = Some(error);
                    at_end = true;
                    break;
                }
            }
        }
        totals.rows += read.len() as u64;
        let now = chrono::Utc::now();
        let prepared: Vec<(ReadRow, Result<ImportedUser, Refusal>)> =
            futures_util::stream::iter(read.into_iter().map(|mut read| async move {
                let outcome = match std::mem::replace(&mut read.row, Err(String::new())) {
                    Ok(row) => auth.prepare_import(row, options, now).await?,
                    Err(reason) => Err(Refusal(reason)),
                };
                Ok::<_, crate::error::Error>((read, outcome))
            }))
            .buffered(parallel)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let mut batch: Vec<ImportedUser> = Vec::with_capacity(prepared.len());
        let mut emails: HashSet<String> = HashSet::with_capacity(prepared.len());
        for (read, outcome) in prepared {
            match outcome {
                Ok(user) => {
                    // One statement cannot write an address twice: what came first is written
                    // first, and the later row meets it as a user already there.
                    if !emails.insert(user.email.clone()) {
                        totals.counts += auth.import_batch(&batch, options).await?;
                        batch.clear();
                        emails.clear();
                        emails.insert(user.email.clone());
                    }
                    batch.push(user);
                }
                Err(Refusal(reason)) => {
                    totals.refused += 1;
                    let email = read.raw.get("email").and_then(Value::as_str).unwrap_or("-");
                    progress.say(&format!(
                        "line {}: {}: {}",
                        read.line,
                        printable(email),
                        printable(&reason)
                    ));
                    if let Some(errors) = errors.as_mut() {
                        let mut record = match read.raw {
                            Value::Object(map) => map,
                            _ => Map::new(),
                        };
                        record.insert("line".to_owned(), json!(read.line));
                        record.insert("error".to_owned(), json!(reason));
                        serde_json::to_writer(&mut *errors, &Value::Object(record))
                            .context("cannot write the errors file")?;
                        errors
                            .write_all(b"\n")
                            .context("cannot write the errors file")?;
                    }
                }
            }
        }
        if !batch.is_empty() {
            totals.counts += auth.import_batch(&batch, options).await?;
        }
        progress.update(
            totals.rows,
            read_bytes.load(std::sync::atomic::Ordering::Relaxed),
        );
        if let Some(error) = stopped {
            return Err(error);
        }
    }
    Ok(())
}

/// A new file readable by its owner only (its users' data, maybe their hashes); one that is
/// there already is never overwritten.
fn create_private(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    Ok(open.open(path).map_err(|err| {
        UserError(format!(
            "cannot create {}: {err} (an existing file is never overwritten)",
            printable(&path.display().to_string())
        ))
    })?)
}

pub async fn export(args: ExportArgs, settings: &Settings) -> anyhow::Result<()> {
    let (mut out, target): (Box<dyn Write>, String) = match &args.output {
        Some(path) => {
            let file = create_private(path)?;
            (
                Box::new(std::io::BufWriter::new(file)),
                path.display().to_string(),
            )
        }
        None => (
            Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            "standard output".to_owned(),
        ),
    };
    if args.include_password_hashes {
        eprintln!(
            "the export holds password hashes: keep it as secret as the database, and delete it once imported"
        );
    }
    let exported = with_auth(settings, async |auth| {
        let exported = write_export(auth, &args, &mut out).await;
        let count = *exported.as_ref().unwrap_or(&0);
        auth.record_export(count, args.include_password_hashes, &target)
            .await
            .context("cannot record the export in the audit trail")?;
        exported
    })
    .await?;
    if args.output.is_some() {
        eprintln!("exported {exported} users to {}", printable(&target));
    }
    Ok(())
}

/// One user as an export writes it: the fields an import reads, in the CSV's column order.
#[derive(serde::Serialize)]
struct ExportRow<'a> {
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_hash: Option<&'a str>,
    first_name: Option<&'a str>,
    last_name: Option<&'a str>,
    two_factor_enabled: bool,
    email_verified: bool,
    disabled: bool,
    created_at: String,
}

impl<'a> ExportRow<'a> {
    fn of(user: &'a ExportedUser, hashes: bool) -> ExportRow<'a> {
        ExportRow {
            email: &user.email,
            password_hash: hashes.then_some(user.password_hash.as_str()),
            first_name: user.first_name.as_deref(),
            last_name: user.last_name.as_deref(),
            // An authenticator app does not travel (its secret is sealed under this server's
            // key): its user gets emailed codes wherever the export is imported.
            two_factor_enabled: user.two_factor_enabled || user.totp_enabled,
            email_verified: user.email_verified,
            disabled: user.disabled,
            created_at: user
                .created_at()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }
}

/// Where an export's rows go, in its format.
enum Sink<'a> {
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
    Jsonl(&'a mut dyn Write),
}

async fn write_export(
    auth: &Auth,
    args: &ExportArgs,
    out: &mut Box<dyn Write>,
) -> anyhow::Result<u64> {
    let out: &mut dyn Write = &mut **out;
    let mut sink = match args.format {
        FileFormat::Csv => {
            // The header written here, so that it is there even with no user.
            let mut writer = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            let columns = COLUMNS
                .iter()
                .filter(|c| args.include_password_hashes || **c != "password_hash");
            writer.write_record(columns)?;
            Sink::Csv(Box::new(writer))
        }
        FileFormat::Jsonl => Sink::Jsonl(out),
    };
    let mut after = None;
    let mut count = 0u64;
    let mut apps = 0u64;
    loop {
        let page = auth
            .export_page(after, BATCH_ROWS as u32)
            .await
            .context("cannot read the users")?;
        let Some(last) = page.last() else { break };
        after = Some(ExportCursor {
            created_at: last.created_at(),
            id: last.id,
        });
        for user in &page {
            let row = ExportRow::of(user, args.include_password_hashes);
            apps += u64::from(user.totp_enabled);
            match &mut sink {
                Sink::Csv(writer) => writer.serialize(&row).context("cannot write the export")?,
                Sink::Jsonl(out) => {
                    serde_json::to_writer(&mut *out, &row).context("cannot write the export")?;
                    out.write_all(b"\n").context("cannot write the export")?;
                }
            }
            count += 1;
        }
    }
    match sink {
        Sink::Csv(mut writer) => writer.flush(),
        Sink::Jsonl(out) => out.flush(),
    }
    .context("cannot write the export")?;
    if apps > 0 {
        eprintln!(
            "{apps} users have an authenticator app, which an export does not carry (nor passkeys): they are exported with two_factor_enabled, so an import gives them emailed codes"
        );
    }
    Ok(count)
}
