//! A small SMTP server on loopback: speaks enough RFC 5321 for lettre and keeps what it receives.
//! It can also misbehave (refuse, fail the transaction, say nothing, or take its time) so tests
//! can check authd's timeouts and what happens to requests waiting on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

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
#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: String,
}

impl Received {
    /// The six-digit code in the body: exactly one run of six digits with no digit either side.
    /// Headers are skipped (a Message-ID may hold six digits by chance). None unless exactly one.
    pub fn code(&self) -> Option<String> {
        let body = self
            .data
            .split_once("\r\n\r\n")
            .or_else(|| self.data.split_once("\n\n"))
            .map_or(self.data.as_str(), |(_, body)| body);
        let mut runs = body
            .split(|c: char| !c.is_ascii_digit())
            .filter(|run| run.len() == 6);
        match (runs.next(), runs.next()) {
            (Some(code), None) => Some(code.to_owned()),
            _ => None,
        }
    }

    fn is_to(&self, rcpt: &str) -> bool {
        self.rcpt.iter().any(|r| r.eq_ignore_ascii_case(rcpt))
    }
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

    fn message(data: &str) -> Received {
        Received {
            rcpt: vec!["a@example.test".into()],
            data: data.into(),
        }
    }

    #[test]
    fn the_code_is_the_one_six_digit_run_of_the_body() {
        assert_eq!(
            message("Message-ID: <123456@x>\n\nYour sign-in code is 042917.\n").code(),
            Some("042917".into())
        );
        assert_eq!(message("h: v\n\nno code 1234567 here\n").code(), None);
        assert_eq!(message("h: v\n\n111111 and 222222\n").code(), None);
    }
}
