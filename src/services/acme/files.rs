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

/// Where one certificate (its names) is kept: a name that stays the same across builds
/// (a std hasher may change with the compiler; a restart must find what it stored).
pub(crate) fn cert_dir(storage: &Path, names: &[String]) -> PathBuf {
    let first = names.first().map_or("cert", String::as_str);
    storage.join(format!("{first}-{}", short_hash(&names.join(","))))
}

pub(crate) fn load_stored(dir: &Path) -> Result<Arc<Served>, String> {
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| e.to_string());
    let (key, info) = config::tls::load_pair(&read("cert.pem")?, &read("key.pem")?)?;
    Ok(Arc::new(Served {
        key,
        info,
        source: Source::Acme,
        only_named: false,
    }))
}

pub(super) fn store(dir: &Path, chain: &str, key: &str) -> std::io::Result<()> {
    create_private_dir(dir)?;
    write_private(&dir.join("key.pem"), key.as_bytes())?;
    write_private(&dir.join("cert.pem"), chain.as_bytes())
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // One that existed already (made by hand, or by an older version) is tightened too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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
    // A leftover temp file keeps its old mode through `open`: set it.
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// 64-bit FNV-1a, hex: stable across builds and platforms (file names on disk).
pub(super) fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

pub(super) fn decode_b64url(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("eab: the HMAC key is not base64url: {e}"))
}
