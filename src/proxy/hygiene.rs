//! Request hygiene at the edge, before routing (nginx's defaults as the anchor):
//! a request line plus headers over `http.max_request_header_bytes` is a 431; HTTP/1.1
//! without exactly one valid `Host` is a 400; `TRACE` is a 405 unless allowed; header names
//! with `_` are dropped unless allowed; a client's `Tidegate-Spool-Id` and
//! `Tidegate-Spool-Attempt` are dropped (and with `underscores_in_headers`, their spellings
//! with `_`, and `X_Request_Id`'s); ambiguous framing is a 400 that closes the connection
//! (a `Content_Length` or `Transfer_Encoding` header, which a backend could read as the real
//! one; a `Content-Length` that is not plain digits without leading zeros, or given twice);
//! the path is normalized (RFC 3986 6.2.2: percent-
//! encoded unreserved characters decoded, hex upper-cased, dot-segments removed) so routing
//! and the backend see the same path, and a malformed one is a 400.

use std::borrow::Cow;

use pingora::http::RequestHeader;

use crate::{
    config::spec::HttpSettings,
    services::spool::{ATTEMPT_HEADER, ID_HEADER},
};

/// The spool's headers, parsed once (a lookup by `HeaderName` skips parsing the name).
static SPOOL_ID: http::HeaderName = http::HeaderName::from_static(ID_HEADER);
static SPOOL_ATTEMPT: http::HeaderName = http::HeaderName::from_static(ATTEMPT_HEADER);

/// Why a request is refused before routing: status, error kind, message.
pub(super) type Refusal = (u16, &'static str, String);

/// Check and normalize a request in place. `Err` = answer with that refusal.
pub(super) fn apply(req: &mut RequestHeader, http: &HttpSettings) -> Result<(), Refusal> {
    let size = header_bytes(req);
    if size > http.max_request_header_bytes {
        return Err((
            431,
            "request_header_too_large",
            format!(
                "request line and headers are {size} bytes; the limit is {}",
                http.max_request_header_bytes
            ),
        ));
    }
    if req.method == http::Method::TRACE && !http.allow_trace {
        return Err((405, "method_not_allowed", "TRACE is not allowed".into()));
    }
    check_host(req)?;
    if !http.underscores_in_headers {
        drop_underscored(req);
    }
    // Only tidegate's replayer sets these (the app may deduplicate on the id): a client's own
    // are dropped, so they are neither forwarded nor stored with a spooled request.
    if req.headers.contains_key(&SPOOL_ID) {
        req.remove_header(&SPOOL_ID);
    }
    if req.headers.contains_key(&SPOOL_ATTEMPT) {
        req.remove_header(&SPOOL_ATTEMPT);
    }
    if http.underscores_in_headers {
        // Many apps (CGI, Rack, WSGI) read `X_Request_Id` as `X-Request-Id`: the spellings
        // of tidegate's own headers go too.
        drop_reserved_spellings(req);
    }
    let normalized = match normalize_path(req.uri.path()) {
        Ok(Cow::Borrowed(_)) => None,
        Ok(Cow::Owned(p)) => Some(p),
        Err(why) => return Err((400, "bad_request", format!("invalid path: {why}"))),
    };
    if let Some(path) = normalized {
        let pq = match req.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = req.uri.clone().into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| (400, "bad_request", "invalid path".to_string()))?,
        );
        let uri = http::Uri::from_parts(parts)
            .map_err(|_| (400, "bad_request", "invalid path".to_string()))?;
        req.set_uri(uri);
    }
    Ok(())
}

/// Request line and header bytes as sent (close enough: names, values, separators).
fn header_bytes(req: &RequestHeader) -> usize {
    let target = req.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + req.uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method.as_str().len() + target + 11;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// RFC 9112 3.2: an HTTP/1.1 request has exactly one Host, and it is a valid authority.
fn check_host(req: &RequestHeader) -> Result<(), Refusal> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err((400, "bad_request", "more than one Host header".into()));
    }
    let Some(host) = first else {
        if req.version == http::Version::HTTP_11 && req.uri.authority().is_none() {
            return Err((
                400,
                "bad_request",
                "an HTTP/1.1 request needs a Host header".into(),
            ));
        }
        return Ok(());
    };
    if !valid_authority(host.as_bytes()) {
        return Err((400, "bad_request", "invalid Host header".into()));
    }
    Ok(())
}

/// `host [":" port]`: a reg-name or IPv4 (unreserved, sub-delims, pct-encoded) or an IP
/// literal in brackets; port digits only. Empty is allowed (RFC 9112 3.2).
fn valid_authority(a: &[u8]) -> bool {
    let (host, port) = if a.first() == Some(&b'[') {
        let Some(end) = a.iter().position(|&b| b == b']') else {
            return false;
        };
        let lit = &a[1..end];
        if lit.is_empty()
            || !lit
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&[][..], &a[end + 1..])
    } else {
        match a.iter().rposition(|&b| b == b':') {
            Some(i) => (&a[..i], &a[i..]),
            None => (a, &[][..]),
        }
    };
    let port_ok = port.is_empty()
        || (port[0] == b':' && port.len() <= 6 && port[1..].iter().all(u8::is_ascii_digit));
    let host_ok = host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    port_ok && host_ok
}

