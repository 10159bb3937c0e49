//! A small SMTP server on loopback: speaks enough RFC 5321 for lettre and keeps what it receives.
//! It can also misbehave (refuse, fail the transaction, say nothing, or take its time) so tests
//! can check authd's timeouts and what happens to requests waiting on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mail_parser::{MimeHeaders, PartType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long the sink waits for the client's next line before it hangs up.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a silent sink holds a connection without a word.
const SILENCE: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept and keep every message.
    Accept,
    /// Answer the greeting with 554: no service.
    Refuse,
    /// Accept the envelope, then fail the message with 451.
    FailData,
    /// Accept the TCP connection and never say a word.
    Silent,
    /// Like `Accept`, but wait this long before the greeting: keeps a login in flight.
    Delay(Duration),
}

/// One message as the sink received it: the envelope recipients and the data, dot-unstuffed.
/// The accessors read the data as MIME: headers decoded, parts found, transfer encodings
/// (quoted-printable, base64) undone.
#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: String,
}

impl Received {
    fn parsed(&self) -> Option<mail_parser::Message<'_>> {
        mail_parser::MessageParser::default().parse(self.data.as_bytes())
    }

    /// The decoded Subject header; empty when there is none.
    pub fn subject(&self) -> String {
        self.parsed()
            .and_then(|m| m.subject().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The decoded text/plain part; the whole body when the message is not multipart.
    pub fn text(&self) -> String {
        let Some(message) = self.parsed() else {
            return String::new();
        };
        message
            .parts
            .iter()
            .find_map(|part| match &part.body {
                PartType::Text(text) if is_plain(part) => Some(text.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// The decoded text/html part, if there is one.
    pub fn html(&self) -> Option<String> {
        self.parsed()?
            .parts
            .iter()
            .find_map(|part| match &part.body {
                PartType::Html(html) => Some(html.to_string()),
                _ => None,
            })
    }

    /// The code: the one whitespace-delimited word of six ASCII digits (punctuation around it
    /// trimmed) in the text part. None unless there is exactly one.
    pub fn code(&self) -> Option<String> {
        let text = self.text();
        let mut words = text
            .split_whitespace()
            .map(|word| word.trim_matches(|c: char| c.is_ascii_punctuation()))
            .filter(|word| word.len() == 6 && word.bytes().all(|b| b.is_ascii_digit()));
        match (words.next(), words.next()) {
            (Some(code), None) => Some(code.to_owned()),
            _ => None,
        }
    }

    /// The first http:// or https:// URL in the text part.
    pub fn link(&self) -> Option<String> {
        let text = self.text();
        text.split_whitespace().find_map(|word| {
            let start = word.find("https://").or_else(|| word.find("http://"))?;
            let url = word[start..].trim_end_matches(|c: char| {
                matches!(
                    c,
                    '.' | ',' | ';' | ':' | '!' | '?' | ')' | ']' | '>' | '"' | '\''
                )
            });
            url::Url::parse(url).ok().map(|_| url.to_owned())
        })
    }

    /// The `token` query parameter of `link()`, percent-decoded.
    pub fn token(&self) -> Option<String> {
        let link = url::Url::parse(&self.link()?).ok()?;
        link.query_pairs()
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    }

    fn is_to(&self, rcpt: &str) -> bool {
        self.rcpt.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
    }
}

/// A text/plain part: one that says so, or one that says nothing (plain text is the default).
fn is_plain(part: &mail_parser::MessagePart<'_>) -> bool {
    part.content_type().is_none_or(|ct| {
        ct.ctype().eq_ignore_ascii_case("text")
            && ct
                .subtype()
                .is_none_or(|sub| sub.eq_ignore_ascii_case("plain"))
    })
}

#[derive(Clone)]
pub struct MailSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
    arrived: Arc<Notify>,
}

impl MailSink {
    /// Listens on a free loopback port until the runtime ends.
    pub async fn start(behaviour: Behaviour) -> std::io::Result<MailSink> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sink = MailSink {
            port: listener.local_addr()?.port(),
            received: Arc::default(),
            connections: Arc::default(),
            arrived: Arc::default(),
        };
        let serving = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let sink = serving.clone();
                tokio::spawn(async move {
                    let _ = sink.serve(stream, behaviour).await;
                });
            }
        });
        Ok(sink)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Waits (up to 10 s) until authd has opened `count` connections to the sink.
    pub async fn wait_for_connections(&self, count: usize) {
        for _ in 0..200 {
            if self.connections() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("authd never opened connection number {count} to the mail sink");
    }

    fn received(&self) -> MutexGuard<'_, Vec<Received>> {
        self.received.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received().clone()
    }

    pub fn messages_to(&self, rcpt: &str) -> Vec<Received> {
        self.received()
            .iter()
            .filter(|m| m.is_to(rcpt))
            .cloned()
            .collect()
    }

    /// Waits (up to 10 s) until `count` messages to `rcpt` have arrived and returns the last one.
    pub async fn wait_for(&self, rcpt: &str, count: usize) -> Received {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let arrived = self.arrived.notified();
            let messages = self.messages_to(rcpt);
            if messages.len() >= count {
                return messages.last().cloned().expect("count is at least one");
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("no message number {count} to {rcpt} arrived");
            }
        }
    }

    /// Forgets every message to `rcpt`.
    pub fn forget(&self, rcpt: &str) {
        self.received().retain(|m| !m.is_to(rcpt));
    }

    /// Waits up to `wait` for a message to `rcpt` with a code, then forgets the messages to
    /// `rcpt` and returns the code of the newest. Keeps a long load run's memory flat.
    pub async fn take_code(&self, rcpt: &str, wait: Duration) -> Option<String> {
        let deadline = Instant::now() + wait;
        loop {
            let arrived = self.arrived.notified();
            {
                let mut received = self.received();
                let newest = received.iter().rev().find(|m| m.is_to(rcpt));
                if let Some(code) = newest.and_then(Received::code) {
                    received.retain(|m| !m.is_to(rcpt));
                    return Some(code);
                }
            }
            tokio::time::timeout_at(deadline, arrived).await.ok()?;
        }
    }

    async fn serve(&self, stream: TcpStream, behaviour: Behaviour) -> std::io::Result<()> {
        if behaviour == Behaviour::Silent {
            tokio::time::sleep(SILENCE).await;
            return Ok(());
        }
        if let Behaviour::Delay(delay) = behaviour {
            tokio::time::sleep(delay).await;
        }
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        if behaviour == Behaviour::Refuse {
            write.write_all(b"554 5.3.2 no service here\r\n").await?;
            return Ok(());
        }
        write
            .write_all(b"220 sink.test ESMTP test sink\r\n")
            .await?;
        let mut rcpt = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(LINE_TIMEOUT, lines.next_line())
            .await
            .unwrap_or(Ok(None))
        {
            let upper = line.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                write
                    .write_all(b"250-sink.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                    .await?;
            } else if upper.starts_with("HELO") {
                write.write_all(b"250 sink.test\r\n").await?;
            } else if upper.starts_with("MAIL FROM") {
                rcpt.clear();
                write.write_all(b"250 2.1.0 ok\r\n").await?;
            } else if upper.starts_with("RCPT TO") {
                let address = line[8..]
                    .trim()
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap_or_default()
                    .to_string();
                rcpt.push(address);
                write.write_all(b"250 2.1.5 ok\r\n").await?;
            } else if upper.starts_with("DATA") {
                if behaviour == Behaviour::FailData {
                    write.write_all(b"451 4.3.0 try again later\r\n").await?;
                    continue;
                }
                write.write_all(b"354 end with .\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    let line = line.strip_prefix('.').map_or(line.as_str(), |l| l);
                    data.push_str(line);
                    data.push('\n');
                }
                self.received().push(Received {
                    rcpt: std::mem::take(&mut rcpt),
                    data,
                });
                self.arrived.notify_waiters();
                write.write_all(b"250 2.0.0 queued\r\n").await?;
            } else if upper.starts_with("RSET") || upper.starts_with("NOOP") {
                write.write_all(b"250 ok\r\n").await?;
            } else if upper.starts_with("QUIT") {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                write.write_all(b"502 command not implemented\r\n").await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::Message;
    use lettre::message::header::{ContentTransferEncoding, ContentType};
    use lettre::message::{MultiPart, SinglePart};

    fn message(data: &str) -> Received {
        Received {
            rcpt: vec!["a@example.test".into()],
            data: data.into(),
        }
    }

    /// The message as the sink keeps it after an SMTP delivery: lines joined with "\n".
    fn received(message: &Message) -> Received {
        let formatted = String::from_utf8(message.formatted()).unwrap();
        message_with_lf(&formatted)
    }

    fn message_with_lf(formatted: &str) -> Received {
        let mut data = formatted.split("\r\n").collect::<Vec<_>>().join("\n");
        if !data.ends_with('\n') {
            data.push('\n');
        }
        message(&data)
    }

    fn builder() -> lettre::message::MessageBuilder {
        Message::builder()
            .from("authd <no-reply@example.test>".parse().unwrap())
            .to("ada@example.test".parse().unwrap())
    }

    const LINK: &str = "https://app.example.com/account/verify-email?token=q8Zk1_-xT0kEn%2B";

    /// A text long enough per line that lettre will not send it as 7bit.
    fn long_text() -> String {
        format!(
            "Confirm your email address for Acme, a product whose name makes this line long.\n\n\
             Your code: 042917\n\nOr open this link:\n{LINK}\n"
        )
    }

    #[test]
    fn the_code_is_the_one_six_digit_word_of_the_text() {
        assert_eq!(
            message("Message-ID: <123456@x>\n\nYour sign-in code is 042917.\n").code(),
            Some("042917".into())
        );
        assert_eq!(message("h: v\n\nno code 1234567 here\n").code(), None);
        assert_eq!(message("h: v\n\n111111 and 222222\n").code(), None);
        assert_eq!(message("h: v\n\ncode:123456 is glued\n").code(), None);
        assert_eq!(message("h: v\n\n(123456)\n").code(), Some("123456".into()));
    }

    #[test]
    fn a_plain_message_is_read_whole_with_no_html() {
        let plain = builder()
            .subject("Your sign-in code for authd")
            .body(String::from("Your sign-in code is 042917\n"))
            .unwrap();
        let got = received(&plain);
        assert_eq!(got.subject(), "Your sign-in code for authd");
        assert_eq!(got.text(), "Your sign-in code is 042917\n");
        assert_eq!(got.html(), None);
        assert_eq!(got.code(), Some("042917".into()));
        assert_eq!(got.link(), None);
        assert_eq!(got.token(), None);
    }

    #[test]
    fn a_multipart_message_in_quoted_printable_gives_its_decoded_text_html_code_link_and_token() {
        let html = format!(
            "<p style=\"margin:0;font-family:Helvetica,Arial,sans-serif;font-size:15px;\">Code \
             <b>042917</b></p><a href=\"{LINK}\">Confirm</a>"
        );
        let mail = builder()
            .subject("Confirm your email for Acme")
            .multipart(MultiPart::alternative_plain_html(long_text(), html.clone()))
            .unwrap();
        let raw = String::from_utf8(mail.formatted()).unwrap();
        assert!(raw.contains("quoted-printable"), "the test needs QP: {raw}");
        assert!(
            !raw.contains(LINK),
            "the link is QP-encoded in the raw data: {raw}"
        );
        let got = received(&mail);
        assert_eq!(got.subject(), "Confirm your email for Acme");
        assert_eq!(got.text().replace("\r\n", "\n"), long_text());
        assert_eq!(got.html().map(|h| h.replace("\r\n", "\n")), Some(html));
        assert_eq!(
            got.code(),
            Some("042917".into()),
            "the HTML's copy does not count"
        );
        assert_eq!(got.link().as_deref(), Some(LINK));
        assert_eq!(got.token().as_deref(), Some("q8Zk1_-xT0kEn+"));
    }

    #[test]
    fn base64_parts_and_an_encoded_utf8_subject_are_decoded() {
        let part = |content_type: ContentType, body: String| {
            SinglePart::builder()
                .header(content_type)
                .header(ContentTransferEncoding::Base64)
                .body(body)
        };
        let mail = builder()
            .subject("Réinitialisez votre mot de passe Ωmega")
            .multipart(
                MultiPart::alternative()
                    .singlepart(part(ContentType::TEXT_PLAIN, long_text()))
                    .singlepart(part(ContentType::TEXT_HTML, "<p>042917</p>".into())),
            )
            .unwrap();
        let raw = String::from_utf8(mail.formatted()).unwrap();
        assert!(raw.contains("Content-Transfer-Encoding: base64"), "{raw}");
        assert!(
            !raw.contains("042917"),
            "the code is base64 in the raw data: {raw}"
        );
        let got = received(&mail);
        assert_eq!(got.subject(), "Réinitialisez votre mot de passe Ωmega");
        assert_eq!(got.text().replace("\r\n", "\n"), long_text());
        assert_eq!(got.html().as_deref(), Some("<p>042917</p>"));
        assert_eq!(got.code(), Some("042917".into()));
        assert_eq!(got.token().as_deref(), Some("q8Zk1_-xT0kEn+"));
    }

    #[test]
    fn a_message_with_no_or_two_links_gives_the_first_and_its_token() {
        let got = message(
            "h: v\n\nOpen <https://a.example/reset-password?x=1&token=abc%3D>.\n\
             Or http://b.example/?token=zzz\n",
        );
        assert_eq!(
            got.link().as_deref(),
            Some("https://a.example/reset-password?x=1&token=abc%3D")
        );
        assert_eq!(got.token().as_deref(), Some("abc="));
        assert_eq!(
            message("h: v\n\nno link, just http: and words\n").link(),
            None
        );
    }
}
