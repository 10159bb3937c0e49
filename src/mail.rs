//! Outgoing mail: builds the one-time code message and delivers it through the configured transport.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{MailSettings, MailTransport, Settings, SmtpTls};
use crate::domain::Email;
use crate::error::{Error, Result};
use crate::token::codes::Code;

/// One message authd sends (interim: plain text until the templates land).
pub enum Mail<'a> {
    LoginCode {
        code: &'a Code,
        valid_for_secs: u64,
    },
    VerifyEmail {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    ConfirmNewEmail {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    ResetPassword {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    PasswordChanged,
    EmailChangeRequested {
        new_email: &'a str,
    },
    AddressInUse,
}

/// Sends the emails authd needs. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
    timeout: Duration,
}

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Development only: write the whole message to the log.
    Log,
    /// Development only: one .eml file per message in this directory.
    File(PathBuf),
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn from_settings(all: &Settings) -> anyhow::Result<Mailer> {
        let settings = &all.mail;
        let from: Mailbox = settings
            .from
            .parse()
            .with_context(|| format!("mail.from {:?} is not a valid mailbox", settings.from))?;
        let timeout = Duration::from_secs(settings.smtp.timeout_secs.max(1));
        let transport = match settings.transport {
            MailTransport::Smtp => Transport::Smtp(smtp_transport(settings, timeout)?),
            MailTransport::Log => Transport::Log,
            MailTransport::File => Transport::File(all.mail_file_dir()),
        };
        Ok(Mailer {
            from,
            transport,
            timeout,
        })
    }

    /// Emails a one-time code. Gives up with `Unavailable` when the relay refuses, fails or stalls.
    pub async fn send_code(&self, to: &Email, code: &Code, valid_for_secs: u64) -> Result<()> {
        let message = self.code_message(to, code, valid_for_secs)?;
        match tokio::time::timeout(self.timeout, self.deliver(message)).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    timeout_secs = self.timeout.as_secs(),
                    "mail delivery timed out"
                );
                Err(Error::Unavailable("mail"))
            }
        }
    }

    pub async fn send(&self, to: &Email, mail: Mail<'_>) -> Result<()> {
        let (subject, body) = match mail {
            Mail::LoginCode {
                code,
                valid_for_secs,
            } => return self.send_code(to, code, valid_for_secs).await,
            Mail::VerifyEmail { code, token, .. } => (
                "Verify your email address",
                format!(
                    "Your code: {}\n\nhttp://localhost/verify-email?token={token}\n",
                    code.as_str()
                ),
            ),
            Mail::ConfirmNewEmail { code, token, .. } => (
                "Confirm your new email address",
                format!(
                    "Your code: {}\n\nhttp://localhost/verify-email?token={token}\n",
                    code.as_str()
                ),
            ),
            Mail::ResetPassword { code, token, .. } => (
                "Reset your password",
                format!(
                    "Your code: {}\n\nhttp://localhost/reset-password?token={token}\n",
                    code.as_str()
                ),
            ),
            Mail::PasswordChanged => ("Your password was changed", String::from("changed\n")),
            Mail::EmailChangeRequested { new_email } => (
                "Your email address is being changed",
                format!("to {new_email}\n"),
            ),
            Mail::AddressInUse => (
                "Someone tried to use your email address",
                String::from("in use\n"),
            ),
        };
        let to: Mailbox = to
            .as_str()
            .parse()
            .context("recipient")
            .map_err(Error::Internal)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .body(body)
            .context("build")
            .map_err(Error::Internal)?;
        match tokio::time::timeout(self.timeout, self.deliver(message)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable("mail")),
        }
    }

    async fn deliver(&self, message: Message) -> Result<()> {
        match &self.transport {
            Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|err| {
                tracing::warn!(error = %err, "mail relay refused or failed");
                Error::Unavailable("mail")
            }),
            Transport::Log => {
                let text = String::from_utf8_lossy(&message.formatted()).into_owned();
                tracing::warn!(
                    "DEVELOPMENT ONLY mail transport \"log\" (not delivered, never use in production):\n{text}"
                );
                Ok(())
            }
            Transport::File(dir) => write_eml(dir, &message).await.map_err(|err| {
                tracing::warn!(error = %err, dir = %dir.display(), "cannot write mail file");
                Error::Unavailable("mail")
            }),
        }
    }

    fn code_message(&self, to: &Email, code: &Code, valid_for_secs: u64) -> Result<Message> {
        let to: Mailbox = to
            .as_str()
            .parse()
            .context("recipient address cannot be used in a message")?;
        let minutes = valid_for_secs.div_ceil(60);
        let body = format!(
            "Your sign-in code is {code}\n\n\
             It is valid for {minutes} minute(s) and can be used once.\n\
             If you did not try to sign in, someone knows your password: change it.\n",
            code = code.as_str(),
        );
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Your sign-in code")
            .body(body)
            .context("cannot build the code email")
            .map_err(Error::Internal)
    }
}

/// Writes the message as `<time>-<id>.eml`, via a temporary name so readers never see half a
/// file. The messages hold live codes: the directory is created 0700 and each file 0600.
async fn write_eml(dir: &std::path::Path, message: &Message) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await?;
    let name = format!(
        "{}-{}.eml",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
        uuid::Uuid::new_v4().simple()
    );
    let partial = dir.join(format!(".{name}.partial"));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&partial).await?;
    file.write_all(&message.formatted()).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&partial, dir.join(name)).await
}

fn smtp_transport(
    settings: &MailSettings,
    timeout: Duration,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let smtp = &settings.smtp;
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .context("invalid mail.smtp.host for STARTTLS")?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
            .context("invalid mail.smtp.host for TLS")?,
    };
    let mut builder = builder.port(smtp.port).timeout(Some(timeout));
    if let Some(username) = &smtp.username {
        let password = smtp
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_string())
            .unwrap_or_default();
        builder = builder.credentials(Credentials::new(username.clone(), password));
    }
    Ok(builder.build())
}
