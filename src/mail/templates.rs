//! The messages' wording: subjects here, bodies in templates/mail/ (compiled in), one text and
//! one HTML template per kind, the HTML ones sharing layout.html and autoescaped.

use minijinja::{Environment, UndefinedBehavior, Value, context};

use super::Mail;

/// Every template, by the name the others and `render` use. The `.html` ones are autoescaped.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "layout.html",
        include_str!("../../templates/mail/layout.html"),
    ),
    (
        "login_code.txt",
        include_str!("../../templates/mail/login_code.txt"),
    ),
    (
        "login_code.html",
        include_str!("../../templates/mail/login_code.html"),
    ),
    (
        "verify_email.txt",
        include_str!("../../templates/mail/verify_email.txt"),
    ),
    (
        "verify_email.html",
        include_str!("../../templates/mail/verify_email.html"),
    ),
    (
        "confirm_new_email.txt",
        include_str!("../../templates/mail/confirm_new_email.txt"),
    ),
    (
        "confirm_new_email.html",
        include_str!("../../templates/mail/confirm_new_email.html"),
    ),
    (
        "reset_password.txt",
        include_str!("../../templates/mail/reset_password.txt"),
    ),
    (
        "reset_password.html",
        include_str!("../../templates/mail/reset_password.html"),
    ),
    (
        "password_changed.txt",
        include_str!("../../templates/mail/password_changed.txt"),
    ),
    (
        "password_changed.html",
        include_str!("../../templates/mail/password_changed.html"),
    ),
    (
        "email_change_requested.txt",
        include_str!("../../templates/mail/email_change_requested.txt"),
    ),
    (
        "email_change_requested.html",
        include_str!("../../templates/mail/email_change_requested.html"),
    ),
    (
        "address_in_use.txt",
        include_str!("../../templates/mail/address_in_use.txt"),
    ),
    (
        "address_in_use.html",
        include_str!("../../templates/mail/address_in_use.html"),
    ),
    (
        "second_factor_changed.txt",
        include_str!("../../templates/mail/second_factor_changed.txt"),
    ),
    (
        "second_factor_changed.html",
        include_str!("../../templates/mail/second_factor_changed.html"),
    ),
    (
        "passkey_changed.txt",
        include_str!("../../templates/mail/passkey_changed.txt"),
    ),
    (
        "passkey_changed.html",
        include_str!("../../templates/mail/passkey_changed.html"),
    ),
];

/// A message ready to be built: its subject and its two bodies.
pub(super) struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// The parsed templates and what every message says the same way. Cheap to share (in an Arc).
pub(super) struct Templates {
    env: Environment<'static>,
    product: String,
    /// Where the links lead, without a trailing slash.
    link_base: String,
}

