//! Outgoing mail: renders each message authd sends from its templates (text and HTML, see
//! `templates`) and delivers it through the configured transport.

mod templates;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{MailSettings, MailTransport, Settings, SmtpTls};
use crate::domain::Email;
use crate::error::{Error, Result};
use crate::token::codes::Code;

use templates::{Rendered, Templates};

/// One message authd sends; each kind has a subject, a text and an HTML template.
pub enum Mail<'a> {
    /// The second step of a login.
    LoginCode { code: &'a Code, valid_for_secs: u64 },
    /// Proof of the address, after registration or on request: a code and a link to
    /// <link base>/verify-email?token=<token>.
    VerifyEmail {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    /// Proof of a new address an account asked to change to: code and link to
    /// <link base>/verify-email?token=<token> (the same page).
    ConfirmNewEmail {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    /// A password reset: a code and a link to <link base>/reset-password?token=<token>.
    ResetPassword {
        code: &'a Code,
        token: &'a str,
        valid_for_secs: u64,
    },
    /// Notice: the password was changed (by a reset, a change, or an admin).
    PasswordChanged,
    /// Notice to the old address: a change of the account's address to `new_email` was asked for.
    EmailChangeRequested { new_email: &'a str },
    /// Notice to the owner of an address someone tried to move another account to (nothing changed).
    AddressInUse,
    /// Notice: the account's second step changed (an authenticator app turned on or off); what
    /// a login asks for now, in words.
    SecondFactorChanged { factor: &'a str },
    /// Notice: a passkey named `name` was added to the account (or, `added: false`, removed).
    PasskeyChanged { name: String, added: bool },
}

impl Mail<'_> {
    /// The kind's name, for logs: the only thing about a message that may be logged.
    fn kind(&self) -> &'static str {
        match self {
            Mail::LoginCode { .. } => "login_code",
            Mail::VerifyEmail { .. } => "verify_email",
            Mail::ConfirmNewEmail { .. } => "confirm_new_email",
            Mail::ResetPassword { .. } => "reset_password",
            Mail::PasswordChanged => "password_changed",
            Mail::EmailChangeRequested { .. } => "email_change_requested",
            Mail::AddressInUse => "address_in_use",
            Mail::SecondFactorChanged { .. } => "second_factor_changed",
            Mail::PasskeyChanged { .. } => "passkey_changed",
        }
    }
}

// Codes and tokens stay out of every Debug output.
impl std::fmt::Debug for Mail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mail::{}", self.kind())
    }
}

/// Sends the emails authd needs. Cheap to clone.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
    timeout: Duration,
    templates: Arc<Templates>,
}

