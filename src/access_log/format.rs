//! Rendering a [`Record`] as one line: JSON (every key, `null` when absent), logfmt (absent
//! keys left out), or nginx `combined`. The field list is written once ([`fields`]); JSON
//! and logfmt both walk it.

use std::{io::Write, time::Duration};

use super::record::{Record, KEYS};
use crate::config::spec::LogFormat;

/// One value of a line.
enum Val<'a> {
    Str(Option<&'a str>),
    Num(Option<u64>),
    Ms(Option<Duration>),
}

/// Longest text written for one field: a request head may be 1 MiB, a line stays small.
pub const MAX_FIELD: usize = 2048;

/// `s` cut to [`MAX_FIELD`] bytes at a character boundary.
fn cut(s: &str) -> &str {
    if s.len() <= MAX_FIELD {
        return s;
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn fields<'a>(r: &'a Record<'a>, time: &'a str, client: &'a str) -> [Val<'a>; KEYS.len()] {
    fields_uncut(r, time, client).map(|v| match v {
        Val::Str(Some(s)) => Val::Str(Some(cut(s))),
        other => other,
    })
}

fn fields_uncut<'a>(r: &'a Record<'a>, time: &'a str, client: &'a str) -> [Val<'a>; KEYS.len()] {
    use Val::*;
    [
        Str(Some(time)),
        Str(r.request_id),
        Str(r.trace_id),
        Str((!client.is_empty()).then_some(client)),
        Str(Some(r.method)),
        Str(r.host),
        Str(Some(r.path)),
        Str(r.query),
        Str(Some(r.protocol)),
        Num(Some(u64::from(r.status))),
        Num(Some(r.bytes_in)),
        Num(Some(r.bytes_out)),
        Ms(Some(r.duration)),
        Ms(r.connect),
        Ms(r.first_byte),
        Ms(Some(r.held)),
        Str(r.route),
        Str(r.pool),
        Str(r.backend),
        Str(r.pick),
        Str(Some(r.kind)),
        Num(Some(u64::from(r.attempts))),
        Str(Some(r.outcome.as_str())),
        Num(r.spool_id.and_then(|i| u64::try_from(i).ok())),
        Str(r.error),
        Str(r.user_agent),
    ]
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Append `r` as one line (with its newline) to `out`.
pub fn format(fmt: LogFormat, r: &Record<'_>, out: &mut Vec<u8>) {
    let mut tbuf = [0u8; 24];
    let time = rfc3339_millis(r.time, &mut tbuf);
    let mut cbuf = [0u8; 48];
    let client = r.client.map_or("", |ip| ip_text(ip, &mut cbuf));
    match fmt {
        LogFormat::Json => json(r, time, client, out),
        LogFormat::Logfmt => logfmt(r, time, client, out),
        LogFormat::Combined => combined(r, time, client, out),
    }
    out.push(b'\n');
}

thread_local! {
    /// The last second formatted on this thread and its text (`2026-12-02T04:16:45`):
    /// most lines share their second with the one before.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// `2026-12-02T04:16:45.123Z` in `buf`.
fn rfc3339_millis(t: std::time::SystemTime, buf: &mut [u8; 24]) -> &str {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, text) = SECOND.get();
    let text = if cached == secs {
        text
    } else {
        let mut text = [0u8; 19];
        let full = humantime::format_rfc3339_seconds(t).to_string();
        text.copy_from_slice(&full.as_bytes()[..19]);
        SECOND.set((secs, text));
        text
    };
    buf[..19].copy_from_slice(&text);
    let ms = since.subsec_millis();
    buf[19] = b'.';
    buf[20] = b'0' + (ms / 100) as u8;
    buf[21] = b'0' + (ms / 10 % 10) as u8;
    buf[22] = b'0' + (ms % 10) as u8;
    buf[23] = b'Z';
    // ASCII digits and separators only.
    std::str::from_utf8(buf).unwrap_or("")
}

/// An IP address as text in `buf` (IPv4 without the formatting machinery).
fn ip_text(ip: std::net::IpAddr, buf: &mut [u8; 48]) -> &str {
    let n = match ip {
        std::net::IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if o >= 100 {
                    buf[n] = b'0' + o / 100;
                    n += 1;
                }
                if o >= 10 {
                    buf[n] = b'0' + o / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + o % 10;
                n += 1;
            }
            n
        }
        std::net::IpAddr::V6(v6) => {
            let mut w = &mut buf[..];
            let _ = write!(w, "{v6}");
            48 - w.len()
        }
    };
    std::str::from_utf8(&buf[..n]).unwrap_or("")
}

