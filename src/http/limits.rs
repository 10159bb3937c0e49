//! Who the client is (peer address or a trusted proxy header) and the per-address request limit.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::AppState;
use super::error::ApiError;
use crate::auth::Client;
use crate::config::RateLimitSettings;

/// How the client address is found: the TCP peer, or a header set by a trusted proxy.
#[derive(Debug, Clone)]
pub struct ClientAddress {
    header: Option<HeaderName>,
}

impl ClientAddress {
    pub fn from_settings(settings: &RateLimitSettings) -> anyhow::Result<ClientAddress> {
        let name = settings.client_ip_header.trim();
        let header = if name.is_empty() {
            None
        } else {
            Some(
                HeaderName::try_from(name.to_ascii_lowercase()).map_err(|_| {
                    anyhow::anyhow!("rate_limit.client_ip_header {name:?} is not a header name")
                })?,
            )
        };
        Ok(ClientAddress { header })
    }

    /// The client's address: from the trusted header when configured and well-formed (the last
    /// entry of a list, which is the one the proxy itself appended), else the peer address.
    pub fn resolve(&self, headers: &HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let from_header = self.header.as_ref().and_then(|name| {
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            let last = value.rsplit(',').next()?.trim();
            last.parse::<IpAddr>()
                .ok()
                .or_else(|| last.parse::<SocketAddr>().ok().map(|s| s.ip()))
        });
        from_header.or(peer)
    }
}

fn peer(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

impl FromRequestParts<AppState> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Client {
            ip: state.client_address.resolve(&parts.headers, peer(parts)),
        })
    }
}

/// Requests per minute per client address, kept in this process's memory.
pub struct IpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
}

impl IpLimiter {
    pub fn new(per_minute: u32) -> Arc<IpLimiter> {
        let per_minute = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let limiter = Arc::new(IpLimiter {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
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
        self.limiter.check_key(&ip).map_err(|not_until| {
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
        let ip = state.client_address.resolve(&parts.headers, peer(&parts));
        if let Some(ip) = ip
            && let Err(retry_after_secs) = limiter.check(ip)
        {
            tracing::info!(%ip, "per-address request limit reached");
            state.auth.metrics.throttle("address");
            return ApiError::from(crate::error::Error::RateLimited { retry_after_secs })
                .into_response();
        }
        return next.run(Request::from_parts(parts, body)).await;
    }
    next.run(request).await
}

/// A 500 problem for a handler that panicked; the panic message stays in the log.
pub fn problem_for_panic(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "a request handler panicked");
    ApiError::from_status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(header: &str) -> RateLimitSettings {
        let mut s = crate::config::Settings::defaults().rate_limit;
        s.client_ip_header = header.into();
        s
    }

    #[test]
    fn without_a_trusted_header_the_peer_is_the_client() {
        let address = ClientAddress::from_settings(&settings("")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(address.resolve(&headers, Some(peer)), Some(peer));
    }

    #[test]
    fn a_trusted_forwarded_for_header_gives_its_last_entry() {
        let address = ClientAddress::from_settings(&settings("X-Forwarded-For")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "198.51.100.1, 203.0.113.9".parse().unwrap(),
        );
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            address.resolve(&headers, Some(peer)),
            Some("203.0.113.9".parse().unwrap())
        );
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(address.resolve(&headers, Some(peer)), Some(peer));
    }

    #[tokio::test]
    async fn the_limiter_refuses_past_the_allowance_per_address() {
        let limiter = IpLimiter::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a).is_ok());
        assert!(limiter.check(a).is_ok());
        let wait = limiter.check(a).unwrap_err();
        assert!((1..=61).contains(&wait), "{wait}");
        assert!(limiter.check(b).is_ok());
    }
}