/// Headers whose `_` spelling names one tidegate sets or trusts (CGI, Rack and WSGI apps read
/// `X_Forwarded_For` as `X-Forwarded-For`).
const RESERVED: [&str; 8] = [
    ID_HEADER,
    ATTEMPT_HEADER,
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

fn drop_reserved_spellings(req: &mut RequestHeader) {
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_') && RESERVED.iter().any(|r| same_dashed(k.as_str(), r)))
        .cloned()
        .collect();
    for n in names {
        req.remove_header(&n);
    }
}

/// Whether `name` is `dashed` with some `-` written `_` (names are lower case already).
fn same_dashed(name: &str, dashed: &str) -> bool {
    name.len() == dashed.len()
        && name
            .bytes()
            .zip(dashed.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// RFC 9112 6.3 and 11.2 (request smuggling): refuse what a backend could frame otherwise.
/// - `Content_Length` / `Transfer_Encoding`: tidegate does not frame by them, but a backend
///   that reads `_` as `-` would, and the body bytes would become another request there.
/// - `Content-Length` given twice, or not `0` or digits without a leading zero: `0005` is
///   valid by the grammar, but parsers differ (some read octal, some refuse), and no client
///   sends it; nginx and HAProxy refuse duplicates too.
///
/// Checked before anything answers the request (the ACME path, a fleet still loading): an
/// answer that leaves the connection open would read the body as the next request.
pub(super) fn check_framing(req: &RequestHeader) -> Result<(), Refusal> {
    let bad = |m: &str| {
        Err((
            400,
            "bad_request",
            format!("ambiguous request framing: {m}"),
        ))
    };
    for (k, _) in req.headers.iter() {
        let n = k.as_str();
        if n.contains('_')
            && (same_dashed(n, "content-length") || same_dashed(n, "transfer-encoding"))
        {
            return bad(&format!("a header named {n}"));
        }
    }
    let mut lengths = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
    if let Some(v) = lengths.next() {
        if lengths.next().is_some() {
            return bad("more than one Content-Length");
        }
        let b = v.as_bytes();
        let plain = !b.is_empty()
            && b.len() <= 19
            && b.iter().all(u8::is_ascii_digit)
            && (b[0] != b'0' || b.len() == 1);
        if !plain {
            return bad("Content-Length is not a plain decimal number");
        }
    }
    Ok(())
}

fn drop_underscored(req: &mut RequestHeader) {
    // Collected first: names are removed one by one (rare, so the allocation is too).
    let names: Vec<http::HeaderName> = req
        .headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for n in names {
        req.remove_header(&n);
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Normalize a path: `Borrowed` when it already is normal (the common case, no allocation).
pub(super) fn normalize_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let b = path.as_bytes();
    let needs_work = b.contains(&b'%') || b.windows(2).any(|w| w == b"/.");
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let p = remove_dot_segments(&decode_unreserved(b)?);
    if p == path {
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(p))
}

/// Percent-encoding normalization: unreserved characters decoded, other escapes upper-cased.
fn decode_unreserved(b: &[u8]) -> Result<String, &'static str> {
    let mut dec = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            dec.push(b[i]);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err("bad percent-encoding");
        };
        let v = h * 16 + l;
        if unreserved(v) {
            dec.push(v);
        } else {
            dec.push(b'%');
            dec.extend_from_slice(format!("{v:02X}").as_bytes());
        }
        i += 3;
    }
    // Only ASCII went in or came out (decoded bytes are unreserved ASCII).
    String::from_utf8(dec).map_err(|_| "bad percent-encoding")
}

/// RFC 3986 5.2.4 on whole segments; a trailing `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    let last = segs.len().saturating_sub(1);
    let mut trailing = false;
    for (n, seg) in segs.iter().enumerate() {
        match *seg {
            "." => trailing = n == last,
            ".." => {
                out.pop();
                trailing = n == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut p = String::with_capacity(path.len());
    for s in &out {
        p.push('/');
        p.push_str(s);
    }
    if trailing || p.is_empty() {
        p.push('/');
    }
    p
}

/// `cargo fuzz` (see [`crate::fuzzing::request`]).
#[doc(hidden)]
pub fn fuzz_request(data: &[u8], http: &crate::config::spec::HttpSettings) {
    let mut lines = data.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |b| *b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or(b"/"),
    );
    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    let Ok(mut req) = pingora::http::RequestHeader::build(method, target, None) else {
        return;
    };
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(&line[..colon]),
            http::HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        let _ = req.append_header(name, value);
    }
    let _ = check_framing(&req);
    if apply(&mut req, http).is_ok() {
        let path = req.uri.path().to_string();
        let again = normalize_path(&path);
        assert!(
            matches!(again, Ok(std::borrow::Cow::Borrowed(_))),
            "normalizing {path:?} again changed it: {again:?}"
        );
    }
    let _ = super::affinity::fuzz_cookie(&req);
    for v in req.headers.values() {
        let _ = crate::access_log::ids::valid_request_id(v.as_bytes());
        let _ = crate::access_log::ids::trace_id(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_like_rfc_3986() {
        let n = |p: &str| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert!(matches!(normalize_path("/a/b"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/../b/x").unwrap(), "/b/x");
        assert_eq!(n("/%2e%2e/b/x").unwrap(), "/b/x");
        assert_eq!(n("/%2E%2E/b/x").unwrap(), "/b/x");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/.").unwrap(), "/a/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(
            n("/a%2fb").unwrap(),
            "/a%2Fb",
            "an encoded slash stays encoded"
        );
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(n("/a..b/c").unwrap(), "/a..b/c");
        assert!(n("/a%zz").is_err());
        assert!(n("/a%2").is_err());
        assert!(n("/a%").is_err(), "a bare % at the end");
        assert!(n("%").is_err());
    }

    #[test]
    fn hosts() {
        for ok in [
            "a.example",
            "a.example:8080",
            "127.0.0.1:1",
            "[::1]:80",
            "[::1]",
            "",
            "x_y",
        ] {
            assert!(valid_authority(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "b.example evil",
            "a/b",
            "a:b",
            "[::1",
            "a@b",
            "a:123456",
            "a\"b",
        ] {
            assert!(!valid_authority(bad.as_bytes()), "{bad}");
        }
    }
}
