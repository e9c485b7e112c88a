//! How a pool's backends are spoken to: HTTP/1.1, HTTP/2 without TLS (h2c), HTTP/2 over TLS,
//! or TLS with ALPN choosing; TLS verification and client certificates; HTTP/2 reuse. Built
//! and checked with the rest of the config (`build/upstream.rs`); applied to every
//! connection by [`Upstream::apply`], for proxied requests and health checks alike.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use pingora::{protocols::tls::CaType, upstreams::peer::HttpPeer, utils::tls::CertKey};

/// `pools.NAME.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    H2c,
    H2,
    Auto,
}

impl Protocol {
    /// Name as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::H2 => "h2",
            Protocol::Auto => "auto",
        }
    }
}

/// A pool's upstream settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub protocol: Protocol,
    /// TLS to the backends (always there for `h2` and `auto`).
    pub tls: Option<Arc<UpstreamTls>>,
    /// Concurrent streams per HTTP/2 connection.
    pub max_streams: usize,
    /// HTTP/2 connections per backend at most.
    pub max_connections: usize,
    /// Keeps pingora's connection pool apart per pool and TLS settings: two pools listing
    /// one address never share a connection (a drain of one closes only its own), nor
    /// does a connection verified against one CA file serve a pool that trusts another.
    pub group_key: u64,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            protocol: Protocol::Http1,
            tls: None,
            max_streams: 100,
            max_connections: 16,
            group_key: 0,
        }
    }
}

/// TLS to a pool's backends, with its files loaded.
pub struct UpstreamTls {
    /// Server name to send and verify; `None`: the backend address's host name.
    pub sni: Option<String>,
    pub verify: bool,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The CA certificates (`None`: the system roots).
    pub ca: Option<Arc<CaType>>,
    /// The client certificate chain and key.
    pub client: Option<Arc<CertKey>>,
    /// The files' contents, so a reload sees a changed file as a change.
    pub contents: Vec<u8>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.sni,
            self.verify,
            &self.ca_file,
            &self.client_cert,
            &self.client_key,
        ) == (&o.sni, o.verify, &o.ca_file, &o.client_cert, &o.client_key)
            && self.contents == o.contents
    }
}

impl Eq for UpstreamTls {}

impl Upstream {
    /// Why spooled requests cannot be replayed to this pool (`None`: they can). The replay
    /// speaks plain HTTP/1.1.
    pub fn replay_refusal(&self, pool: &str) -> Option<String> {
        let how = match (self.protocol, &self.tls) {
            (Protocol::Http1, None) => return None,
            (Protocol::Http1, Some(_)) => "TLS".to_string(),
            (p, _) => p.as_str().to_string(),
        };
        Some(format!(
            "pool {pool:?} speaks {how}; spooled requests are replayed over plain HTTP/1.1 only"
        ))
    }

    /// Whether connections may be HTTP/2 (shared by several requests): `auto` counts, as
    /// ALPN may choose HTTP/2 (on HTTP/1.1 a deadline end then only waits a little longer).
    pub fn is_h2(&self) -> bool {
        self.protocol != Protocol::Http1
    }

    /// `protocol: auto`: ALPN picks HTTP/2 or HTTP/1.1 per connection.
    pub fn is_auto(&self) -> bool {
        self.protocol == Protocol::Auto
    }

    /// A peer for one backend (`address` as written: its host is the default SNI). An
    /// `upgrade` (WebSocket) always speaks HTTP/1.1.
    pub fn peer(&self, addr: SocketAddr, address: &str, upgrade: bool) -> HttpPeer {
        let Some(tls) = &self.tls else {
            let mut peer = HttpPeer::new(addr, false, String::new());
            peer.group_key = self.group_key;
            if self.protocol == Protocol::H2c && !upgrade {
                // Plain text with HTTP/2 as the lowest version: prior knowledge (h2c).
                peer.options.set_http_version(2, 2);
                peer.options.max_h2_streams = self.max_streams;
            }
            return peer;
        };
        let sni = tls
            .sni
            .clone()
            .unwrap_or_else(|| host_of(address).to_string());
        let mut peer = HttpPeer::new(addr, true, sni);
        peer.group_key = self.group_key;
        peer.options.verify_cert = tls.verify;
        peer.options.verify_hostname = tls.verify;
        peer.options.ca = tls.ca.clone();
        peer.client_cert_key = tls.client.clone();
        match (self.protocol, upgrade) {
            (_, true) | (Protocol::Http1, _) => peer.options.set_http_version(1, 1),
            (Protocol::H2, false) => peer.options.set_http_version(2, 2),
            _ => peer.options.set_http_version(2, 1),
        }
        peer.options.max_h2_streams = self.max_streams;
        peer
    }
}

/// `host` of `host:port`, `[v6]:port` or a bare host.
pub fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_of_strips_the_port_and_brackets() {
        assert_eq!(host_of("api.internal:443"), "api.internal");
        assert_eq!(host_of("127.0.0.1:8443"), "127.0.0.1");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("backend"), "backend");
    }

    #[test]
    fn h2c_is_prior_knowledge_and_websocket_stays_on_http1() {
        let up = Upstream {
            protocol: Protocol::H2c,
            tls: None,
            max_streams: 7,
            group_key: 1,
            ..Default::default()
        };
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let p = up.peer(addr, "127.0.0.1:1", false);
        assert_eq!(p.options.max_h2_streams, 7);
        assert_eq!(format!("{}", p.options.alpn), "H2");
        let ws = up.peer(addr, "127.0.0.1:1", true);
        assert_eq!(format!("{}", ws.options.alpn), "H1");
    }
}
