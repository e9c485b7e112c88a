//! Where ACME keeps things on disk: a directory per certificate (0700), files only their
//! owner reads (0600), written atomically.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use crate::config::{
    self,
    tls::{Served, Source},
};

/// Where one certificate (its names) is kept.
pub(super) fn cert_dir(storage: &Path, names: &[String]) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    names.hash(&mut h);
    let first = names.first().map_or("cert", String::as_str);
    storage.join(format!("{first}-{:016x}", h.finish()))
}

pub(super) fn load_stored(dir: &Path) -> Result<Arc<Served>, String> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| e.to_string());
    let (key, info) = config::tls::load_pair(&read("cert.pem")?, &read("key.pem")?)?;
    Ok(Arc::new(Served {
        key,
        info,
        source: Source::Acme,
    }))
}

pub(super) fn store(dir: &Path, chain: &str, key: &str) -> std::io::Result<()> {
    create_private_dir(dir)?;
    write_private(&dir.join("key.pem"), key.as_bytes())?;
    write_private(&dir.join("cert.pem"), chain.as_bytes())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write a file only its owner can read, atomically (a temp file renamed over it).
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    if let Some(parent) = path.parent() {
        create_private_dir(parent)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

pub(super) fn short_hash(s: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    format!("{:016x}", h.finish())
}

pub(super) fn decode_b64url(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("eab: the HMAC key is not base64url: {e}"))
}
