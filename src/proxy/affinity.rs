//! The request's side of the pick: its affinity key (a cookie tidegate sets, a header, the
//! client's address), the pool it asks to be forced to, and the cookie to set when it came
//! without one. The choice itself is `routing::pick`.

use std::net::IpAddr;

use http::{header, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use subtle::ConstantTimeEq;

use crate::{
    config::spec::{AffinityKey, ForceFrom, Secret},
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
        want.forced = asked
            .filter(|_| may_force(&f.clients, client))
            .and_then(|v| pool_named(v, f.secret.as_ref()))
            .and_then(|name| route.forced_index(name));
        want.forced_only = f.refuse;
    }
    (want, new)
}

/// A `force_pool` with a secret: its header (or cookie) is not passed on to backends (nor
/// stored with a spooled request), so the secret stays between the client and tidegate.
pub(super) fn strip_forcing(route: &Route, up: &mut RequestHeader) {
    let Some(f) = route
        .spec
        .force_pool
        .as_ref()
        .filter(|f| f.secret.is_some())
    else {
        return;
    };
    match &f.from {
        ForceFrom::Header(h) => {
            up.remove_header(h);
        }
        ForceFrom::Cookie(name) if cookie(up, name).is_some() => {
            let kept: Vec<String> = up
                .headers
                .get_all(header::COOKIE)
                .iter()
                .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
                .map(|p| String::from_utf8_lossy(p.trim_ascii()).into_owned())
                .filter(|p| {
                    let n = p.split('=').next().unwrap_or_default().trim();
                    !p.is_empty() && n != name
                })
                .collect();
            up.remove_header(&header::COOKIE);
            if !kept.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                    let _ = up.insert_header(header::COOKIE, v);
                }
            }
        }
        ForceFrom::Cookie(_) => {}
    }
}

/// Whether `client` is one of `clients` (none listed: anyone).
fn may_force(clients: &[ipnet::IpNet], client: Option<IpAddr>) -> bool {
    clients.is_empty()
        || client.is_some_and(|ip| {
            let ip = ip.to_canonical();
            clients.iter().any(|n| n.contains(&ip))
        })
}

/// The pool a forcing value names: all of it, or with a secret the part before the last
/// `:` when what follows is the secret (compared in constant time).
fn pool_named<'a>(value: &'a [u8], secret: Option<&Secret>) -> Option<&'a [u8]> {
    let Some(secret) = secret else {
        return Some(value);
    };
    let colon = value.iter().rposition(|b| *b == b':')?;
    let (pool, given) = (&value[..colon], &value[colon + 1..]);
    bool::from(given.ct_eq(secret.0.as_bytes())).then_some(pool)
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

    #[test]
    fn a_secret_and_a_client_list_guard_forcing() {
        let secret = Secret("s3cret".into());
        assert_eq!(pool_named(b"green", None), Some(&b"green"[..]));
        assert_eq!(
            pool_named(b"green:s3cret", Some(&secret)),
            Some(&b"green"[..])
        );
        assert_eq!(pool_named(b"green", Some(&secret)), None);
        assert_eq!(pool_named(b"green:wrong", Some(&secret)), None);
        assert_eq!(pool_named(b"green:s3cret:", Some(&secret)), None);
        let nets = ["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(may_force(&[], None));
        assert!(may_force(&nets, Some("10.1.2.3".parse().unwrap())));
        assert!(may_force(&nets, Some("::ffff:10.1.2.3".parse().unwrap())));
        assert!(may_force(&nets, Some("::1".parse().unwrap())));
        assert!(!may_force(&nets, Some("127.0.0.1".parse().unwrap())));
        assert!(!may_force(&nets, None));
    }
}
