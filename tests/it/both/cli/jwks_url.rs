//! `token inspect --jwks URL`: the keys come from that URL or not at all (a redirect is not
//! followed, wherever it points), and a body past the cap is refused however it is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use authd::token::TokenKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use uuid::Uuid;

use super::{NO_DATABASE, Run, authd_on, keys, run, test_key};

/// The cap `--jwks` reads up to (1 MiB).
const CAP: usize = 1024 * 1024;

/// An HTTP server on loopback that answers every request with the same bytes, written in the
/// pieces given, and counts the requests it got.
struct Loopback {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl Loopback {
    async fn start(pieces: Vec<Vec<u8>>) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let pieces = Arc::new(pieces);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (counted, pieces) = (counted.clone(), pieces.clone());
                tokio::spawn(async move {
                    // The request head, up to its blank line (a GET has no body).
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match socket.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    // A client that stops reading (past the cap) ends the answer here.
                    for piece in pieces.iter() {
                        if socket.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Loopback { url, requests }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// The test key's JWKS with `padding` spaces inside it: still the same JSON set.
fn padded_jwks(padding: usize) -> Vec<u8> {
    let jwks = std::fs::read_to_string(&test_key().jwks).unwrap();
    let body = jwks.trim_end().strip_suffix('}').unwrap();
    format!("{body}{}}}", " ".repeat(padding)).into_bytes()
}

/// A 200 answer with a `Content-Length`.
fn sized(body: &[u8]) -> Vec<Vec<u8>> {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    vec![head.into_bytes(), body.to_vec()]
}

/// A 200 answer in 64 KiB chunks, with no length said up front.
fn chunked(body: &[u8]) -> Vec<Vec<u8>> {
    let mut pieces = vec![
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    for chunk in body.chunks(64 * 1024) {
        let mut piece = format!("{:x}\r\n", chunk.len()).into_bytes();
        piece.extend_from_slice(chunk);
        piece.extend_from_slice(b"\r\n");
        pieces.push(piece);
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    pieces
}

/// `token inspect --jwks URL` on a fresh access token of the test key, without a database.
async fn inspect_with(url: &str) -> Run {
    let issued = keys()
        .issue(TokenKind::Access, Uuid::new_v4(), Uuid::new_v4())
        .unwrap();
    run(authd_on(
        NO_DATABASE,
        &["token", "inspect", &issued.token, "--jwks", url],
    ))
    .await
}

#[tokio::test]
async fn token_inspect_takes_the_keys_from_the_jwks_url_and_never_from_where_it_redirects() {
    let keys_here = Loopback::start(sized(&padded_jwks(0))).await;
    let direct = inspect_with(&keys_here.url).await;
    assert_eq!(direct.code, Some(0), "{direct:?}");
    assert_eq!(keys_here.requests(), 1);
    // The same keys one redirect away: refused, and never fetched.
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        keys_here.url
    );
    let redirecting = Loopback::start(vec![redirect.into_bytes()]).await;
    let refused = inspect_with(&redirecting.url).await;
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.error_line().contains(&redirecting.url),
        "{refused:?}"
    );
    assert_eq!(redirecting.requests(), 1);
    assert_eq!(keys_here.requests(), 1, "the redirect was followed");
}

#[tokio::test]
async fn token_inspect_refuses_a_jwks_url_whose_body_runs_past_the_cap_even_without_a_length() {
    // Just under the cap, sent in chunks: read whole, and the keys verify the token.
    let under = padded_jwks(CAP - 2 * 1024);
    assert!(under.len() <= CAP);
    let fits = Loopback::start(chunked(&under)).await;
    let read = inspect_with(&fits.url).await;
    assert_eq!(read.code, Some(0), "{read:?}");
    // The same keys with half a mebibyte more: the reading stops past the cap.
    for answer in [
        chunked(&padded_jwks(CAP + CAP / 2)),
        sized(&padded_jwks(CAP + CAP / 2)),
    ] {
        let large = Loopback::start(answer).await;
        let refused = inspect_with(&large.url).await;
        assert_eq!(refused.code, Some(1), "{refused:?}");
        assert!(
            refused
                .error_line()
                .contains(&format!("is over {CAP} bytes")),
            "{refused:?}"
        );
    }
}
