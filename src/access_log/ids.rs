//! Request ids (`X-Request-Id`) and W3C Trace Context (`traceparent`).

/// Longest client request id kept.
pub const MAX_REQUEST_ID: usize = 128;

/// Whether a client's request id is kept: 1 to 128 of `[A-Za-z0-9._:+/=@-]` (UUIDs, hex,
/// base64, ULIDs; nothing a log or a shell would read differently).
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'_' | b':' | b'+' | b'/' | b'=' | b'@' | b'-')
        })
}

/// A new request id: 128 random bits as 32 lowercase hex digits (nginx's `$request_id`).
pub fn mint_request_id() -> String {
    hex(fastrand::u128(..), 32)
}

/// [`mint_request_id`] into a buffer, without allocating.
pub fn mint_request_id_into(buf: &mut [u8; 32]) {
    let v = fastrand::u128(..);
    for (i, b) in buf.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((v >> (124 - 4 * i)) & 0xf) as usize];
    }
}

/// The trace id of a valid `traceparent` (`VV-TRACEID-PARENTID-FLAGS`, W3C Trace Context
/// level 1: lowercase hex, ids not all zero, version not `ff`; a later version may add
/// fields after a `-`).
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    // ASCII only: every index below is then a character boundary (a hostile value may carry
    // any byte).
    if !traceparent.is_ascii() {
        return None;
    }
    let s = std::str::from_utf8(traceparent).ok()?;
    let b = s.as_bytes();
    if b.len() < 55 || (b.len() > 55 && (b[..2] == *b"00" || b[55] != b'-')) {
        return None;
    }
    let lower_hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let dashes = b[2] == b'-' && b[35] == b'-' && b[52] == b'-';
    let ok = dashes
        && lower_hex(0..2)
        && b[..2] != *b"ff"
        && lower_hex(3..35)
        && lower_hex(36..52)
        && lower_hex(53..55)
        && s[3..35].bytes().any(|c| c != b'0')
        && s[36..52].bytes().any(|c| c != b'0');
    ok.then(|| &s[3..35])
}

/// A new `traceparent` for a trace tidegate starts: random trace and parent ids.
pub fn new_traceparent(sampled: bool) -> String {
    let trace = fastrand::u128(1..);
    let parent = fastrand::u64(1..);
    format!(
        "00-{}-{}-{}",
        hex(trace, 32),
        hex(u128::from(parent), 16),
        if sampled { "01" } else { "00" }
    )
}

fn hex(v: u128, digits: usize) -> String {
    format!("{v:0digits$x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"0b4d2c9e-7f1a-4c3e-9d2b-5a6f7e8d9c0b"));
        assert!(valid_request_id(b"abc+/=="));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\"b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        assert!(valid_request_id(&[b'a'; 128]));
        let id = mint_request_id();
        assert_eq!(id.len(), 32);
        let mut buf = [0u8; 32];
        mint_request_id_into(&mut buf);
        assert!(valid_request_id(&buf));
        assert!(valid_request_id(id.as_bytes()));
        assert_ne!(id, mint_request_id());
    }

    #[test]
    fn traceparents() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        // Upper case, zero ids, version ff, short, extra fields on version 00: invalid.
        assert_eq!(
            trace_id(b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id(b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
        assert_eq!(
            trace_id(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"),
            None
        );
        assert_eq!(
            trace_id(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x"),
            None
        );
        // A later version may carry more after a dash.
        assert_eq!(
            trace_id(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // Hostile bytes: no panic, no id.
        let mut hostile = "aé".as_bytes().to_vec();
        hostile.extend_from_slice(&[b'0'; 53]);
        assert_eq!(trace_id(&hostile), None);
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é".as_bytes()),
            None
        );
        let started = new_traceparent(true);
        assert!(trace_id(started.as_bytes()).is_some(), "{started}");
        assert!(started.ends_with("-01"));
        assert!(new_traceparent(false).ends_with("-00"));
    }
}
