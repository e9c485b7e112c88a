//! The request's side of the pick: its affinity key (a cookie tidegate sets, a header, the
//! client's address), the pool it asks to be forced to, and the cookie to set when it came
//! without one. The choice itself is `routing::pick`.

use std::net::IpAddr;

use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};

use crate::{
    config::spec::{AffinityKey, ForceFrom},
    routing::{affinity::Key, pick::Want},
    state::table::Route,
};

/// What the request asks of the pick on `route`. `minted`: the cookie value this request
/// was given already (a reroute keeps it); a request that needs one and has none gets a
/// new value in the second field, to be set on its response.
pub(super) fn want(
    route: &Route,
    req: &RequestHeader,
    client: Option<IpAddr>,
    minted: Option<&str>,
) -> (Want, Option<Box<str>>) {
    let spec = &route.spec;
    let mut want = Want::default();
    let mut new = None;
    if let Some(a) = &spec.affinity {
        want.sticky = a.sticky_backends;
        want.key = match &a.key {
            AffinityKey::Cookie { name, .. } => {
                let sent = cookie(req, name).filter(|v| valid_key(v));
                Some(Key::of(match (sent, minted) {
                    (Some(v), _) => v,
                    (None, Some(m)) => m.as_bytes(),
                    (None, None) => new.insert(mint()).as_bytes(),
                }))
            }
            AffinityKey::Header(h) => req
                .headers
                .get(h)
                .map(|v| v.as_bytes().trim_ascii())
                .filter(|v| !v.is_empty())
                .map(Key::of),
            AffinityKey::ClientIp => client.map(|ip| match ip.to_canonical() {
                IpAddr::V4(v4) => Key::of(&v4.octets()),
                IpAddr::V6(v6) => Key::of(&v6.octets()),
            }),
        };
    }
    if let Some(f) = &spec.force_pool {
        let asked = match &f.from {
            ForceFrom::Header(h) => req.headers.get(h).map(|v| v.as_bytes().trim_ascii()),
            ForceFrom::Cookie(c) => cookie(req, c),
        };
        want.forced = asked.and_then(|name| route.forced_index(name));
        want.forced_only = f.refuse;
    }
    (want, new)
}

/// A key tidegate accepts from a cookie: 1–64 of `[A-Za-z0-9_-]` (what it mints, and what a
/// client may set itself to choose a stable key). Anything else is replaced.
fn valid_key(v: &[u8]) -> bool {
    (1..=64).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// A new key: 128 random bits in hex. Not a secret (it only keeps a pool).
fn mint() -> Box<str> {
    format!("{:032x}", fastrand::u128(..)).into()
}

/// The value of cookie `name` (the first one, over every `Cookie` header).
/// `cargo fuzz`: the affinity cookie as read from any request.
pub(super) fn fuzz_cookie(req: &RequestHeader) -> Option<Vec<u8>> {
    cookie(req, "tidegate_affinity").map(<[u8]>::to_vec)
}

fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    req.headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
            let v = v
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(v);
            (n == name.as_bytes()).then_some(v)
        })
}

/// Set the affinity cookie a request was given on its response: `HttpOnly`,
/// `SameSite=Lax`, `Secure` on a TLS listener, `Max-Age` as configured.
pub(super) fn set_cookie(route: &Route, value: &str, tls: bool, resp: &mut ResponseHeader) {
    let Some(AffinityKey::Cookie { name, max_age }) = route.spec.affinity.as_ref().map(|a| &a.key)
    else {
        return;
    };
    let secure = if tls { "; Secure" } else { "" };
    let line = format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        max_age.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&line) {
        let _ = resp.append_header(header::SET_COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cookies: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for c in cookies {
            r.append_header("cookie", *c).unwrap();
        }
        r
    }

    #[test]
    fn cookies_are_found_over_every_header_and_quoted_values() {
        let r = req(&["a=1; tidegate_affinity=abc", "b=\"q\""]);
        assert_eq!(cookie(&r, "tidegate_affinity"), Some(&b"abc"[..]));
        assert_eq!(cookie(&r, "b"), Some(&b"q"[..]));
        assert_eq!(cookie(&r, "tidegate"), None);
        assert_eq!(cookie(&req(&["x"]), "x"), None);
    }

    #[test]
    fn keys_are_short_and_plain() {
        assert!(valid_key(b"0123abcdefABCDEF_-"));
        assert!(valid_key(mint().as_bytes()));
        assert!(!valid_key(b""));
        assert!(!valid_key(&[b'a'; 65]));
        assert!(!valid_key(b"a b"));
        assert!(!valid_key("é".as_bytes()));
    }
}
