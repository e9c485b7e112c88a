//! Admin request bodies: only what is documented changes state. A body, when present, must
//! be one JSON object with no repeated key; serde would otherwise accept an array for a
//! struct (`["1s","1h"]` as a drain body, `[]` as maintenance) and keep the last of two
//! equal keys. Checked once, before any handler runs.
//!
//! Content type: `application/json`. Anything else is a 415: a form's
//! `application/x-www-form-urlencoded` (what `curl -d` sends unless told otherwise) is what a
//! hostile web page can send, so it is never read as JSON.

use std::{collections::HashSet, fmt};

use axum::{
    body::{Body, Bytes},
    http::Request,
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, Limited};
use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::{ApiError, MAX_BODY};

/// Middleware: read the body (at most 64 KiB), check it, hand it on.
pub async fn check_layer(req: Request<Body>, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return ApiError::new(413, "body_too_large", "request body over 64 KiB").into_response()
        }
    };
    // `PUT …/backends` takes the member list itself (an array) as well as `{backends: […]}`.
    let array_ok = parts.uri.path().ends_with("/backends");
    if let Err(e) = check_body(
        parts.headers.get(http::header::CONTENT_TYPE),
        &bytes,
        array_ok,
    ) {
        return e.into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A checked body as `T` (empty = `T::default()`); unknown or ill-typed fields are a 400
/// naming the body.
pub fn parse<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = e.to_string();
        let msg = match msg.find(" at line ") {
            Some(i) => &msg[..i],
            None => &msg,
        };
        ApiError::field("body", &format!("invalid JSON body: {msg}"))
    })
}

/// Check the `Content-Type` and the body of an admin API request.
#[cfg(test)]
fn check(content_type: Option<&http::HeaderValue>, body: &[u8]) -> Result<(), ApiError> {
    check_body(content_type, body, false)
}

/// [`check`], optionally allowing a top-level array of objects.
pub fn check_body(
    content_type: Option<&http::HeaderValue>,
    body: &[u8],
    array_ok: bool,
) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    if !super::guard::is_json(content_type) {
        let mime = content_type.and_then(|c| c.to_str().ok()).unwrap_or("none");
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            format!("the body must be JSON (Content-Type: application/json), not {mime:?}"),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = Node {
        path: String::new(),
        top: true,
        array_ok,
    };
    top.deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| {
            let msg = e.to_string();
            let msg = match msg.find(" at line ") {
                Some(i) => &msg[..i],
                None => &msg,
            };
            ApiError::field("body", &format!("invalid JSON body: {msg}"))
        })
}

/// One JSON value at `path`; the top one must be an object (or, where allowed, an array).
struct Node {
    path: String,
    top: bool,
    array_ok: bool,
}

impl<'de> DeserializeSeed<'de> for Node {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Node {
    fn scalar<E: de::Error>(&self, what: &str) -> Result<(), E> {
        if self.top {
            return Err(E::custom(format!(
                "expected a JSON object ({{...}}), found {what}"
            )));
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Node {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar("a boolean")
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar("a number")
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar("a number")
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar("a number")
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar("a string")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar("null")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        if self.top && !self.array_ok {
            return Err(de::Error::custom(
                "expected a JSON object ({...}), found an array",
            ));
        }
        let mut i = 0;
        while a
            .next_element_seed(Node {
                path: format!("{}[{i}]", self.path),
                top: false,
                array_ok: false,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = a.next_key::<String>()? {
            let path = if self.path.is_empty() {
                k.clone()
            } else {
                format!("{}.{k}", self.path)
            };
            if !seen.insert(k) {
                return Err(de::Error::custom(format!("duplicate key {path:?}")));
            }
            a.next_value_seed(Node {
                path,
                top: false,
                array_ok: false,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> bool {
        let json = http::HeaderValue::from_static("application/json");
        check(Some(&json), body.as_bytes()).is_ok()
    }

    #[test]
    fn only_one_object_without_repeated_keys() {
        assert!(ok(""));
        assert!(ok("  \n"));
        assert!(ok("{}"));
        assert!(ok(r#"{"split":{"blue":0,"green":100},"over":"1m"}"#));
        for bad in [
            "[]",
            r#"["1s","1h","10s"]"#,
            r#"[{"green":100}]"#,
            "null",
            "1",
            r#""x""#,
            r#"{"a":1,"a":2}"#,
            r#"{"split":{"blue":1,"blue":2}}"#,
            "{} {}",
            "{",
        ] {
            assert!(!ok(bad), "{bad} accepted");
        }
    }

    #[test]
    fn content_types() {
        let ct = |s: &'static str| Some(http::HeaderValue::from_static(s));
        assert!(check(ct("application/json; charset=utf-8").as_ref(), b"{}").is_ok());
        assert!(check(ct("application/merge-patch+json").as_ref(), b"{}").is_err());
        let e = check(ct("application/x-www-form-urlencoded").as_ref(), b"{}").unwrap_err();
        assert_eq!(e.status, 415);
        assert_eq!(check(None, b"{}").unwrap_err().status, 415);
        let e = check(ct("text/plain").as_ref(), b"{}").unwrap_err();
        assert_eq!(e.status, 415);
        let e = check(ct("multipart/form-data; boundary=x").as_ref(), b"{}").unwrap_err();
        assert_eq!(e.status, 415);
    }
}
