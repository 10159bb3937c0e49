//! `authd user ...`: add, list, switch two-factor login, unlock, disable, enable, delete, set
//! or reset a password and vouch for an address, through the same use cases as the API.

use std::io::BufRead;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::{
    EXIT_CODES, OutputFormat, Table, UserError, format_utc, is_interactive, new_table, with_auth,
};
use crate::auth::{Actor, MailOutcome, Registration, RegistrationInput};
use crate::config::Settings;
use crate::domain::{Email, Password, SecondFactor, User};
use crate::error::Error;
use crate::store::{UserListing, UserQuery};

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user with the same rules as POST /register, and print it.
    ///
    /// On a terminal, prompts for a missing email and password (typed twice, hidden).
    /// Without one, missing input is an error: pass --email and pipe the password with
    /// --password-stdin.
    #[command(after_help = EXIT_CODES)]
    Add(AddArgs),
    /// List users, oldest first (by creation time, then id). Never shows password hashes.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Switch the emailed one-time code on or off for a user; their next login follows it.
    #[command(name = "set-2fa", after_help = EXIT_CODES)]
    SetTwoFactor(SetTwoFactorArgs),
    /// Clear an account's password lock and its second-step lock (set after
    /// rate_limit.otp_failures_per_account consecutive wrong codes, which only this lifts).
    #[command(after_help = EXIT_CODES)]
    Unlock(UnlockArgs),
    /// Stop a user from logging in: every session ends at once (their access tokens are
    /// refused at the next request), and a login fails as a wrong password would.
    #[command(after_help = EXIT_CODES)]
    Disable(UnlockArgs),
    /// Let a disabled user log in again (their ended sessions stay ended).
    #[command(after_help = EXIT_CODES)]
    Enable(UnlockArgs),
    /// Delete a user with their sessions and pending logins; the audit trail keeps their
    /// events. Asks for confirmation on a terminal; without one, needs --yes.
    #[command(after_help = EXIT_CODES)]
    Delete(DeleteArgs),
    /// Set a user's password (same policy as registration; prompted twice on a terminal, or
    /// --password-stdin): every session of theirs ends and their password lock is cleared.
    /// Or, with --send-link, email them a password reset (code and link) instead.
    #[command(name = "reset-password", after_help = EXIT_CODES)]
    ResetPassword(ResetPasswordArgs),
    /// Mark a user's email address as verified, vouching for it (for accounts added by hand,
    /// or created before verification existed, when registration.require_verified_email is on).
    #[command(name = "verify-email", after_help = EXIT_CODES)]
    VerifyEmail(UnlockArgs),
    /// Show a user's second factor (authenticator app, emailed code or none) and recovery codes
    /// left; with --reset, remove the app and the recovery codes (the second step is then the
    /// emailed code if it is on, else none) and end every session of the user.
    #[command(after_help = EXIT_CODES)]
    Mfa(MfaArgs),
    /// Turn an authenticator app on for a user at once (service accounts, tests): prints the
    /// otpauth URI, a QR code for a terminal and the recovery codes, once. Ends the user's
    /// sessions. Needs the servers' key-encryption key.
    #[command(name = "totp-enroll", after_help = EXIT_CODES)]
    TotpEnroll(UnlockArgs),
    /// List a user's passkeys (id, name, created, last used, backed up); with --remove ID,
    /// remove one and end the sessions that signed in with it.
    #[command(after_help = EXIT_CODES)]
    Passkeys(PasskeysArgs),
    /// Bring users in from JSON Lines or CSV, with the password hashes they have (bcrypt,
    /// Argon2id, Django pbkdf2_sha256) or plain passwords, every row checked as a registration
    /// is. Refused rows are listed with their line and reason and do not stop the import.
    /// Exit 0 when every row was imported (or was there already), 1 when some were refused, 2
    /// on a system failure.
    #[command(after_help = EXIT_CODES)]
    Import(super::transfer::ImportArgs),
    /// Write every user as JSON Lines or CSV (oldest first), the format `authd user import`
    /// reads; password hashes only with --include-password-hashes.
    #[command(after_help = EXIT_CODES)]
    Export(super::transfer::ExportArgs),
}

#[derive(Debug, Args)]
pub struct PasskeysArgs {
    /// Email address of the user.
    email: String,
    /// Remove the passkey with this id (from the list) and end the sessions that signed in
    /// with it.
    #[arg(long, value_name = "ID")]
    remove: Option<String>,
    /// Output format of the list.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct MfaArgs {
    /// Email address of the user.
    email: String,
    /// Remove the authenticator app and the recovery codes, and end the user's sessions.
    #[arg(long)]
    reset: bool,
}

