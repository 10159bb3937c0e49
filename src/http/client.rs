//! The client's address: the TCP peer, or the address a trusted proxy put in a header.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

use super::routes::AppState;
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

    /// The address of the client that sent this request.
    pub fn of_request(&self, parts: &Parts) -> Option<IpAddr> {
        self.resolve(&parts.headers, peer(parts))
    }
}

/// The TCP peer the server put in the request (see `server::watch_connection`).
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
            ip: state.client_address.of_request(parts),
            user_agent: parts
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(Client::user_agent),
        })
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
}
