//! `authd healthcheck`: exit 0 when the local server answers `GET /healthz` with 200.
//! Used by the container HEALTHCHECK, where no curl exists; needs no database and no key.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::UserError;
use crate::config::Settings;

/// Total time allowed, below Docker's default health check timeout.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address of the server to check; default: http.addr (0.0.0.0 is checked on 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<SocketAddr>,
}

pub async fn run(args: HealthcheckArgs, settings: &Settings) -> anyhow::Result<()> {
    let addr = match args.addr {
        Some(addr) => addr,
        None => local_target(&settings.http.addr)?,
    };
    let status = tokio::time::timeout(TIMEOUT, get_status(addr))
        .await
        .map_err(|_| UserError(format!("no answer from {addr} within {TIMEOUT:?}")))??;
    if status != 200 {
        bail!(UserError(format!(
            "GET http://{addr}/healthz answered {status}"
        )));
    }
    println!("ok: http://{addr}/healthz answered 200");
    Ok(())
}

/// The address to dial for a listen address: unspecified ones are reached over loopback.
fn local_target(listen: &str) -> anyhow::Result<SocketAddr> {
    let mut addr: SocketAddr = listen
        .parse()
        .with_context(|| format!("http.addr {listen:?} is not an IP address and port"))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr)
}

async fn get_status(addr: SocketAddr) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| UserError(format!("cannot connect to {addr}: {e}")))?;
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| UserError(format!("{addr} did not answer HTTP")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_addresses_are_checked_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:5050").unwrap(),
            "127.0.0.1:5050".parse().unwrap()
        );
        assert_eq!(
            local_target("[::]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert_eq!(
            local_target("10.0.0.5:1").unwrap(),
            "10.0.0.5:1".parse().unwrap()
        );
        assert!(local_target("localhost:5050").is_err());
    }
}
