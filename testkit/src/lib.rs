//! Support shared by authd's integration tests (`tests/it`) and its load benchmark (`bench/`):
//! a loopback SMTP sink, throwaway PostgreSQL databases, free ports, a headless Chromium for
//! the tests of authd's HTML pages, and a software passkey authenticator.
//! Nothing here is linked into the server.

pub mod browser;
pub mod passkey;
pub mod postgres;
pub mod smtp;

/// A free loopback port: bound, then released, so a child process can bind it. Another process
/// may take it in between; on a test machine that is rare enough.
pub fn free_port() -> std::io::Result<u16> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.port())
}