#[derive(Debug, Args)]
pub struct ResetPasswordArgs {
    /// Email address of the user.
    email: String,
    /// Read the new password from the first line of stdin instead of prompting for it.
    #[arg(long)]
    password_stdin: bool,
    /// Email the user a password reset (code and link, valid password.reset_ttl_secs) instead
    /// of setting a password here. Needs the servers' key-encryption key and mail settings.
    #[arg(long, conflicts_with = "password_stdin")]
    send_link: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Email address of the user.
    email: String,
    /// Delete without asking.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Email address of the user.
    email: String,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Email address; prompted for on a terminal when missing.
    #[arg(long, value_name = "EMAIL")]
    email: Option<String>,
    /// First name (optional).
    #[arg(long, value_name = "NAME")]
    first_name: Option<String>,
    /// Last name (optional).
    #[arg(long, value_name = "NAME")]
    last_name: Option<String>,
    /// Ask for an emailed one-time code after the password at every login.
    #[arg(long)]
    two_factor: bool,
    /// Read the password from the first line of stdin instead of prompting for it.
    #[arg(long)]
    password_stdin: bool,
    /// Output format of the created user.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format: a table, or a JSON array of the User objects the API returns, each with
    /// `disabled`, `sessions` (live sessions) and `passkeys` (how many) added.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
    /// Show at most N users.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    limit: Option<u32>,
    /// Only users whose email or name contains TEXT (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    search: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetTwoFactorArgs {
    /// Email address of the user.
    email: String,
    /// `on`: password then an emailed code; `off`: password only.
    #[arg(value_enum)]
    state: Switch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    /// Ask for an emailed one-time code after the password.
    On,
    /// Ask for the password only.
    Off,
}

/// Runs one `authd user` subcommand.
pub async fn run(command: UserCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        UserCommand::Add(args) => add_user(args, settings).await,
        UserCommand::List(args) => list_users(args, settings).await,
        UserCommand::SetTwoFactor(args) => set_two_factor(args, settings).await,
        UserCommand::Unlock(args) => unlock(args, settings).await,
        UserCommand::Disable(args) => switch_access(&args.email, false, settings).await,
        UserCommand::Enable(args) => switch_access(&args.email, true, settings).await,
        UserCommand::Delete(args) => delete(args, settings).await,
        UserCommand::ResetPassword(args) => reset_password(args, settings).await,
        UserCommand::VerifyEmail(args) => verify_email(&args.email, settings).await,
        UserCommand::Mfa(args) => mfa(args, settings).await,
        UserCommand::TotpEnroll(args) => totp_enroll(&args.email, settings).await,
        UserCommand::Passkeys(args) => passkeys(args, settings).await,
        UserCommand::Import(args) => super::transfer::import(args, settings).await,
        UserCommand::Export(args) => super::transfer::export(args, settings).await,
    }
}

fn parse_email(raw: &str) -> Result<Email, Error> {
    Email::parse(raw).map_err(|message| Error::validation("email", message))
}

async fn switch_access(raw: &str, enable: bool, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(raw)?;
    let user = with_auth(settings, async |auth| {
        let changed = if enable {
            auth.enable_user(&email, Actor::Cli).await
        } else {
            auth.disable_user(&email, Actor::Cli).await
        };
        changed.with_context(|| format!("cannot change {email}"))
    })
    .await?;
    if enable {
        println!("{} is enabled: they can log in again", user.email);
    } else {
        println!(
            "{} is disabled: their sessions ended and they cannot log in",
            user.email
        );
    }
    Ok(())
}

async fn reset_password(args: ResetPasswordArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(&args.email)?;
    if args.send_link {
        let kek = crate::keys::load_key_encryption_key(settings, false)?;
        let outcome = with_auth(settings, async |auth| {
            let auth = auth.clone().with_kek(settings, &kek).await?;
            auth.send_password_reset(&email)
                .await
                .with_context(|| format!("cannot send a password reset to {email}"))
        })
        .await?;
        return match outcome {
            MailOutcome::Sent => {
                println!(
                    "emailed a password reset to {email}: its code and link work for {} minutes",
                    settings.password.reset_ttl_secs.div_ceil(60)
                );
                Ok(())
            }
            MailOutcome::Limited => Err(UserError(format!(
                "no reset was sent to {email}: its emails are used up for now (verification.resend_interval_secs, verification.max_per_day, mail.max_codes_per_account); try later"
            ))
            .into()),
            MailOutcome::Failed => Err(anyhow::anyhow!(
                "the reset email to {email} could not be delivered: check the mail settings and the relay"
            )),
        };
    }
    if !args.password_stdin && !is_interactive() {
        return Err(UserError(
            "no password given and stdin is not a terminal: pipe it in with --password-stdin, or pass --send-link"
                .into(),
        )
        .into());
    }
    let from_stdin = args.password_stdin;
    let raw = tokio::task::spawn_blocking(move || {
        if from_stdin {
            read_password_line(&mut std::io::stdin().lock())
        } else {
            prompt_password()
        }
    })
    .await
    .context("input task failed")??;
    let password = Password::parse(&raw).map_err(|m| Error::validation("password", m))?;
    let user = with_auth(settings, async |auth| {
        auth.set_password(&email, &password)
            .await
            .with_context(|| format!("cannot set the password of {email}"))
    })
    .await?;
    println!(
        "set a new password for {}: every session of theirs ended and their password lock is cleared",
        user.email
    );
    Ok(())
}

