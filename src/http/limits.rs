//! The per-address request limit and the caps on open connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use super::routes::AppState;
pub use crate::auth::client_key;
use crate::config::{HttpSettings, RateLimitSettings};

/// Requests per minute per client address (see [`client_key`]), kept in this process's memory.
pub struct IpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    ipv6_prefix_len: u8,
}

impl IpLimiter {
    pub fn new(per_minute: u32, ipv6_prefix_len: u8) -> Arc<IpLimiter> {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(IpLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            ipv6_prefix_len,
        });
        // Forget addresses whose allowance is full again, so memory stays bounded.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(limiter) = weak.upgrade() else { break };
                limiter.limiter.retain_recent();
            }
        });
        limiter
    }

    /// `Err(seconds to wait)` when `ip` is over its allowance.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let key = client_key(ip, self.ipv6_prefix_len);
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            wait.as_secs() + 1
        })
    }
}

/// Middleware for the login routes: 429 with `Retry-After` past the per-address allowance.
pub async fn limit_per_ip(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(limiter) = &state.ip_limiter {
        let (parts, body) = request.into_parts();
        let ip = state.client_address.of_request(&parts);
        if let Some(ip) = ip
            && let Err(retry_after_secs) = limiter.check(ip)
        {
            tracing::info!(%ip, "per-address request limit reached");
            state.auth.metrics().throttle("address");
            return ApiError::from(crate::error::Error::RateLimited { retry_after_secs })
                .into_response();
        }
        return next.run(Request::from_parts(parts, body)).await;
    }
    next.run(request).await
}

/// The caps on open connections: one for the process and one per client address (see
/// [`client_key`]). A connection past either is closed at once rather than queued, so the file
/// descriptors and memory go to the connections being served and no one client takes every slot.
pub struct ConnectionCaps {
    max_total: usize,
    /// `None` behind a trusted proxy (`rate_limit.client_ip_header` set): every connection
    /// then comes from the proxy, which would hit the cap for all its clients at once.
    max_per_client: Option<usize>,
    ipv6_prefix_len: u8,
    open: Mutex<OpenConnections>,
}

#[derive(Default)]
struct OpenConnections {
    total: usize,
    /// Only keys with an open connection are kept: at most `max_total` entries.
    per_client: HashMap<IpAddr, usize>,
}

impl ConnectionCaps {
    pub fn from_settings(http: &HttpSettings, limits: &RateLimitSettings) -> Arc<ConnectionCaps> {
        let behind_proxy = !limits.client_ip_header.trim().is_empty();
        Arc::new(ConnectionCaps {
            max_total: http.max_connections,
            max_per_client: (!behind_proxy).then_some(http.max_connections_per_ip),
            ipv6_prefix_len: limits.ipv6_prefix_len,
            open: Mutex::default(),
        })
    }

    /// A slot for a new connection from `peer`, held until the connection ends; past a cap,
    /// which one.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, CapReached> {
        let key = client_key(peer, self.ipv6_prefix_len);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.total >= self.max_total {
            return Err(CapReached::Process);
        }
        let mine = open.per_client.get(&key).copied().unwrap_or(0);
        if self.max_per_client.is_some_and(|max| mine >= max) {
            return Err(CapReached::Client);
        }
        open.total += 1;
        open.per_client.insert(key, mine + 1);
        Ok(ConnectionSlot {
            caps: Arc::clone(self),
            key,
        })
    }
}

/// The cap a refused connection was past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapReached {
    /// `http.max_connections`
    Process,
    /// `http.max_connections_per_ip`
    Client,
}

impl CapReached {
    /// Its metrics label.
    pub fn label(self) -> &'static str {
        match self {
            CapReached::Process => "process",
            CapReached::Client => "client",
        }
    }
}

/// One admitted connection; dropping it frees its place under both caps.
pub struct ConnectionSlot {
    caps: Arc<ConnectionCaps>,
    key: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.caps.open.lock().unwrap_or_else(|e| e.into_inner());
        open.total -= 1;
        if let Some(count) = open.per_client.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.per_client.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(header: &str) -> RateLimitSettings {
        let mut s = crate::config::Settings::defaults().rate_limit;
        s.client_ip_header = header.into();
        s
    }

    #[tokio::test]
    async fn the_limiter_refuses_past_the_allowance_per_address() {
        let limiter = IpLimiter::new(2, 64);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let wait = limiter.check(a).unwrap_err();
        assert!((1..=61).contains(&wait), "{wait}");
        assert!(limiter.check(b).is_ok());
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_prefix_and_mapped_ipv4_by_its_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let key = |s: &str| client_key(ip(s), 64);
        assert_eq!(key("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2::"));
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:192.0.2.7"), ip("192.0.2.7"));
        assert_eq!(key("192.0.2.7"), ip("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(
            client_key(ip("2001:db8::1"), 128),
            ip("2001:db8::1"),
            "/128 keeps the address"
        );
        assert_eq!(client_key(ip("2001:db8::1"), 0), ip("::"));
    }

    #[tokio::test]
    async fn addresses_of_one_ipv6_prefix_share_one_allowance() {
        let limiter = IpLimiter::new(2, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(limiter.check(ip("2001:db8:0:1::a")).is_ok());
        assert!(limiter.check(ip("2001:db8:0:1::b")).is_ok());
        assert!(limiter.check(ip("2001:db8:0:1:ffff::c")).is_err());
        assert!(limiter.check(ip("2001:db8:0:2::a")).is_ok());
        assert!(limiter.check(ip("::ffff:192.0.2.1")).is_ok());
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
        assert!(
            limiter.check(ip("192.0.2.1")).is_err(),
            "mapped counts as IPv4"
        );
    }

    #[test]
    fn connection_caps_hold_per_client_and_per_process_and_free_on_drop() {
        let mut http = crate::config::Settings::defaults().http;
        http.max_connections = 3;
        http.max_connections_per_ip = 2;
        let caps = ConnectionCaps::from_settings(&http, &settings(""));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = caps.admit(ip("192.0.2.1")).unwrap();
        let _a2 = caps.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.1")).err(), Some(CapReached::Client));
        let _b = caps.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(caps.admit(ip("192.0.2.3")).err(), Some(CapReached::Process));
        drop(a1);
        assert!(caps.admit(ip("192.0.2.1")).is_ok());
        let proxied = ConnectionCaps::from_settings(&http, &settings("x-forwarded-for"));
        let _held: Vec<_> = (0..3)
            .map(|_| proxied.admit(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(
            proxied.admit(ip("192.0.2.1")).err(),
            Some(CapReached::Process),
            "per process only"
        );
    }
}
