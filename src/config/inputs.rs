//! What config validation reads from the world, injected: `tidegate check`, startup,
//! reload and tests share one path, and a test can hand validation its own files, names
//! and clock.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    path::Path,
};

/// What validation reads from the world, injected, so `tidegate check`, startup, reload
/// and tests share one path: environment variables, files (certificates, CA files, token
/// files), name look-ups, and the clock (certificate expiry warnings).
pub struct Inputs<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub read: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    pub lookup: &'a dyn Fn(&str) -> Option<SocketAddr>,
    /// Seconds since the Unix epoch.
    pub now: i64,
}

fn system_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn system_read(p: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(p)
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Inputs<'static> {
    /// The real environment, file system, resolver and clock.
    pub fn system() -> Self {
        Inputs {
            env: &system_env,
            read: &system_read,
            lookup: &lookup,
            now: unix_now(),
        }
    }
}

impl<'a> Inputs<'a> {
    /// The system's, with environment variables from `env`.
    pub fn with_env(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Inputs {
            env,
            ..Inputs::system()
        }
    }
}

/// Resolve `HOST:PORT` (IPv4 preferred). Blocking.
pub fn lookup(value: &str) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = value.to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}
