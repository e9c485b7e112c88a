//! ACME TLS-ALPN-01 (RFC 8737) on a TLS listener: while such a challenge is pending, each
//! new connection's ClientHello is peeked at (not consumed) before pingora's handshake; one
//! that offers only `acme-tls/1` for a name being validated gets a handshake with the
//! challenge certificate and is closed (that is all the CA needs). Every other connection
//! goes on to the normal handshake untouched; with no challenge pending nothing is peeked.

use std::{os::unix::io::AsRawFd, sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{
    listeners::PreTlsProcess, protocols::l4::stream::Stream as L4Stream, Error, ErrorType,
};

use crate::state::AppState;

/// The ALPN protocol id of TLS-ALPN-01.
pub const ACME_TLS: &[u8] = b"acme-tls/1";

/// How long a connection may take to send its ClientHello while a challenge is pending.
const HELLO_WAIT: Duration = Duration::from_secs(2);

/// The pre-TLS step of an ACME TLS-ALPN-01 listener.
pub struct AlpnResponder {
    pub state: Arc<AppState>,
}

#[async_trait]
impl PreTlsProcess for AlpnResponder {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let challenges = &self.state.challenges;
        if !challenges.alpn_pending() {
            return Ok(());
        }
        let Some((sni, acme_only)) = peek_hello(stream.as_raw_fd()).await else {
            return Ok(());
        };
        let Some(cert) = sni
            .as_deref()
            .filter(|_| acme_only)
            .and_then(|n| challenges.alpn_cert(n))
        else {
            return Ok(());
        };
        // Not `with_single_cert`: it refuses the critical acmeIdentifier extension, which is
        // the point of this certificate.
        let provider = rustls::crypto::CryptoProvider::get_default()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no TLS crypto provider"))?;
        let signing = provider
            .key_provider
            .load_private_key(cert.1.clone_key())
            .map_err(|e| Error::explain(ErrorType::InternalError, format!("challenge key: {e}")))?;
        let key = rustls::sign::CertifiedKey::new(vec![cert.0.clone()], signing);
        let mut cfg = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(One(Arc::new(key))));
        cfg.alpn_protocols = vec![ACME_TLS.to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        match tokio::time::timeout(HELLO_WAIT, acceptor.accept(&mut *stream)).await {
            Ok(Ok(mut tls)) => {
                use tokio::io::AsyncWriteExt;
                let _ = tls.shutdown().await;
                tracing::info!(name = ?sni, "ACME tls-alpn-01 challenge answered");
            }
            Ok(Err(e)) => {
                tracing::warn!(name = ?sni, error = %e, "ACME tls-alpn-01 handshake failed")
            }
            Err(_) => tracing::warn!(name = ?sni, "ACME tls-alpn-01 handshake timed out"),
        }
        // The connection was only for the challenge: pingora drops it.
        Err(Error::explain(
            ErrorType::ConnectionClosed,
            "ACME tls-alpn-01 challenge answered",
        ))
    }
}

/// Answers every handshake with one certificate.
#[derive(Debug)]
struct One(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for One {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Peek at a connection's ClientHello: its server name, and whether `acme-tls/1` is the
/// only protocol it offers. `None` when it does not arrive in time or does not parse.
async fn peek_hello(fd: std::os::unix::io::RawFd) -> Option<(Option<String>, bool)> {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let deadline = tokio::time::Instant::now() + HELLO_WAIT;
    loop {
        // SAFETY: recv(2) into a buffer we own, of its length; MSG_PEEK leaves the bytes
        // in the socket for the real handshake.
        let n = unsafe {
            libc::recv(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n > 0 {
            let n = n as usize;
            let want = if n >= 5 {
                5 + u16::from_be_bytes([buf[3], buf[4]]) as usize
            } else {
                usize::MAX
            };
            if n >= want.min(buf.len()) {
                return parse_hello(&buf[..n]);
            }
        } else if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
        {
            return None;
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Parse a ClientHello with rustls (nothing is answered).
fn parse_hello(bytes: &[u8]) -> Option<(Option<String>, bool)> {
    let mut acc = rustls::server::Acceptor::default();
    acc.read_tls(&mut &bytes[..]).ok()?;
    let accepted = acc.accept().ok()??;
    let hello = accepted.client_hello();
    let sni = hello.server_name().map(str::to_ascii_lowercase);
    let alpn: Vec<&[u8]> = hello.alpn().map(|a| a.collect()).unwrap_or_default();
    Some((sni, alpn == [ACME_TLS]))
}
