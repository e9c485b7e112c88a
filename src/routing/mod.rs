//! Request routing: match a request's host, path and method to a route (pure, benchmarked).
//!
//! Semantics follow nginx `server_name` + `location` and Envoy virtual hosts: first the most
//! specific host pattern that has routes wins (exact name, then the longest `*.suffix`
//! wildcard, then `*`), then the longest `path_prefix` inside it (plain string prefix, like
//! nginx prefix locations and Envoy `prefix`). Routes with `methods` are skipped for other
//! methods. There is no fallback from a more specific host to a less specific one.

pub mod affinity;
pub mod pick;
pub mod schedule;

use std::collections::HashMap;

pub use schedule::Schedule;

/// A host pattern from `match.host`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// `*`: every host.
    Any,
    /// `*.example.com`: subdomains of example.com (not example.com itself). Stored as `.example.com`.
    Suffix(String),
    /// `api.example.com`.
    Exact(String),
}

impl HostPattern {
    /// Parse a pattern; hosts are case-insensitive and stored lowercase.
    pub fn parse(s: &str) -> Result<Self, String> {
        let raw = s.trim().to_ascii_lowercase();
        if raw == "*" {
            return Ok(Self::Any);
        }
        // One trailing dot (a fully qualified name) is the same host.
        let s = raw.strip_suffix('.').unwrap_or(&raw).to_string();
        let (body, suffix) = match s.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (s.as_str(), false),
        };
        let valid = !body.is_empty()
            && body.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!(
                "invalid host pattern {s:?}: use \"*\", \"*.example.com\" or \"www.example.com\""
            ));
        }
        Ok(if suffix {
            Self::Suffix(format!(".{body}"))
        } else {
            Self::Exact(body.to_string())
        })
    }
}

/// What one route matches on, by route index.
#[derive(Clone, Debug)]
pub struct RouteMatch {
    pub hosts: Vec<HostPattern>,
    pub path_prefix: String,
    /// Upper-case method names; `None` = any method.
    pub methods: Option<Vec<http::Method>>,
}

#[derive(Debug, Default)]
struct Group {
    /// (path_prefix, methods, route index), longest prefix first, config order among equals.
    routes: Vec<(String, Option<Vec<http::Method>>, usize)>,
}

impl Group {
    fn push(&mut self, m: &RouteMatch, idx: usize) {
        self.routes
            .push((m.path_prefix.clone(), m.methods.clone(), idx));
    }
    fn finish(&mut self) {
        // Stable sort keeps config order for equal prefix lengths.
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    }
    fn find(&self, path: &str, method: &http::Method) -> Option<usize> {
        self.routes.iter().find_map(|(prefix, methods, idx)| {
            let method_ok = methods.as_ref().is_none_or(|ms| ms.contains(method));
            (method_ok && path.starts_with(prefix.as_str())).then_some(*idx)
        })
    }
}

/// Immutable routing table built once per config.
#[derive(Debug, Default)]
pub struct Router {
    exact: HashMap<String, Group>,
    /// Longest suffix first.
    suffix: Vec<(String, Group)>,
    any: Option<Group>,
}

impl Router {
    /// Build from route matches, indexed by position.
    pub fn new(matches: &[RouteMatch]) -> Self {
        let mut r = Router::default();
        let mut suffix: HashMap<String, Group> = HashMap::new();
        for (idx, m) in matches.iter().enumerate() {
            for h in &m.hosts {
                match h {
                    HostPattern::Any => r.any.get_or_insert_with(Group::default).push(m, idx),
                    HostPattern::Exact(n) => r.exact.entry(n.clone()).or_default().push(m, idx),
                    HostPattern::Suffix(s) => suffix.entry(s.clone()).or_default().push(m, idx),
                }
            }
        }
        r.exact.values_mut().for_each(Group::finish);
        r.suffix = suffix.into_iter().collect();
        r.suffix.iter_mut().for_each(|(_, g)| g.finish());
        r.suffix
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        if let Some(g) = r.any.as_mut() {
            g.finish()
        }
        r
    }

    /// The route index for a request, or `None` (404). `host` may carry a port and any case.
    pub fn find(&self, host: &str, path: &str, method: &http::Method) -> Option<usize> {
        let host = normalize_host(host);
        let host = host.as_ref();
        if let Some(g) = self.exact.get(host) {
            return g.find(path, method);
        }
        for (suffix, g) in &self.suffix {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                return g.find(path, method);
            }
        }
        self.any.as_ref().and_then(|g| g.find(path, method))
    }
}

/// Strip the port and a trailing dot; lowercase only when needed (no allocation in the
/// common case of an already lowercase Host header).
pub fn normalize_host(host: &str) -> std::borrow::Cow<'_, str> {
    let no_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port → [v6]
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        match host.rfind(':') {
            Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
            _ => host,
        }
    };
    let h = no_port.trim_end_matches('.');
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(h.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn m(hosts: &[&str], prefix: &str, methods: Option<&[&str]>) -> RouteMatch {
        RouteMatch {
            hosts: hosts
                .iter()
                .map(|h| HostPattern::parse(h).unwrap())
                .collect(),
            path_prefix: prefix.into(),
            methods: methods.map(|ms| ms.iter().map(|s| s.parse().unwrap()).collect()),
        }
    }

    #[test]
    fn exact_beats_wildcard_beats_any_and_longest_prefix_wins() {
        let r = Router::new(&[
            m(&["*"], "/", None),
            m(&["*.example.com"], "/", None),
            m(&["api.example.com"], "/", None),
            m(&["api.example.com"], "/v2", None),
            m(&["*.eu.example.com"], "/", None),
        ]);
        let g = Method::GET;
        assert_eq!(r.find("api.example.com", "/v2/x", &g), Some(3));
        assert_eq!(r.find("API.Example.com:8080", "/v1", &g), Some(2));
        assert_eq!(r.find("www.example.com", "/", &g), Some(1));
        assert_eq!(r.find("a.eu.example.com", "/", &g), Some(4));
        assert_eq!(
            r.find("example.com", "/", &g),
            Some(0),
            "*.x does not match x itself"
        );
        assert_eq!(r.find("other.org", "/anything", &g), Some(0));
    }

    #[test]
    fn no_fallback_from_specific_host_and_methods_filter() {
        let r = Router::new(&[
            m(&["*"], "/", None),
            m(&["shop.test"], "/api", Some(&["POST"])),
            m(&["shop.test"], "/api", None),
        ]);
        assert_eq!(r.find("shop.test", "/api/x", &Method::POST), Some(1));
        assert_eq!(r.find("shop.test", "/api/x", &Method::GET), Some(2));
        assert_eq!(
            r.find("shop.test", "/", &Method::GET),
            None,
            "nginx-like: no fallback"
        );
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("a.b:80"), "a.b");
        assert_eq!(normalize_host("A.B."), "a.b");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("localhost"), "localhost");
    }

    #[test]
    fn host_patterns_validate() {
        assert_eq!(HostPattern::parse("*").unwrap(), HostPattern::Any);
        assert_eq!(
            HostPattern::parse("*.Example.com").unwrap(),
            HostPattern::Suffix(".example.com".into())
        );
        for bad in ["", "a..b", "*.", "a*.b", "http://x", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
