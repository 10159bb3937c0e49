//! `authd keys ...`: list, rotate and revoke the signing keys, directly in the database.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;

use super::{EXIT_CODES, OutputFormat, UserError, format_utc, new_table, with_auth};
use crate::auth::{Activated, Activation, Actor, key_algorithm};
use crate::config::{JwtAlgorithm, Settings};
use crate::keys::load_key_encryption_key;
use crate::store::SigningKeyRecord;
use crate::token::TokenKeys;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List the signing keys, oldest first: kid, algorithm, state and times.
    #[command(after_help = EXIT_CODES)]
    List(ListArgs),
    /// Make a new `next` key: published in the JWKS at once, signing nothing yet. With
    /// --activate, promote the oldest `next` key to `current` instead (the old current key
    /// retires: published until every token it signed has expired).
    #[command(after_help = EXIT_CODES)]
    Rotate(RotateArgs),
    /// Revoke a key: the tokens it signed are refused from now on. A revoked current key is
    /// followed at once by the oldest `next` key, or by a new key, so logins go on.
    #[command(after_help = EXIT_CODES)]
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Promote the oldest `next` key to `current`. Refused until the key has been published
    /// for 2 x keys.refresh_secs (every verifier's copy of the JWKS has it by then).
    #[arg(long)]
    activate: bool,
    /// With --activate: promote the key even if it was published only just now (verifiers
    /// that have not fetched it yet refuse its tokens until they refetch).
    #[arg(long, requires = "activate")]
    force: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The key's id (the `kid` of its tokens; `authd keys list` shows them). A key id is
    /// base64url and may start with `-`: it is taken as the id, not as an option.
    #[arg(value_name = "KID", allow_hyphen_values = true)]
    kid: String,
}

pub async fn run(command: KeysCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        KeysCommand::List(args) => list(args, settings).await,
        KeysCommand::Rotate(args) if args.activate => activate(args.force, settings).await,
        KeysCommand::Rotate(_) => rotate(settings).await,
        KeysCommand::Revoke(args) => revoke(args, settings).await,
    }
}

async fn list(args: ListArgs, settings: &Settings) -> anyhow::Result<()> {
    let keys = with_auth(settings, async |auth| {
        auth.list_keys()
            .await
            .context("cannot list the signing keys")
    })
    .await?;
    match args.format {
        OutputFormat::Table if keys.is_empty() => {
            println!("no signing keys yet: the server makes the first at its first start");
        }
        OutputFormat::Table => println!("{}", keys_table(&keys)),
        OutputFormat::Json => {
            let listed: Vec<_> = keys.iter().map(key_json).collect();
            println!("{}", super::to_json(&listed)?);
        }
    }
    Ok(())
}

fn key_json(key: &SigningKeyRecord) -> serde_json::Value {
    json!({
        "kid": key.kid,
        "algorithm": key.algorithm,
        "state": key.state,
        "created_at": key.created_at,
        "activated_at": key.activated_at,
        "retired_at": key.retired_at,
        "revoked_at": key.revoked_at,
    })
}

fn keys_table(keys: &[SigningKeyRecord]) -> super::Table {
    let mut table = new_table();
    table.set_header([
        "kid",
        "algorithm",
        "state",
        "created",
        "activated",
        "retired",
        "revoked",
    ]);
    let when =
        |at: Option<chrono::DateTime<chrono::Utc>>| at.map_or_else(|| "-".into(), format_utc);
    for key in keys {
        table.add_row([
            key.kid.clone(),
            key.algorithm.clone(),
            key.state.clone(),
            format_utc(key.created_at),
            when(key.activated_at),
            when(key.retired_at),
            when(key.revoked_at),
        ]);
    }
    table
}

/// The key-encryption key the servers use: configured, or the file a zero-setup server made.
/// Never made here: a key sealed under a KEK of the command's own would not open on the servers.
fn servers_kek(settings: &Settings) -> anyhow::Result<[u8; 32]> {
    load_key_encryption_key(settings, false)
}

/// [`servers_kek`] when there is one to load; None when none is configured or generated.
fn servers_kek_if_any(settings: &Settings) -> anyhow::Result<Option<[u8; 32]>> {
    let any = settings.keys.encryption_key.is_some() || settings.generated_kek_path().exists();
    any.then(|| servers_kek(settings)).transpose()
}

