//! `pools.NAME.protocol`, `.tls` and `.h2`: checked, with the TLS files read and parsed here
//! so `tidegate check`, start and reload refuse a broken file the same way (the old config
//! keeps serving).

use std::path::Path;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::*;
use crate::config::upstream::{Protocol, Upstream, UpstreamTls};

pub(super) fn build_upstream(
    path: &str,
    p: &FilePool,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<Upstream, ConfigError> {
    let protocol = match p.protocol {
        FileProtocol::Http1 => Protocol::Http1,
        FileProtocol::H2c => Protocol::H2c,
        FileProtocol::H2 => Protocol::H2,
        FileProtocol::Auto => Protocol::Auto,
    };
    for (key, value, max) in [
        ("max_streams", p.h2.max_streams, 10_000),
        ("max_connections", p.h2.max_connections, 1_000),
    ] {
        if !(1..=max).contains(&value) {
            return Err(ConfigError::OutOfRange {
                path: format!("{path}.h2.{key}"),
                value: value.into(),
                min: 1,
                max: max.into(),
            });
        }
    }
    let tls = match (&p.tls, protocol) {
        (Some(_), Protocol::H2c) => {
            return Err(invalid(
                format!("{path}.tls"),
                "h2c is HTTP/2 without TLS; use protocol: h2 (or auto) for HTTP/2 over TLS",
            ))
        }
        (Some(t), _) => Some(build_tls(&format!("{path}.tls"), t, io, warnings)?),
        (None, Protocol::H2 | Protocol::Auto) => Some(build_tls(
            &format!("{path}.tls"),
            &FileUpstreamTls {
                verify: true,
                ..Default::default()
            },
            io,
            warnings,
        )?),
        (None, _) => None,
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    if let Some(t) = &tls {
        (&t.sni, t.verify, &t.contents).hash(&mut h);
    }
    Ok(Upstream {
        protocol,
        tls: tls.map(Arc::new),
        max_streams: p.h2.max_streams as usize,
        max_connections: p.h2.max_connections as usize,
        group_key: h.finish(),
    })
}

fn build_tls(
    path: &str,
    t: &FileUpstreamTls,
    io: &Inputs,
    warnings: &mut Vec<String>,
) -> Result<UpstreamTls, ConfigError> {
    let err = |sub: &str, message: String| ConfigError::Tls {
        path: format!("{path}.{sub}"),
        message,
    };
    if let Some(sni) = &t.sni {
        if rustls_pki_types::ServerName::try_from(sni.as_str()).is_err() {
            return Err(err("sni", format!("{sni:?} is not a valid server name")));
        }
    }
    if !t.verify {
        warnings.push(format!(
            "{path}.verify is false: backend certificates are not verified (anyone on the path can impersonate them)"
        ));
    }
    let mut contents = Vec::new();
    let ca = match &t.ca_file {
        Some(f) => {
            let certs = read_certs(io, f).map_err(|m| err("ca_file", m))?;
            check_roots(&certs).map_err(|m| err("ca_file", m))?;
            contents.extend(certs.iter().flat_map(|c| c.as_ref().to_vec()));
            Some(Arc::from(to_wrapped(certs)))
        }
        None => None,
    };
    let client = match (&t.client_cert, &t.client_key) {
        (None, None) => None,
        (Some(c), Some(k)) => {
            let (certs, key) = read_pair(io, c, k).map_err(|m| err("client_cert", m))?;
            contents.extend(certs.iter().flat_map(|c| c.to_vec()));
            Some(Arc::new(pingora::utils::tls::CertKey::new(certs, key)))
        }
        (Some(_), None) => return Err(err("client_key", "client_cert needs client_key".into())),
        (None, Some(_)) => return Err(err("client_cert", "client_key needs client_cert".into())),
    };
    Ok(UpstreamTls {
        sni: t.sni.clone(),
        verify: t.verify,
        ca_file: t.ca_file.clone(),
        client_cert: t.client_cert.clone(),
        client_key: t.client_key.clone(),
        ca,
        client,
        contents,
    })
}

fn read_certs(io: &Inputs, file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = (io.read)(file).map_err(|e| {
        format!(
            "cannot read {}: {}",
            file.display(),
            super::listeners::io_reason(&e)
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", file.display()));
    }
    for (i, c) in certs.iter().enumerate() {
        // pingora parses them again with x509-parser at connect (and panics on what it
        // refuses): refuse those here.
        x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("certificate {} cannot be parsed: {e}", i + 1))?;
    }
    Ok(certs)
}

/// Every CA certificate must parse as one (the connector parses them again per connection,
/// and panics on one it cannot read).
fn check_roots(certs: &[CertificateDer<'static>]) -> Result<(), String> {
    let mut store = pingora::tls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store
            .add(c.clone())
            .map_err(|e| format!("certificate {} is not a usable CA certificate: {e}", i + 1))?;
    }
    Ok(())
}

fn to_wrapped(certs: Vec<CertificateDer<'static>>) -> Vec<pingora::utils::tls::WrappedX509> {
    certs
        .into_iter()
        .map(|c| pingora::utils::tls::WrappedX509::new(c.to_vec(), pingora::utils::tls::parse_x509))
        .collect()
}

/// A client certificate chain and its key, checked to belong together.
fn read_pair(io: &Inputs, cert: &Path, key: &Path) -> Result<(Vec<Vec<u8>>, Vec<u8>), String> {
    let certs = read_certs(io, cert)?;
    let key_bytes = (io.read)(key).map_err(|e| {
        format!(
            "cannot read {}: {}",
            key.display(),
            super::listeners::io_reason(&e)
        )
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| format!("{}: no private key: {e}", key.display()))?;
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider".to_string())?;
    let signing = provider
        .key_provider
        .load_private_key(key_der.clone_key())
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    pingora::tls::sign::CertifiedKey::new(certs.clone(), signing)
        .keys_match()
        .map_err(|e| format!("certificate and key do not form a pair: {e}"))?;
    Ok((
        certs.iter().map(|c| c.to_vec()).collect(),
        key_der.secret_der().to_vec(),
    ))
}