async fn mfa(args: MfaArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(&args.email)?;
    if args.reset {
        let reset = with_auth(settings, async |auth| {
            auth.reset_mfa(&email)
                .await
                .with_context(|| format!("cannot reset the second factor of {email}"))
        })
        .await?;
        match reset {
            Some(user) => println!(
                "removed the authenticator app and recovery codes of {}: their second step is now {}; their sessions ended",
                user.email,
                factor_words(user.second_factor)
            ),
            None => println!("{email} has no authenticator app or recovery codes: nothing changed"),
        }
        return Ok(());
    }
    let summary = with_auth(settings, async |auth| {
        auth.mfa_summary(&email)
            .await
            .with_context(|| format!("cannot read the second factor of {email}"))
    })
    .await?;
    println!(
        "{}: second step {}; {} recovery codes left{}",
        summary.user.email,
        factor_words(summary.user.second_factor),
        summary.recovery_codes_left,
        if summary.pending {
            "; an authenticator app enrolment is waiting for its first code"
        } else {
            ""
        }
    );
    Ok(())
}

async fn passkeys(args: PasskeysArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(&args.email)?;
    if let Some(raw) = args.remove {
        let id = uuid::Uuid::parse_str(raw.trim()).map_err(|_| {
            Error::validation(
                "--remove",
                "is not a passkey id (see `authd user passkeys EMAIL`)",
            )
        })?;
        let user = with_auth(settings, async |auth| {
            auth.remove_user_passkey(&email, id)
                .await
                .with_context(|| format!("cannot remove passkey {id} of {email}"))
        })
        .await?;
        println!(
            "removed passkey {id} of {}: the sessions that signed in with it ended",
            user.email
        );
        return Ok(());
    }
    let (user, passkeys) = with_auth(settings, async |auth| {
        auth.user_passkeys(&email)
            .await
            .with_context(|| format!("cannot read the passkeys of {email}"))
    })
    .await?;
    match args.format {
        OutputFormat::Json => println!("{}", super::to_json(&passkeys)?),
        OutputFormat::Table if passkeys.is_empty() => println!("{} has no passkeys", user.email),
        OutputFormat::Table => {
            let mut table = new_table();
            table.set_header(["id", "name", "created", "last used", "backed up"]);
            for passkey in &passkeys {
                table.add_row([
                    passkey.id.to_string(),
                    passkey.name.clone(),
                    format_utc(passkey.created_at),
                    passkey
                        .last_used_at
                        .map_or_else(|| "never".to_owned(), format_utc),
                    if passkey.backed_up {
                        "yes (synced)"
                    } else if passkey.backup_eligible {
                        "no (can sync)"
                    } else {
                        "no (device-bound)"
                    }
                    .to_owned(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

/// The second step in a table cell: `totp`, `email` or `off`.
fn factor_label(factor: SecondFactor) -> &'static str {
    match factor {
        SecondFactor::None => "off",
        other => other.as_str(),
    }
}

fn factor_words(factor: SecondFactor) -> &'static str {
    match factor {
        SecondFactor::Totp => "an authenticator app (TOTP)",
        SecondFactor::Email => "a code sent by email",
        SecondFactor::None => "none (password only)",
    }
}

async fn totp_enroll(raw: &str, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(raw)?;
    let kek = crate::keys::load_key_encryption_key(settings, false)?;
    let (enrolment, codes) = with_auth(settings, async |auth| {
        let auth = auth.clone().with_kek(settings, &kek).await?;
        auth.enroll_totp_for(&email)
            .await
            .with_context(|| format!("cannot turn an authenticator app on for {email}"))
    })
    .await?;
    println!("authenticator app on for {email}; their sessions ended");
    println!("otpauth URI: {}", enrolment.otpauth_uri);
    println!("secret: {}", enrolment.secret);
    match crate::token::totp::qr_terminal(&enrolment.otpauth_uri) {
        Some(qr) => println!("{qr}"),
        None => println!("(the URI is too long for a QR code: type the secret instead)"),
    }
    println!("recovery codes (each works once, shown only now):");
    for code in codes {
        println!("  {code}");
    }
    Ok(())
}

async fn verify_email(raw: &str, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(raw)?;
    let user = with_auth(settings, async |auth| {
        auth.mark_email_verified(&email)
            .await
            .with_context(|| format!("cannot verify {email}"))
    })
    .await?;
    println!("{} is verified", user.email);
    Ok(())
}

async fn delete(args: DeleteArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = parse_email(&args.email)?;
    if !args.yes {
        if !is_interactive() {
            return Err(UserError(format!(
                "deleting {email} needs confirmation: run on a terminal, or pass --yes"
            ))
            .into());
        }
        let prompt = format!("Delete {email} with their sessions? This cannot be undone");
        let confirmed = tokio::task::spawn_blocking(move || {
            dialoguer::Confirm::new()
                .with_prompt(prompt)
                .default(false)
                .interact()
        })
        .await
        .context("input task failed")?
        .context("cannot read the answer from the terminal")?;
        if !confirmed {
            return Err(UserError(format!("{email} was not deleted")).into());
        }
    }
    let user = with_auth(settings, async |auth| {
        auth.delete_user(&email, Actor::Cli)
            .await
            .with_context(|| format!("cannot delete {email}"))
    })
    .await?;
    println!("deleted {} ({})", user.email, user.id);
    Ok(())
}

async fn add_user(args: AddArgs, settings: &Settings) -> anyhow::Result<()> {
    let format = args.format;
    // Prompts and stdin block, so they run off the async workers.
    let input = tokio::task::spawn_blocking(move || collect_registration(args))
        .await
        .context("input task failed")??;
    let registration = Registration::parse(input)?;
    let email = registration.email.clone();
    // The one admin command that may make the zero-setup database (as `migrate` does).
    crate::app::create_zero_setup_database(settings).await?;
    let user = with_auth(settings, async |auth| {
        auth.add_user(registration)
            .await
            .with_context(|| format!("cannot add {email}"))
    })
    .await?;
    match format {
        OutputFormat::Table => {
            println!("created user {}", user.email);
            println!("{}", user_details_table(&user));
        }
        OutputFormat::Json => println!("{}", super::to_json(&user)?),
    }
    Ok(())
}

/// Gathers the raw registration from flags, stdin and prompts. Refuses at once, before reading
/// anything, when input is missing and nobody is at a terminal to type it.
fn collect_registration(args: AddArgs) -> anyhow::Result<RegistrationInput> {
    let interactive = is_interactive();
    if args.email.is_none() && !interactive {
        return Err(UserError(
            "no email address given and stdin is not a terminal: pass --email".into(),
        )
        .into());
    }
    if !args.password_stdin && !interactive {
        return Err(UserError(
            "no password given and stdin is not a terminal: pipe it in with --password-stdin"
                .into(),
        )
        .into());
    }
    let email = match args.email {
        Some(email) => email,
        None => prompt_email()?,
    };
    let password = if args.password_stdin {
        read_password_line(&mut std::io::stdin().lock())?
    } else {
        prompt_password()?
    };
    Ok(RegistrationInput {
        email: Some(email),
        password: Some(password),
        first_name: args.first_name,
        last_name: args.last_name,
        two_factor_enabled: args.two_factor,
    })
}

fn prompt_email() -> anyhow::Result<String> {
    dialoguer::Input::<String>::new()
        .with_prompt("Email")
        .validate_with(|raw: &String| {
            Email::parse(raw)
                .map(drop)
                .map_err(|m| format!("email {m}"))
        })
        .interact_text()
        .context("cannot read the email address from the terminal")
}

fn prompt_password() -> anyhow::Result<String> {
    dialoguer::Password::new()
        .with_prompt("Password")
        .with_confirmation("Repeat password", "the passwords do not match")
        .validate_with(|raw: &String| {
            Password::parse(raw)
                .map(drop)
                .map_err(|m| format!("password {m}"))
        })
        .interact()
        .context("cannot read the password from the terminal")
}

/// The first line of `input` without its line ending; everything else on the line is kept.
fn read_password_line(input: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    let read = input.read_line(&mut line).map_err(|err| match err.kind() {
        std::io::ErrorKind::InvalidData => {
            anyhow::Error::new(UserError("the password on stdin is not UTF-8".into()))
        }
        _ => anyhow::Error::new(err).context("cannot read the password from stdin"),
    })?;
    if read == 0 {
        return Err(UserError("--password-stdin: stdin is empty".into()).into());
    }
    let without_newline = line.strip_suffix('\n').unwrap_or(&line);
    let password = without_newline
        .strip_suffix('\r')
        .unwrap_or(without_newline);
    Ok(password.to_owned())
}

async fn list_users(args: ListArgs, settings: &Settings) -> anyhow::Result<()> {
    let query = UserQuery {
        search: args.search,
        limit: args.limit,
    };
    let users = with_auth(settings, async |auth| {
        auth.list_users(&query).await.context("cannot list users")
    })
    .await?;
    match args.format {
        OutputFormat::Table if users.is_empty() => println!("no users"),
        OutputFormat::Table => println!("{}", users_table(&users)),
        OutputFormat::Json => println!("{}", super::to_json(&users)?),
    }
    Ok(())
}

async fn set_two_factor(args: SetTwoFactorArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = Email::parse(&args.email).map_err(|message| Error::validation("email", message))?;
    let enabled = args.state == Switch::On;
    let user = with_auth(settings, async |auth| {
        auth.set_two_factor(&email, enabled)
            .await
            .with_context(|| format!("cannot change two-factor login for {email}"))
    })
    .await?;
    // An authenticator app, when there is one, stays the second step whatever this says.
    let next_login = match user.second_factor {
        SecondFactor::Email => "password, then a code sent by email",
        SecondFactor::Totp => {
            "password, then a code of their authenticator app (it stays on: `authd user mfa --reset` removes it)"
        }
        SecondFactor::None => "password only",
    };
    println!(
        "two-factor login is {} for {}: next login asks for the {next_login}",
        on_off(user.two_factor_enabled),
        user.email
    );
    Ok(())
}

async fn unlock(args: UnlockArgs, settings: &Settings) -> anyhow::Result<()> {
    let email = Email::parse(&args.email).map_err(|message| Error::validation("email", message))?;
    let cleared = with_auth(settings, async |auth| {
        auth.unlock_user(&email, Actor::Cli)
            .await
            .with_context(|| format!("cannot unlock {email}"))
    })
    .await?;
    if cleared {
        println!("unlocked {email}: password and code attempts start from zero");
    } else {
        println!("{email} was not locked and had no failed attempts");
    }
    Ok(())
}

fn users_table(users: &[UserListing]) -> Table {
    let mut table = new_table();
    table.set_header([
        "email", "name", "verified", "2FA", "created", "state", "sessions", "passkeys",
    ]);
    for listing in users {
        let user = &listing.user;
        table.add_row([
            user.email.clone(),
            full_name(user),
            yes_no(user.email_verified).to_owned(),
            factor_label(user.second_factor).to_owned(),
            format_utc(user.created_at),
            if listing.disabled {
                "disabled"
            } else {
                "enabled"
            }
            .to_owned(),
            listing.sessions.to_string(),
            listing.passkeys.to_string(),
        ]);
    }
    table
}

fn user_details_table(user: &User) -> Table {
    let mut table = new_table();
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    table.add_row(["id".to_owned(), user.id.to_string()]);
    table.add_row(["email".to_owned(), user.email.clone()]);
    table.add_row(["first name".to_owned(), optional(&user.first_name)]);
    table.add_row(["last name".to_owned(), optional(&user.last_name)]);
    table.add_row([
        "verified".to_owned(),
        yes_no(user.email_verified).to_owned(),
    ]);
    table.add_row([
        "2FA".to_owned(),
        factor_label(user.second_factor).to_owned(),
    ]);
    table.add_row(["created".to_owned(), format_utc(user.created_at)]);
    table
}

fn full_name(user: &User) -> String {
    let parts: Vec<&str> = [&user.first_name, &user.last_name]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

fn on_off(enabled: bool) -> &'static str {
    if enabled { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_line_loses_only_its_line_ending() {
        let read = |raw: &str| read_password_line(&mut raw.as_bytes()).unwrap();
        assert_eq!(read("correct horse battery\n"), "correct horse battery");
        assert_eq!(read(" spaced out \r\nsecond line\n"), " spaced out ");
        assert_eq!(read("no newline"), "no newline");
        assert_eq!(read("\n"), "");
    }

    #[test]
    fn empty_stdin_is_refused_as_user_input() {
        let err = read_password_line(&mut "".as_bytes()).unwrap_err();
        assert!(err.downcast_ref::<UserError>().is_some(), "{err:#}");
    }
}
