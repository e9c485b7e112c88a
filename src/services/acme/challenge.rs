//! What an order serves while the CA validates it: HTTP-01 tokens and TLS-ALPN-01
//! certificates, taken back however the order ends.

use std::sync::Arc;

use crate::state::AppState;

/// Challenge answers being served (HTTP-01 tokens, TLS-ALPN-01 names), taken back when the
/// order is done, however it ends.
pub(super) struct Tokens<'a>(
    pub(super) &'a AppState,
    pub(super) Vec<String>,
    pub(super) Vec<String>,
);

impl Tokens<'_> {
    pub(super) fn put(&mut self, token: &str, key_authorization: &str) {
        self.0.challenges.put(token, key_authorization);
        self.1.push(token.to_string());
    }

    pub(super) fn put_alpn(&mut self, name: &str, cert: crate::state::certs::AlpnCert) {
        self.0.challenges.put_alpn(name, cert);
        self.2.push(name.to_string());
    }
}

impl Drop for Tokens<'_> {
    fn drop(&mut self) {
        for t in &self.1 {
            self.0.challenges.remove(t);
        }
        for n in &self.2 {
            self.0.challenges.remove_alpn(n);
        }
    }
}

/// The TLS-ALPN-01 certificate for `name`: self-signed, carrying the key authorization's
/// SHA-256 in the critical acmeIdentifier extension (RFC 8737 3).
pub(super) fn alpn_cert(
    name: &str,
    digest: &[u8],
) -> Result<crate::state::certs::AlpnCert, String> {
    let err = |e: rcgen::Error| format!("challenge certificate: {e}");
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = p.self_signed(&key).map_err(err)?;
    let der = pingora::tls::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok(Arc::new((cert.der().clone(), der)))
}