async fn rotate(settings: &Settings) -> anyhow::Result<()> {
    let kek = servers_kek(settings)?;
    let algorithm = key_algorithm(settings.jwt.algorithm);
    let kid = with_auth(settings, async |auth| {
        auth.create_next_key(&kek, algorithm, Actor::Cli)
            .await
            .context("cannot make a signing key")
    })
    .await?;
    println!(
        "made next key {kid} ({}): published now, signing nothing yet; after at least {}s run `authd keys rotate --activate`",
        algorithm.as_str(),
        2 * settings.keys.refresh_secs
    );
    Ok(())
}

async fn activate(force: bool, settings: &Settings) -> anyhow::Result<()> {
    if settings.jwt.algorithm == JwtAlgorithm::Hs256 {
        return Err(UserError(
            "jwt.algorithm is HS256: the servers sign with jwt.secret; set jwt.algorithm = \"ES256\" and restart them, and they activate the next key themselves".into(),
        )
        .into());
    }
    let kek = servers_kek(settings)?;
    let wait = chrono::Duration::seconds(
        i64::try_from(2 * settings.keys.refresh_secs).unwrap_or(i64::MAX / 2),
    );
    let activation = with_auth(settings, async |auth| {
        auth.activate_next_key(&kek, (!force).then_some(wait), Actor::Cli)
            .await
            .context("cannot activate a signing key")
    })
    .await?;
    let Activated { kid, retired } = match activation {
        Activation::Done(activated) => activated,
        Activation::NoNextKey => {
            return Err(UserError(
                "there is no next key to activate (none, or none that keys.encryption_key opens): run `authd keys rotate` first, then wait for verifiers to fetch it".into(),
            )
            .into());
        }
        Activation::TooSoon { kid, left_secs } => {
            let kid = super::printable(&kid);
            return Err(UserError(format!(
                "{kid} was published less than 2 x keys.refresh_secs ago: verifiers may not have it yet; wait {left_secs}s more, or pass --force"
            ))
            .into());
        }
    };
    let horizon = TokenKeys::retired_horizon_secs(settings);
    // Key ids come from the database, where a row written by hand may hold anything.
    let kid = super::printable(&kid);
    match retired.as_deref().map(super::printable) {
        Some(old) => println!(
            "{kid} is the current key now (within keys.refresh_secs = {}s on every instance); {old} retired: published and accepted for {horizon}s more",
            settings.keys.refresh_secs
        ),
        None => println!("{kid} is the current key now"),
    }
    Ok(())
}

async fn revoke(args: RevokeArgs, settings: &Settings) -> anyhow::Result<()> {
    let kek = servers_kek_if_any(settings)?;
    let algorithm = key_algorithm(settings.jwt.algorithm);
    let kid = args.kid.trim().to_owned();
    let shown = super::printable(&kid);
    let revoked = with_auth(settings, async |auth| {
        auth.revoke_key(&kid, kek.as_ref(), algorithm, Actor::Cli)
            .await
            .context("cannot revoke the signing key")
    })
    .await?;
    let Some(revoked) = revoked else {
        return Err(UserError(format!(
            "no signing key {shown}: `authd keys list` shows them"
        ))
        .into());
    };
    if revoked.previous_state == "revoked" {
        println!("{shown} was already revoked");
        return Ok(());
    }
    let successor = revoked
        .successor
        .map(|s| format!("; {} is the current key now", super::printable(&s)))
        .unwrap_or_default();
    println!(
        "revoked {shown} (was {}): tokens it signed are refused from now on; services verifying from the JWKS drop it within 2 x keys.refresh_secs = {}s{successor}",
        super::printable(&revoked.previous_state),
        2 * settings.keys.refresh_secs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::KeysCommand;

    /// A key id is base64url: one in 32 starts with `-`, and must still be taken as the id.
    #[test]
    fn a_key_id_that_starts_with_a_dash_is_an_id_not_an_option() {
        let cli = Cli::try_parse_from(["authd", "keys", "revoke", "-_Pwp_1GyELhXB821tJlCg"])
            .expect("parses");
        let Command::Keys(KeysCommand::Revoke(args)) = cli.command else {
            panic!("not keys revoke");
        };
        assert_eq!(args.kid, "-_Pwp_1GyELhXB821tJlCg");
    }
}
