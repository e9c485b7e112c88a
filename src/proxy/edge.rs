//! What a listener does before routing: a plain listener may answer everything with a 308
//! to HTTPS (ACME HTTP-01 challenges exempt, as they must be answered over plain HTTP), and
//! a TLS listener may add `Strict-Transport-Security` to what it proxies.

use http::HeaderValue;
use pingora::{http::ResponseHeader, prelude::*, proxy::Session};

use crate::config::spec::Listener;

/// Where ACME HTTP-01 challenges are asked (RFC 8555 8.3).
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// One listener's edge behaviour (fixed at start: listeners do not reload).
#[derive(Clone, Debug, Default)]
pub struct Edge {
    /// `Some(port)`: redirect to HTTPS (`None` port: the default, 443).
    redirect_https: Option<Option<u16>>,
    hsts: Option<HeaderValue>,
}

impl Edge {
    pub fn of(l: &Listener) -> Self {
        let hsts = l.tls.as_ref().and_then(|t| t.hsts.as_deref());
        Self {
            redirect_https: l.redirect_https,
            hsts: hsts.and_then(|v| HeaderValue::from_str(v).ok()),
        }
    }

    /// The HTTPS URL to send this request to, when it must be redirected.
    pub fn redirect_for(
        &self,
        host: Option<&str>,
        path_and_query: &str,
    ) -> Option<Result<String, ()>> {
        let port = self.redirect_https?;
        if path_and_query.starts_with(ACME_CHALLENGE) {
            return None;
        }
        Some(https_url(host, port, path_and_query))
    }

    pub fn hsts(&self) -> Option<&HeaderValue> {
        self.hsts.as_ref()
    }
}

/// `https://HOST[:PORT]/path?query`, from the request's host without its port. `Err` when
/// the host is missing or is not a plain host name or address literal.
fn https_url(host: Option<&str>, port: Option<u16>, path_and_query: &str) -> Result<String, ()> {
    let host = host.ok_or(())?;
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => &host[..rest.find(']').ok_or(())? + 2],
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let bracketed = name.starts_with('[');
    let ok = !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'.' | b'-' | b'_')
                || (bracketed && matches!(b, b'[' | b']' | b':'))
        });
    if !ok {
        return Err(());
    }
    let path = if path_and_query.starts_with('/') {
        path_and_query
    } else {
        "/"
    };
    Ok(match port {
        Some(p) if p != 443 => format!("https://{name}:{p}{path}"),
        _ => format!("https://{name}{path}"),
    })
}

/// The answer to an ACME HTTP-01 challenge request (RFC 8555 8.3), when it is one this
/// proxy or a peer of its fleet is being validated with. Only a token's shape is looked
/// up (a peer's answer may cost a database trip).
pub async fn challenge_answer(
    state: &crate::state::AppState,
    req: &pingora::http::RequestHeader,
) -> Option<String> {
    let token = req.uri.path().strip_prefix(ACME_CHALLENGE)?;
    let plausible = !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plausible || req.method != http::Method::GET {
        return None;
    }
    state.challenges.answer_any(token)
}

/// Answer an ACME HTTP-01 challenge with its key authorization (RFC 8555 8.3).
pub async fn answer_challenge(session: &mut Session, key_authorization: &str) -> Result<()> {
    let body = bytes::Bytes::from(key_authorization.to_string());
    let mut resp = ResponseHeader::build(200, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/octet-stream")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Answer with a 308 to `location` (the method and body are kept by the client).
pub async fn redirect(session: &mut Session, location: &str) -> Result<()> {
    let body = bytes::Bytes::from(format!("Moved permanently to {location}\n"));
    let mut resp = ResponseHeader::build(308, Some(4))?;
    resp.insert_header(http::header::LOCATION, location)?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    if let Some(id) = super::errors::request_id(session) {
        resp.insert_header(super::headers::REQUEST_ID.clone(), id)?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

impl super::Proxy {
    /// Answer an ACME HTTP-01 challenge request; `false` when it is not one we know.
    pub(super) async fn acme_challenge(
        &self,
        session: &mut Session,
        ctx: &mut super::Ctx,
    ) -> Result<bool> {
        let Some(answer) = challenge_answer(&self.state, session.req_header()).await else {
            return Ok(false);
        };
        ctx.outcome = Some(crate::access_log::Outcome::Acme);
        answer_challenge(session, &answer).await?;
        Ok(true)
    }

    /// Answer a plain-listener request with its HTTPS location (400 without a usable host).
    pub(super) async fn to_https(
        &self,
        session: &mut Session,
        ctx: &mut super::Ctx,
        to: Result<String, ()>,
    ) -> Result<bool> {
        match to {
            Ok(location) => {
                ctx.outcome = Some(crate::access_log::Outcome::Redirected);
                redirect(session, &location).await?;
            }
            Err(()) => {
                ctx.outcome = Some(crate::access_log::Outcome::Refused);
                let msg = "a redirect to HTTPS needs a Host header with a plain host name";
                super::errors::respond(session, 400, "bad_request", msg).await?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_keep_path_and_query_and_drop_the_plain_port() {
        let e = Edge {
            redirect_https: Some(None),
            hsts: None,
        };
        let to = |h: Option<&str>, p: &str| e.redirect_for(h, p);
        assert_eq!(
            to(Some("a.test:80"), "/x?y=1"),
            Some(Ok("https://a.test/x?y=1".into()))
        );
        assert_eq!(
            to(Some("[::1]:8080"), "/"),
            Some(Ok("https://[::1]/".into()))
        );
        assert_eq!(to(Some("a.test"), "/.well-known/acme-challenge/tok"), None);
        assert_eq!(to(None, "/"), Some(Err(())));
        assert_eq!(to(Some("evil.test/x"), "/"), Some(Err(())));
        assert_eq!(to(Some("a:1:2"), "/"), Some(Err(())));
        let e = Edge {
            redirect_https: Some(Some(8443)),
            hsts: None,
        };
        assert_eq!(
            e.redirect_for(Some("a.test"), "/p"),
            Some(Ok("https://a.test:8443/p".into()))
        );
        assert_eq!(Edge::default().redirect_for(Some("a.test"), "/"), None);
    }
}
