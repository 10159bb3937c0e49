//! A small SMTP server for the tests: speaks enough RFC 5321 for lettre and keeps what it receives.
//! It can also misbehave (refuse, fail the transaction, say nothing, or take its time) to test
//! authd's timeouts and what happens to requests waiting on it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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

#[derive(Debug, Clone)]
pub struct Received {
    pub rcpt: Vec<String>,
    pub data: String,
}

#[derive(Clone)]
pub struct MailSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicUsize>,
}

impl MailSink {
    pub async fn start(behaviour: Behaviour) -> MailSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, behaviour, store).await;
                });
            }
        });
        MailSink {
            port,
            received,
            connections,
        }
    }

    /// Waits (up to 10 s) until authd has opened `count` connections to the sink.
    pub async fn wait_for_connections(&self, count: usize) {
        for _ in 0..200 {
            if self.connections.load(Ordering::SeqCst) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("authd never opened connection number {count} to the mail sink");
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn messages_to(&self, rcpt: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.rcpt.iter().any(|r| r.eq_ignore_ascii_case(rcpt)))
            .collect()
    }

    /// Waits (up to 10 s) until `count` messages to `rcpt` have arrived and returns the last one.
    pub async fn wait_for(&self, rcpt: &str, count: usize) -> Received {
        for _ in 0..200 {
            let messages = self.messages_to(rcpt);
            if messages.len() >= count {
                return messages.last().unwrap().clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no message number {count} to {rcpt} arrived");
    }
}

/// The six-digit code in a message's body: exactly six consecutive digits, no digit either side.
/// (Headers are skipped: a Message-ID may hold six digits by chance.)
pub fn extract_code(message: &Received) -> String {
    let body = message
        .data
        .split_once("\r\n\r\n")
        .or_else(|| message.data.split_once("\n\n"))
        .map_or(message.data.as_str(), |(_, body)| body);
    let bytes = body.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == 6 {
                found.push(body[start..i].to_string());
            }
        } else {
            i += 1;
        }
    }
    assert_eq!(
        found.len(),
        1,
        "expected exactly one 6-digit code in {:?}",
        message.data
    );
    found.pop().unwrap()
}

async fn serve(
    stream: TcpStream,
    behaviour: Behaviour,
    store: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    if behaviour == Behaviour::Silent {
        tokio::time::sleep(Duration::from_secs(120)).await;
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
    while let Some(line) = lines.next_line().await? {
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
            store.lock().unwrap().push(Received {
                rcpt: rcpt.clone(),
                data,
            });
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