impl Templates {
    /// Parses every template once, so a broken one stops authd at start, not at the first mail.
    pub fn new(product: &str, link_base: &str) -> anyhow::Result<Templates> {
        let mut env = Environment::new();
        // A misspelt variable fails the render (and the unit tests) instead of vanishing.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|err| anyhow::anyhow!("mail template {name}: {err}"))?;
        }
        Ok(Templates {
            env,
            product: product.trim().to_owned(),
            link_base: link_base.trim_end_matches('/').to_owned(),
        })
    }

    /// The subject and both bodies of `mail`. Holds the code and the token: never log it.
    pub fn render(&self, mail: &Mail<'_>) -> anyhow::Result<Rendered> {
        let product = self.product.as_str();
        let mut factor = None;
        let mut passkey = None;
        let (name, subject, code, link, valid_for, new_email) = match *mail {
            Mail::LoginCode {
                code,
                valid_for_secs,
            } => (
                "login_code",
                format!("Your sign-in code for {product}"),
                Some(code.as_str()),
                None,
                Some(describe_duration(valid_for_secs)),
                None,
            ),
            Mail::VerifyEmail {
                code,
                token,
                valid_for_secs,
            } => (
                "verify_email",
                format!("Confirm your email for {product}"),
                Some(code.as_str()),
                Some(self.link("verify-email", token)),
                Some(describe_duration(valid_for_secs)),
                None,
            ),
            Mail::ConfirmNewEmail {
                code,
                token,
                valid_for_secs,
            } => (
                "confirm_new_email",
                format!("Confirm your new email for {product}"),
                Some(code.as_str()),
                Some(self.link("verify-email", token)),
                Some(describe_duration(valid_for_secs)),
                None,
            ),
            Mail::ResetPassword {
                code,
                token,
                valid_for_secs,
            } => (
                "reset_password",
                format!("Reset your {product} password"),
                Some(code.as_str()),
                Some(self.link("reset-password", token)),
                Some(describe_duration(valid_for_secs)),
                None,
            ),
            Mail::PasswordChanged => (
                "password_changed",
                format!("Your {product} password was changed"),
                None,
                None,
                None,
                None,
            ),
            Mail::EmailChangeRequested { new_email } => (
                "email_change_requested",
                format!("Change of your {product} email address"),
                None,
                None,
                None,
                Some(new_email),
            ),
            Mail::AddressInUse => (
                "address_in_use",
                format!("This address already has a {product} account"),
                None,
                None,
                None,
                None,
            ),
            Mail::SecondFactorChanged { factor: now } => {
                factor = Some(now);
                (
                    "second_factor_changed",
                    format!("Your {product} second step changed"),
                    None,
                    None,
                    None,
                    None,
                )
            }
            Mail::PasskeyChanged { ref name, added } => {
                passkey = Some(context! { name => name.as_str(), added => added });
                (
                    "passkey_changed",
                    if added {
                        format!("A passkey was added to your {product} account")
                    } else {
                        format!("A passkey was removed from your {product} account")
                    },
                    None,
                    None,
                    None,
                    None,
                )
            }
        };
        let ctx = context! {
            subject => subject.as_str(),
            product => product,
            code => code,
            valid_for => valid_for,
            new_email => new_email,
            factor => factor,
            passkey => passkey,
        };
        let text_link = context! { link => link.as_deref() };
        // Autoescaping would write every '/' of the link as "&#x2f;": valid, but not the address
        // a reader copies or a client shows. Only what could leave the attribute is escaped.
        let html_link = context! { link => link.as_deref().map(escape_attribute) };
        let text = self.render_one(
            &format!("{name}.txt"),
            context! { ..text_link, ..ctx.clone() },
        )?;
        let html = self.render_one(&format!("{name}.html"), context! { ..html_link, ..ctx })?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    fn render_one(&self, name: &str, ctx: Value) -> anyhow::Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|err| anyhow::anyhow!("mail template {name}: {err}"))?;
        let mut body = template
            .render(ctx)
            .map_err(|err| anyhow::anyhow!("mail template {name}: {err}"))?;
        body.push('\n');
        Ok(body)
    }

    /// `<link base>/<page>?token=<token>`, the token percent-encoded (base64url needs none, but
    /// the query stays well formed whatever it is given).
    fn link(&self, page: &str, token: &str) -> String {
        let token: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        format!("{}/{page}?token={token}", self.link_base)
    }
}

/// The link for an HTML attribute (and text), marked safe so autoescaping leaves it alone.
fn escape_attribute(link: &str) -> Value {
    let mut escaped = String::with_capacity(link.len());
    for c in link.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    Value::from_safe_string(escaped)
}

/// "15 minutes", "1 hour", "2 days": a round figure a reader takes in at once, never shorter
/// than the real validity, and small, so no number in a message looks like a six-digit code.
fn describe_duration(secs: u64) -> String {
    let minutes = secs.div_ceil(60).max(1);
    let (count, unit) = if minutes < 120 {
        (minutes, "minute")
    } else if minutes < 48 * 60 {
        (minutes.div_ceil(60), "hour")
    } else {
        (minutes.div_ceil(24 * 60), "day")
    };
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::describe_duration;

    #[test]
    fn a_validity_is_a_round_figure_never_shorter_than_the_real_one() {
        for (secs, words) in [
            (1, "1 minute"),
            (60, "1 minute"),
            (61, "2 minutes"),
            (900, "15 minutes"),
            (901, "16 minutes"),
            (7_140, "119 minutes"),
            (7_200, "2 hours"),
            (7_201, "3 hours"),
            (86_400, "24 hours"),
            (172_800, "2 days"),
            (7 * 86_400, "7 days"),
        ] {
            assert_eq!(describe_duration(secs), words, "{secs} s");
        }
    }
}