/// A JSON string: copied as is when nothing in it needs escaping (the common case), else
/// escaped by serde_json.
fn json_str(s: &str, out: &mut Vec<u8>) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn json(r: &Record<'_>, time: &str, client: &str, out: &mut Vec<u8>) {
    out.push(b'{');
    for (i, (key, v)) in KEYS.iter().zip(fields(r, time, client)).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        // Writing to a Vec cannot fail.
        let _ = match v {
            Val::Str(Some(s)) => {
                json_str(s, out);
                Ok(())
            }
            Val::Num(Some(n)) => serde_json::to_writer(&mut *out, &n),
            Val::Ms(Some(d)) => serde_json::to_writer(&mut *out, &ms(d)),
            Val::Str(None) | Val::Num(None) | Val::Ms(None) => {
                out.extend_from_slice(b"null");
                Ok(())
            }
        };
    }
    json_headers("request_headers", &r.request_headers, out);
    json_headers("response_headers", &r.response_headers, out);
    out.push(b'}');
}

fn json_headers(key: &str, hs: &[(&str, &str)], out: &mut Vec<u8>) {
    if hs.is_empty() {
        return;
    }
    let _ = write!(out, ",\"{key}\":{{");
    for (i, (n, v)) in hs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(n, out);
        out.push(b':');
        json_str(v, out);
    }
    out.push(b'}');
}

fn logfmt(r: &Record<'_>, time: &str, client: &str, out: &mut Vec<u8>) {
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b' ');
        }
        first = false;
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        logfmt_value(value, out);
    };
    for (key, v) in KEYS.iter().zip(fields(r, time, client)) {
        match v {
            Val::Str(Some(s)) => put(out, key, s),
            Val::Num(Some(n)) => put(out, key, &n.to_string()),
            Val::Ms(Some(d)) => put(out, key, &ms(d).to_string()),
            _ => {}
        }
    }
    for (prefix, hs) in [("req_", &r.request_headers), ("resp_", &r.response_headers)] {
        for (n, v) in hs.iter() {
            put(out, &format!("{prefix}{}", n.replace('-', "_")), v);
        }
    }
}

/// A logfmt value: bare when it has no space, quote, `=` or control character; else quoted
/// with `\"`, `\\` and control characters escaped.
fn logfmt_value(v: &str, out: &mut Vec<u8>) {
    let plain = !v.is_empty()
        && v.bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f);
    if plain {
        out.extend_from_slice(v.as_bytes());
        return;
    }
    out.push(b'"');
    for c in v.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer"
/// "$http_user_agent"`, with `"`, `\` and control bytes written `\xHH` like nginx.
fn combined(r: &Record<'_>, time: &str, client: &str, out: &mut Vec<u8>) {
    // time is RFC 3339 UTC: 2026-12-02T04:16:45.123Z
    let month = time
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .unwrap_or(&"Jan");
    let (y, d, hms) = (
        time.get(0..4).unwrap_or("0000"),
        time.get(8..10).unwrap_or("01"),
        time.get(11..19).unwrap_or("00:00:00"),
    );
    let client = if client.is_empty() { "-" } else { client };
    let _ = write!(out, "{client} - - [{d}/{month}/{y}:{hms} +0000] \"");
    escaped(cut(r.method), out);
    out.push(b' ');
    escaped(cut(r.path), out);
    if let Some(q) = r.query {
        out.push(b'?');
        escaped(cut(q), out);
    }
    out.push(b' ');
    out.extend_from_slice(r.protocol.as_bytes());
    let _ = write!(out, "\" {} {} \"", r.status, r.bytes_out);
    escaped(cut(r.referer.unwrap_or("-")), out);
    out.extend_from_slice(b"\" \"");
    escaped(cut(r.user_agent.unwrap_or("-")), out);
    out.push(b'"');
}

