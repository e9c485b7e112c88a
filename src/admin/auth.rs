//! Bearer-token check for `/api/v1/*`: constant-time compare; the token is never logged.

use crate::config::runtime::Secret;

/// Whether the request's `Authorization` header carries `expected` (or no token is set).
pub fn authorized(expected: Option<&Secret>, header: Option<&http::HeaderValue>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = header.and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let Some(given) = strip_bearer(given) else {
        return false;
    };
    constant_time_eq(given.as_bytes(), expected.0.as_bytes())
}

fn strip_bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Compare without an early exit on the first differing byte; the length of the expected
/// token is the only thing a timing observer can learn.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> http::HeaderValue {
        http::HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn checks_scheme_and_token() {
        let t = Secret("s3cret".into());
        assert!(authorized(Some(&t), Some(&hv("Bearer s3cret"))));
        assert!(authorized(Some(&t), Some(&hv("bearer  s3cret "))));
        assert!(!authorized(Some(&t), Some(&hv("Bearer s3cre"))));
        assert!(!authorized(Some(&t), Some(&hv("Bearer s3cret1"))));
        assert!(!authorized(Some(&t), Some(&hv("Basic s3cret"))));
        assert!(!authorized(Some(&t), None));
        assert!(authorized(None, None));
    }
}