#[derive(Clone)]
enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Development only: write the message (headers and text part) to the log.
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
        let link_base = match settings.link_base_url() {
            Some(base) => base.to_owned(),
            None => all.public_url(),
        };
        let templates = Templates::new(&settings.product_name, &link_base)?;
        Ok(Mailer {
            from,
            transport,
            timeout,
            templates: Arc::new(templates),
        })
    }

    /// Renders and delivers one message; `Unavailable("mail")` when the relay refuses, fails or
    /// stalls past `mail.smtp.timeout_secs`.
    pub async fn send(&self, to: &Email, mail: Mail<'_>) -> Result<()> {
        let kind = mail.kind();
        let rendered = self.templates.render(&mail).map_err(Error::Internal)?;
        let message = self.build_message(to, &rendered)?;
        let delivery = self.deliver(message, &rendered, kind);
        match tokio::time::timeout(self.timeout, delivery).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(
                    kind,
                    timeout_secs = self.timeout.as_secs(),
                    "mail delivery timed out"
                );
                Err(Error::Unavailable("mail"))
            }
        }
    }

    /// Emails a login's one-time code: `send` with `Mail::LoginCode`.
    pub async fn send_code(&self, to: &Email, code: &Code, valid_for_secs: u64) -> Result<()> {
        self.send(
            to,
            Mail::LoginCode {
                code,
                valid_for_secs,
            },
        )
        .await
    }

    async fn deliver(&self, message: Message, rendered: &Rendered, kind: &str) -> Result<()> {
        match &self.transport {
            Transport::Smtp(smtp) => smtp.send(message).await.map(drop).map_err(|err| {
                tracing::warn!(kind, error = %err, "mail relay refused or failed");
                Error::Unavailable("mail")
            }),
            Transport::Log => {
                // The text part as written, not its transfer encoding: a developer reads it.
                let to = message.envelope().to().iter().map(ToString::to_string);
                let to = to.collect::<Vec<_>>().join(", ");
                tracing::warn!(
                    "DEVELOPMENT ONLY mail transport \"log\" (not delivered, never use in production; the HTML part is left out, the \"file\" transport keeps it):\nTo: {to}\nSubject: {subject}\n\n{text}",
                    subject = rendered.subject,
                    text = rendered.text,
                );
                Ok(())
            }
            Transport::File(dir) => write_eml(dir, &message).await.map_err(|err| {
                tracing::warn!(kind, error = %err, dir = %dir.display(), "cannot write mail file");
                Error::Unavailable("mail")
            }),
        }
    }

    fn build_message(&self, to: &Email, rendered: &Rendered) -> Result<Message> {
        let to: Mailbox = to
            .as_str()
            .parse()
            .context("recipient address cannot be used in a message")?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject.as_str())
            .multipart(MultiPart::alternative_plain_html(
                rendered.text.clone(),
                rendered.html.clone(),
            ))
            .context("cannot build the email")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::codes::generate_code;

    const TOKEN: &str = "q8Zk1_-xT0kEn";

    fn mailer(adjust: impl FnOnce(&mut Settings)) -> Mailer {
        let mut settings = Settings::defaults();
        adjust(&mut settings);
        settings.check().unwrap();
        Mailer::from_settings(&settings).unwrap()
    }

    fn render(mailer: &Mailer, mail: Mail<'_>) -> Rendered {
        mailer.templates.render(&mail).unwrap()
    }

    /// Every kind with the given code and token, each with whether it carries a code.
    fn every_kind<'a>(code: &'a Code, token: &'a str, valid_for_secs: u64) -> Vec<Mail<'a>> {
        vec![
            Mail::LoginCode {
                code,
                valid_for_secs,
            },
            Mail::VerifyEmail {
                code,
                token,
                valid_for_secs,
            },
            Mail::ConfirmNewEmail {
                code,
                token,
                valid_for_secs,
            },
            Mail::ResetPassword {
                code,
                token,
                valid_for_secs,
            },
            Mail::PasswordChanged,
            Mail::EmailChangeRequested {
                new_email: "new@example.test",
            },
            Mail::AddressInUse,
            Mail::SecondFactorChanged {
                factor: "a code of your authenticator app",
            },
            Mail::PasskeyChanged {
                name: "Laptop".to_owned(),
                added: true,
            },
        ]
    }

    fn has_code(mail: &Mail<'_>) -> bool {
        matches!(
            mail,
            Mail::LoginCode { .. }
                | Mail::VerifyEmail { .. }
                | Mail::ConfirmNewEmail { .. }
                | Mail::ResetPassword { .. }
        )
    }

    /// The whitespace-delimited words of six ASCII digits, punctuation trimmed: how a reader
    /// (and testkit's sink) finds the code.
    fn six_digit_words(text: &str) -> Vec<&str> {
        text.split_whitespace()
            .map(|w| w.trim_matches(|c: char| c.is_ascii_punctuation()))
            .filter(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
            .collect()
    }

    #[test]
    fn every_kind_renders_a_short_subject_a_text_part_and_an_html_part() {
        let mailer = mailer(|_| {});
        let code = generate_code();
        for mail in every_kind(&code, TOKEN, 900) {
            let kind = mail.kind();
            let rendered = render(&mailer, mail);
            assert!(rendered.subject.contains("authd"), "{kind}");
            assert!(
                rendered.subject.chars().count() < 50,
                "{kind}: {}",
                rendered.subject
            );
            assert!(rendered.text.contains("authd"), "{kind}");
            assert!(rendered.text.lines().count() >= 3, "{kind}");
            assert!(rendered.html.starts_with("<!DOCTYPE html>"), "{kind}");
            assert!(rendered.html.contains("</html>"), "{kind}");
            assert!(
                rendered
                    .html
                    .contains(&format!("<title>{}</title>", rendered.subject)),
                "{kind}"
            );
        }
    }

    #[test]
    fn the_text_part_of_a_code_message_has_the_code_as_its_only_six_digit_word_and_a_notice_none() {
        let mailer = mailer(|_| {});
        for valid_for_secs in [1, 59, 60, 900, 3600, 7200, 86_400, 30 * 86_400] {
            let code = generate_code();
            for mail in every_kind(&code, TOKEN, valid_for_secs) {
                let (kind, expected) = (mail.kind(), has_code(&mail));
                let rendered = render(&mailer, mail);
                let words = six_digit_words(&rendered.text);
                if expected {
                    assert_eq!(words, [code.as_str()], "{kind}: {}", rendered.text);
                    assert!(rendered.html.contains(code.as_str()), "{kind}");
                } else {
                    assert!(words.is_empty(), "{kind}: {}", rendered.text);
                }
            }
        }
    }

    #[test]
    fn the_login_code_text_still_reads_your_sign_in_code_is_then_the_code() {
        // The zero-setup walkthrough (README) and its test find the code after this phrase.
        let code = generate_code();
        let rendered = render(
            &mailer(|_| {}),
            Mail::LoginCode {
                code: &code,
                valid_for_secs: 300,
            },
        );
        let line = format!("Your sign-in code is {}\n", code.as_str());
        assert!(rendered.text.starts_with(&line), "{}", rendered.text);
        assert!(
            rendered.text.contains("valid for 5 minutes"),
            "{}",
            rendered.text
        );
    }

    #[test]
    fn the_product_name_is_html_escaped_in_the_html_part_and_as_written_in_the_text_part() {
        let name = "<b>Acme</b> & \"Co\"";
        let mailer = mailer(|s| s.mail.product_name = name.into());
        let code = generate_code();
        for mail in every_kind(&code, TOKEN, 900) {
            let kind = mail.kind();
            let rendered = render(&mailer, mail);
            assert!(rendered.text.contains(name), "{kind}");
            assert!(rendered.subject.contains(name), "{kind}");
            assert!(!rendered.html.contains("<b>"), "{kind}: {}", rendered.html);
            assert!(!rendered.html.contains("\"Co\""), "{kind}");
            assert!(
                rendered
                    .html
                    .contains("&lt;b&gt;Acme&lt;&#x2f;b&gt; &amp; &quot;Co&quot;"),
                "{kind}: {}",
                rendered.html
            );
        }
        let rendered = render(
            &mailer,
            Mail::EmailChangeRequested {
                new_email: "<script>@example.test",
            },
        );
        assert!(!rendered.html.contains("<script>"), "{}", rendered.html);
        assert!(rendered.text.contains("<script>@example.test"));
    }

    #[test]
    fn the_links_lead_to_link_base_url_when_set_and_to_the_public_url_otherwise() {
        let cases = [
            (
                "https://app.example.com/account/",
                "",
                "https://app.example.com/account",
            ),
            ("", "https://auth.example.com/", "https://auth.example.com"),
            ("", "", "http://127.0.0.1:5050"),
        ];
        for (link_base_url, public_url, base) in cases {
            let mailer = mailer(|s| {
                s.mail.link_base_url = link_base_url.into();
                s.http.public_url = public_url.into();
            });
            let code = generate_code();
            for (mail, page) in [
                (
                    Mail::VerifyEmail {
                        code: &code,
                        token: TOKEN,
                        valid_for_secs: 900,
                    },
                    "verify-email",
                ),
                (
                    Mail::ConfirmNewEmail {
                        code: &code,
                        token: TOKEN,
                        valid_for_secs: 900,
                    },
                    "verify-email",
                ),
                (
                    Mail::ResetPassword {
                        code: &code,
                        token: TOKEN,
                        valid_for_secs: 900,
                    },
                    "reset-password",
                ),
            ] {
                let link = format!("{base}/{page}?token={TOKEN}");
                let rendered = render(&mailer, mail);
                let lines: Vec<_> = rendered
                    .text
                    .lines()
                    .filter(|l| l.contains("http"))
                    .collect();
                assert_eq!(lines, [link.as_str()], "{}", rendered.text);
                assert!(
                    rendered.html.contains(&format!("href=\"{link}\"")),
                    "{}",
                    rendered.html
                );
            }
        }
    }

    #[test]
    fn a_token_is_percent_encoded_in_the_link_query() {
        let code = generate_code();
        let rendered = render(
            &mailer(|s| s.mail.link_base_url = "https://app.example.com".into()),
            Mail::ResetPassword {
                code: &code,
                token: "a+b/c=&d",
                valid_for_secs: 900,
            },
        );
        let link = "https://app.example.com/reset-password?token=a%2Bb%2Fc%3D%26d";
        assert!(rendered.text.contains(link), "{}", rendered.text);
        assert!(rendered.html.contains(&format!("href=\"{link}\"")));
    }

    #[test]
    fn the_html_part_loads_nothing_and_its_only_url_is_the_action_link() {
        let mailer = mailer(|s| s.mail.link_base_url = "https://app.example.com/account".into());
        let code = generate_code();
        for mail in every_kind(&code, TOKEN, 900) {
            let kind = mail.kind();
            let rendered = render(&mailer, mail);
            let html = rendered.html.to_ascii_lowercase();
            let without_link = html.replace(
                &format!(
                    "https://app.example.com/account/{}",
                    "verify-email?token=q8zk1_-xt0ken"
                ),
                "",
            );
            let without_link = without_link.replace(
                "https://app.example.com/account/reset-password?token=q8zk1_-xt0ken",
                "",
            );
            for resource in [
                "http",
                "//",
                "src=",
                "url(",
                "@import",
                "<link",
                "<img",
                "<script",
                "<style",
                "<iframe",
                "<object",
                "background=",
            ] {
                assert!(
                    !without_link.contains(resource),
                    "{kind}: {resource} in {html}"
                );
            }
            assert!(html.matches("href=").count() <= 1, "{kind}");
        }
    }

    #[test]
    fn a_mail_is_debug_printed_without_its_code_or_token() {
        let code = generate_code();
        let mail = Mail::ResetPassword {
            code: &code,
            token: TOKEN,
            valid_for_secs: 900,
        };
        let printed = format!("{mail:?}");
        assert!(
            !printed.contains(code.as_str()) && !printed.contains(TOKEN),
            "{printed}"
        );
    }
}
