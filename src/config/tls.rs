//! Listener certificates from PEM bytes (pure: the caller reads the files), and the set a
//! TLS listener serves, chosen by SNI: exact names, then one-label wildcards, then the
//! default (the first pair). `tidegate check`, startup and the certificate watcher all go
//! through [`load_pair`], so a pair that check accepts is one the listener can serve.

use std::{collections::HashMap, sync::Arc};

use pingora::tls::{sign::CertifiedKey, CertificateDer, PrivateKeyDer};
use rustls_pki_types::pem::PemObject;

/// Where a served certificate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    File,
    Acme,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Acme => "acme",
        }
    }
}

/// What a certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// DNS names it is for (subject alternative names, else the common name), lowercase.
    pub names: Vec<String>,
    /// The issuer's common name (or the whole issuer name when it has none).
    pub issuer: String,
    /// Validity, seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
}

/// A certificate chain and its key, ready for handshakes.
pub struct Served {
    pub key: Arc<CertifiedKey>,
    pub info: CertInfo,
    pub source: Source,
    /// Served only for its own names, never as the default (an on-demand certificate:
    /// one customer's name must not be shown for another's).
    pub only_named: bool,
}

impl Served {
    /// The same certificate, served for its names only.
    pub fn only_named(self: &Arc<Self>) -> Arc<Self> {
        Arc::new(Served {
            key: self.key.clone(),
            info: self.info.clone(),
            source: self.source,
            only_named: true,
        })
    }
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served").field("info", &self.info).finish()
    }
}

/// Parse a chain and key (PEM) and check that they belong together.
pub fn load_pair(cert_pem: &[u8], key_pem: &[u8]) -> Result<(Arc<CertifiedKey>, CertInfo), String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cert: not PEM certificates: {e}"))?;
    let Some(leaf) = chain.first() else {
        return Err("cert: no certificate found".into());
    };
    let info = info_of(leaf)?;
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key: no private key: {e}"))?;
    pingora::tls::install_default_crypto_provider();
    let provider = pingora::tls::CryptoProvider::get_default()
        .ok_or_else(|| "no TLS crypto provider".to_string())?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("key: unusable private key: {e}"))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match()
        .map_err(|e| format!("certificate and key do not form a pair: {e}"))?;
    Ok((Arc::new(ck), info))
}

/// Names, issuer and validity of a leaf certificate.
pub fn info_of(leaf: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("cert: cannot be parsed: {e}"))?;
    let mut names: Vec<String> = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        let cn = x.subject().iter_common_name().next();
        names.extend(cn.and_then(|c| c.as_str().ok()).map(str::to_lowercase));
    }
    let issuer = x.issuer();
    let issuer = match issuer
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
    {
        Some(cn) => cn.to_string(),
        None => issuer.to_string(),
    };
    let v = x.validity();
    Ok(CertInfo {
        names,
        issuer,
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// The certificates one listener serves.
#[derive(Debug)]
pub struct CertSet {
    /// In the order configured; the first is the default.
    pub certs: Vec<Arc<Served>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Index the certificates by their names (a name claimed twice goes to the first).
    pub fn new(certs: Vec<Arc<Served>>) -> Self {
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for (i, c) in certs.iter().enumerate() {
            for n in &c.info.names {
                match n.strip_prefix("*.") {
                    Some(rest) => wildcard.entry(rest.to_string()).or_insert(i),
                    None => exact.entry(n.clone()).or_insert(i),
                };
            }
        }
        Self {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for a handshake's server name (`None`, or a name nothing claims:
    /// the default).
    pub fn pick(&self, sni: Option<&str>) -> Option<&Arc<Served>> {
        match sni.and_then(|name| self.find(name)) {
            Some(i) => self.certs.get(i),
            None => self.certs.iter().find(|c| !c.only_named),
        }
    }

    /// The certificate that claims `name` (not the default), if any.
    pub fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(i) = self.exact.get(&name) {
            return Some(*i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }

    /// The same set with certificate `i` replaced (added, when `i` is the length).
    pub fn with(&self, i: usize, c: Arc<Served>) -> Self {
        let mut certs = self.certs.clone();
        match certs.get_mut(i) {
            Some(slot) => *slot = c,
            None => certs.push(c),
        }
        Self::new(certs)
    }
}

/// A warning when a certificate is expired or expires within `days` of `now` (Unix secs).
pub fn expiry_warning(info: &CertInfo, now: i64, days: i64) -> Option<String> {
    let left = info.not_after - now;
    let names = info.names.join(", ");
    if left <= 0 {
        Some(format!("certificate for {names} has expired"))
    } else if left < days * 86_400 {
        Some(format!(
            "certificate for {names} expires in {} days",
            left.div_euclid(86_400)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let k = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .expect("rcgen");
        (k.cert.pem(), k.signing_key.serialize_pem())
    }

    fn served(names: &[&str]) -> Arc<Served> {
        let (c, k) = pair(names);
        let (key, info) = load_pair(c.as_bytes(), k.as_bytes()).expect("pair");
        Arc::new(Served {
            key,
            info,
            source: Source::File,
            only_named: false,
        })
    }

    #[test]
    fn exact_names_then_wildcards_then_the_default() {
        let set = CertSet::new(vec![
            served(&["default.test"]),
            served(&["a.test", "*.wild.test"]),
            served(&["b.test"]),
        ]);
        let name = |sni| set.pick(sni).map(|c| c.info.names[0].clone());
        assert_eq!(name(Some("a.test")).as_deref(), Some("a.test"));
        assert_eq!(name(Some("B.TEST.")).as_deref(), Some("b.test"));
        assert_eq!(name(Some("x.wild.test")).as_deref(), Some("a.test"));
        assert_eq!(name(Some("y.x.wild.test")).as_deref(), Some("default.test"));
        assert_eq!(name(Some("other.test")).as_deref(), Some("default.test"));
        assert_eq!(name(None).as_deref(), Some("default.test"));
    }

    #[test]
    fn a_mismatched_pair_and_garbage_are_refused() {
        let (c1, _) = pair(&["one.test"]);
        let (_, k2) = pair(&["two.test"]);
        let e = load_pair(c1.as_bytes(), k2.as_bytes()).expect_err("mismatch");
        assert!(e.contains("do not form a pair"), "{e}");
        assert!(load_pair(b"garbage", k2.as_bytes()).is_err());
        assert!(load_pair(c1.as_bytes(), b"").is_err());
    }

    #[test]
    fn expiry_is_warned_within_the_window() {
        let info = CertInfo {
            names: vec!["a.test".into()],
            issuer: "ca".into(),
            not_before: 0,
            not_after: 100 * 86_400,
        };
        assert_eq!(expiry_warning(&info, 80 * 86_400, 14), None);
        assert_eq!(
            expiry_warning(&info, 90 * 86_400, 14).as_deref(),
            Some("certificate for a.test expires in 10 days")
        );
        assert!(expiry_warning(&info, 101 * 86_400, 14).is_some_and(|w| w.contains("expired")));
    }
}
