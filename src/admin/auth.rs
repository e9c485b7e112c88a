//! Bearer-token check for `/api/v1/*` (and `/metrics` with `metrics_auth`): constant-time
//! compare with `subtle`; the token is never logged.

use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::config::spec::Secret;

/// Whether the request's `Authorization` header carries `expected` (or no token is set).
pub fn authorized(expected: Option<&Secret>, header: Option<&http::HeaderValue>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let Some(given) = header.and_then(|h| h.to_str().ok()).and_then(strip_bearer) else {
        return false;
    };
    // Only the expected token's length can be learned from timing.
    bool::from(given.as_bytes().ct_eq(expected.0.as_bytes()))
}

fn strip_bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// 401 with `WWW-Authenticate: Bearer`.
pub fn unauthorized() -> Response {
    let mut r = ApiError::new(401, "unauthorized", "missing or wrong bearer token").into_response();
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"tidegate\""),
    );
    r
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
