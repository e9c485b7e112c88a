//! TLS test helpers: a CA that issues certificates (names, validity), what a listener
//! presents for a server name (read without verifying, to see the default too), and curl
//! over HTTPS to a name pinned to 127.0.0.1.

#![allow(dead_code)]

use std::{process::Command, sync::Arc};

use pingora::tls::{
    CertificateDer, ClientConfig, DigitallySignedStruct, RusTlsError, ServerCertVerified,
    ServerCertVerifier, ServerName, SignatureScheme, UnixTime,
};

/// A test certificate authority.
pub struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tidegate test CA {}", fastrand::u64(..)),
        );
        let issuer = rcgen::CertifiedIssuer::self_signed(p, key).unwrap();
        let pem = issuer.pem();
        Self { issuer, pem }
    }

    /// A certificate for `names` valid from yesterday for `days`: (chain PEM, key PEM).
    pub fn issue(&self, names: &[&str], days: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(days);
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[derive(Debug)]
struct Anything;

impl ServerCertVerifier for Anything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, RusTlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, RusTlsError> {
        Ok(pingora::tls::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<pingora::tls::HandshakeSignatureValid, RusTlsError> {
        Ok(pingora::tls::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        pingora::tls::CryptoProvider::get_default()
            .map(|p| p.signature_verification_algorithms.supported_schemes())
            .unwrap_or_default()
    }
}

/// The DNS names of the certificate the listener at `port` presents for `sni`.
pub async fn presented(port: u16, sni: &str) -> Result<Vec<String>, String> {
    presented_cert(port, sni).await.map(|(names, _)| names)
}

/// Names and not-after (Unix seconds) of the certificate presented for `sni`, from a new
/// handshake.
pub async fn presented_cert(port: u16, sni: &str) -> Result<(Vec<String>, i64), String> {
    pingora::tls::install_default_crypto_provider();
    let cfg = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Anything))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let tls = pingora::tls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let not_after = x.validity().not_after.timestamp();
    let san = x.subject_alternative_name().ok().flatten();
    let names = san
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((names, not_after))
}

/// `curl` to `https://NAME:PORT/path` pinned to 127.0.0.1, trusting `ca_file`: (exit code,
/// HTTP status, headers and body).
pub fn curl_https(name: &str, port: u16, ca_file: &std::path::Path, path: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "5", "--cacert"])
        .arg(ca_file)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("curl is needed for TLS tests");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// A TLS connection to the listener at `port` for `sni`, verified against `ca_pem`.
pub async fn connect(
    port: u16,
    sni: &str,
    ca_pem: &str,
) -> Result<pingora::tls::ClientTlsStream<tokio::net::TcpStream>, String> {
    use rustls_pki_types::pem::PemObject;
    pingora::tls::install_default_crypto_provider();
    let mut roots = pingora::tls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    pingora::tls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// One HTTPS request on a fresh connection (a new handshake): its status line's code.
pub async fn https_status(port: u16, sni: &str, ca_pem: &str, path: &str) -> Result<u16, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = connect(port, sni, ca_pem).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

/// A WebSocket over TLS (`wss://sni:port/path`), verified against `ca_pem`.
pub async fn wss_connect(
    port: u16,
    sni: &str,
    ca_pem: &str,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<pingora::tls::ClientTlsStream<tokio::net::TcpStream>> {
    let tls = connect(port, sni, ca_pem).await.expect("TLS");
    let url = format!("wss://{sni}:{port}{path}");
    let (ws, resp) = tokio_tungstenite::client_async(url, tls)
        .await
        .expect("wss upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}