fn escaped(v: &str, out: &mut Vec<u8>) {
    for &b in v.as_bytes() {
        if b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f {
            let _ = write!(out, "\\x{b:02X}");
        } else {
            out.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::Outcome;
    use super::*;

    fn record() -> Record<'static> {
        Record {
            time: std::time::UNIX_EPOCH + Duration::from_millis(1_764_649_005_123),
            request_id: Some("abc"),
            trace_id: None,
            client: Some("10.0.0.7".parse().unwrap()),
            method: "GET",
            host: Some("app.example"),
            path: "/a \"b\"",
            query: None,
            protocol: "HTTP/1.1",
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            duration: Duration::from_micros(1500),
            connect: None,
            first_byte: Some(Duration::from_millis(1)),
            held: Duration::ZERO,
            route: Some("web"),
            pool: Some("blue"),
            backend: Some("b1"),
            kind: "http",
            attempts: 1,
            outcome: Outcome::Proxied,
            spool_id: None,
            pick: None,
            error: None,
            referer: None,
            user_agent: Some("curl/8"),
            request_headers: vec![("x-tenant", "t1")],
            response_headers: vec![],
        }
    }

    #[test]
    fn json_has_every_key() {
        let mut out = Vec::new();
        format(LogFormat::Json, &record(), &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for k in KEYS {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(v["time"], "2025-12-02T04:16:45.123Z");
        assert_eq!(v["path"], "/a \"b\"");
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["connect_ms"].is_null());
        assert_eq!(v["request_headers"]["x-tenant"], "t1");
        assert!(v.get("response_headers").is_none());
    }

    #[test]
    fn ips_times_and_escapes() {
        let mut b = [0u8; 48];
        for ip in [
            "0.0.0.0",
            "10.0.0.7",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            assert_eq!(ip_text(ip.parse().unwrap(), &mut b), ip);
        }
        let mut t = [0u8; 24];
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_649_005_007);
        assert_eq!(rfc3339_millis(at, &mut t), "2025-12-02T04:16:45.007Z");
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_764_649_006_999);
        assert_eq!(rfc3339_millis(at, &mut t), "2025-12-02T04:16:46.999Z");
        for s in ["plain", "quo\"te", "back\\slash", "ctl\u{1}", "é ✓", "\n"] {
            let mut out = Vec::new();
            json_str(s, &mut out);
            assert_eq!(serde_json::from_slice::<String>(&out).unwrap(), s);
        }
    }

    #[test]
    fn long_fields_are_cut() {
        let long = "é".repeat(5000);
        let mut r = record();
        r.path = &long;
        r.user_agent = Some(&long);
        for f in [LogFormat::Json, LogFormat::Logfmt, LogFormat::Combined] {
            let mut out = Vec::new();
            format(f, &r, &mut out);
            assert!(out.len() < 3 * MAX_FIELD, "{f:?}: {} bytes", out.len());
            assert!(std::str::from_utf8(&out).is_ok());
        }
    }

    #[test]
    fn logfmt_quotes_what_needs_it() {
        let mut out = Vec::new();
        format(LogFormat::Logfmt, &record(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.starts_with("time=2025-12-02T04:16:45.123Z request_id=abc client=10.0.0.7 "),
            "{s}"
        );
        assert!(s.contains(r#"path="/a \"b\"""#), "{s}");
        assert!(s.contains(" req_x_tenant=t1"), "{s}");
        assert!(!s.contains("trace_id="), "{s}");
    }

    #[test]
    fn combined_is_nginx_combined() {
        let mut out = Vec::new();
        format(LogFormat::Combined, &record(), &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "10.0.0.7 - - [02/Dec/2025:04:16:45 +0000] \"GET /a \\x22b\\x22 HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n"
        );
    }
}
