//! `listeners[i].tls.acme`: names, directory, account, challenge, storage, back-off and
//! on-demand issuance, checked the way the ACME service will use them.

use super::*;

pub(super) fn build_acme(
    path: &str,
    a: &FileAcme,
    state_file: Option<&Path>,
    io: &Inputs,
) -> Result<AcmeSpec, ConfigError> {
    let path = format!("{path}.acme");
    let domains = build_domains(&path, a)?;
    let directory = directory_of(&path, a)?;
    if a.email
        .as_ref()
        .is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace))
    {
        return Err(invalid(
            format!("{path}.email"),
            "must be an e-mail address",
        ));
    }
    if let Some(f) = &a.ca_file {
        check_ca_file(&format!("{path}.ca_file"), f, io)?;
    }
    let eab = match &a.eab {
        Some(e) => Some((e.kid.clone(), eab_key(&path, e, io)?)),
        None => None,
    };
    let storage = storage_of(&path, a, state_file)?;
    let (retry_min, retry_max) = (a.retry_min.0, a.retry_max.0);
    if retry_min.is_zero() || retry_min > retry_max {
        return Err(invalid(
            format!("{path}.retry_min"),
            "must be greater than 0 and at most retry_max",
        ));
    }
    Ok(AcmeSpec {
        domains,
        directory,
        email: a.email.clone(),
        ca_file: a.ca_file.clone(),
        challenge: match a.challenge {
            FileAcmeChallenge::Http01 => AcmeChallenge::Http01,
            FileAcmeChallenge::TlsAlpn01 => AcmeChallenge::TlsAlpn01,
        },
        eab,
        storage,
        retry_min,
        retry_max,
        on_demand: a
            .on_demand
            .as_ref()
            .map(|o| on_demand(&path, o))
            .transpose()?,
    })
}

fn build_domains(path: &str, a: &FileAcme) -> Result<Vec<String>, ConfigError> {
    let mut domains = Vec::with_capacity(a.domains.len());
    for (i, d) in a.domains.iter().enumerate() {
        let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
        if d.starts_with("*.") {
            return Err(invalid(
                format!("{path}.domains[{i}]"),
                "wildcard names need the DNS-01 challenge, which tidegate does not answer; list the names",
            ));
        }
        if !is_dns_name(&d) {
            return Err(invalid(
                format!("{path}.domains[{i}]"),
                format!("{d:?} is not a DNS name"),
            ));
        }
        domains.push(d);
    }
    if domains.is_empty() && a.on_demand.is_none() {
        return Err(invalid(
            format!("{path}.domains"),
            "name at least one domain (or set on_demand)",
        ));
    }
    Ok(domains)
}

fn directory_of(path: &str, a: &FileAcme) -> Result<String, ConfigError> {
    let directory = match (&a.directory, a.staging) {
        (Some(_), true) => {
            return Err(invalid(
                format!("{path}.staging"),
                "set directory or staging, not both",
            ))
        }
        (Some(d), false) => d.trim().to_string(),
        (None, true) => LETS_ENCRYPT_STAGING.to_string(),
        (None, false) => LETS_ENCRYPT.to_string(),
    };
    if !directory.starts_with("https://") {
        return Err(invalid(
            format!("{path}.directory"),
            "must be an https:// URL",
        ));
    }
    Ok(directory)
}

fn storage_of(
    path: &str,
    a: &FileAcme,
    state_file: Option<&Path>,
) -> Result<std::path::PathBuf, ConfigError> {
    match (&a.storage, state_file) {
        (Some(s), _) => Ok(s.clone()),
        (None, Some(st)) => Ok(st.parent().unwrap_or(Path::new(".")).join("acme")),
        (None, None) => Err(invalid(
            format!("{path}.storage"),
            "ACME keeps its account key and certificates on disk: set storage or state_file",
        )),
    }
}

fn on_demand(path: &str, o: &FileOnDemand) -> Result<OnDemand, ConfigError> {
    let path = format!("{path}.on_demand");
    if !o.ask.starts_with("http://") {
        return Err(invalid(
            format!("{path}.ask"),
            "must be an http:// URL (a local service: the question never leaves the host)",
        ));
    }
    if o.max_orders == 0 || o.per.0.is_zero() {
        return Err(invalid(
            format!("{path}.max_orders"),
            "max_orders and per must be greater than 0",
        ));
    }
    Ok(OnDemand {
        ask: o.ask.clone(),
        max_orders: o.max_orders,
        per: o.per.0,
    })
}

fn eab_key(path: &str, e: &FileEab, io: &Inputs) -> Result<Secret, ConfigError> {
    match (io.env)(&e.hmac_key_env)
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
    {
        Some(k) => Ok(Secret(k)),
        None => Err(ConfigError::Security {
            path: format!("{path}.eab.hmac_key_env"),
            message: format!(
                "environment variable {} is not set or empty",
                e.hmac_key_env
            ),
        }),
    }
}

fn check_ca_file(path: &str, f: &Path, io: &Inputs) -> Result<(), ConfigError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let tls_err = |message: String| ConfigError::Tls {
        path: path.into(),
        message,
    };
    let bytes = (io.read)(f).map_err(|e| {
        tls_err(format!(
            "cannot read {}: {}",
            f.display(),
            listeners::io_reason(&e)
        ))
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("{}: not PEM certificates: {e}", f.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate found", f.display())));
    }
    Ok(())
}

/// A host name an ACME CA can validate: dot-separated labels of letters, digits and
/// hyphens (not at either end), at most 253 bytes.
pub fn is_dns_name(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}
