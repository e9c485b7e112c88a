//! Graceful upgrade, guarded: the listening sockets go only from the running tidegate to the
//! new one, both of tidegate's own user (or root), through a directory no other user can
//! enter, and the old process stops only once the new one has taken them.
//!
//! tidegate does the hand-off itself, before pingora is told anything:
//! - [`prepare`]: at start, the socket's directory must be private (no access at all for group
//!   or others: connecting to a socket needs only search permission on its directory) and
//!   belong to tidegate's user. The defaults, `upgrade/` next to `state_file` and else
//!   `/tmp/tidegate-UID/`, are created mode 0700.
//! - [`receive`] (new process, `--upgrade`): listens on the socket (mode 0600). A peer of
//!   another user is refused and the wait goes on (the first connection does not win). From
//!   a trusted peer it takes the descriptors, checks each is a listening TCP socket bound to
//!   the address it is sent for, and refuses to start otherwise. The checked descriptors go
//!   to pingora's bootstrap through a private inner socket; only then is the sender told `ok`.
//! - [`hand_over`] (old process, SIGQUIT): connects to the socket (a stale file nobody
//!   listens on is refused), checks the listener's `SO_PEERCRED`, sends its listening sockets
//!   and waits for `ok`. Only then does pingora start its own hand-off (sent to a [`Sink`],
//!   which closes what it gets: the new process has the sockets already) and stop; on any
//!   refusal this process keeps serving and stays ready.
//!
//! The message is pingora's (addresses separated by spaces, the descriptors as
//! `SCM_RIGHTS`), so a tidegate of the version before, which does not wait for `ok`, can
//! still hand over to this one.

mod hand_over;
mod receive;
mod wire;

use std::{
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use nix::sys::socket::{self, sockopt};

pub use hand_over::hand_over;
pub use receive::{receive, Confirm};
use wire::*;
pub use wire::{UpgradeSockError, WAIT};

/// Make sure the socket's directory exists and is private; `created_default`: the directory
/// is one of tidegate's defaults, created here mode 0700 (its parent must not let another
/// user replace it).
// Long: each check has its own message naming the fix.
pub fn prepare(sock: &Path, created_default: bool) -> Result<(), UpgradeSockError> {
    let err = |why: String| UpgradeSockError::new(sock, why);
    let dir = sock
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| err("must be an absolute path to a file".into()))?;
    if created_default {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let m = std::fs::metadata(parent)
                .map_err(|e| err(format!("directory {}: {e}", parent.display())))?;
            let mode = m.permissions().mode();
            // Sticky (/tmp): others cannot rename or remove our directory; a foreign one of
            // that name is refused below.
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                return Err(err(format!(
                    "directory {} is writable by other users: one could replace {}; make it writable by tidegate's user only, or set server.upgrade_sock to a path in a private directory",
                    parent.display(),
                    dir.display()
                )));
            }
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(format!("cannot create {}: {e}", dir.display()))),
        }
    }
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| err(format!("directory {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(err(format!("{} is not a directory", dir.display())));
    }
    // The side sockets (`NAME.PID.sink`) must fit a unix socket address (108 bytes).
    if sock.as_os_str().len() + ".4194304.sink".len() > 107 {
        return Err(err(format!(
            "the path is too long for a unix socket with its side sockets (at most {} bytes)",
            107 - ".4194304.sink".len()
        )));
    }
    let mode = meta.permissions().mode();
    if !trusted(meta.uid()) {
        return Err(err(format!(
            "directory {} belongs to uid {}, not to tidegate's user (uid {}): another user may have made it; remove it",
            dir.display(),
            meta.uid(),
            euid()
        )));
    }
    if mode & 0o022 != 0 {
        // Kept apart from the next check for its message: sticky (/tmp) included, another
        // user could take the name first.
        return Err(err(format!(
            "directory {} is writable by other users: one could take or feed the upgrade socket; use a private directory (mode 0700) of tidegate's user (the default is upgrade/ next to state_file, else /tmp/tidegate-UID)",
            dir.display()
        )));
    }
    if mode & 0o077 != 0 {
        // Connecting to a unix socket needs only search permission on its directory: another
        // user could be the first to connect to the new process's socket.
        return Err(err(format!(
            "directory {} must be private (mode 0700, it is {:o}): another user who can enter it could connect to the upgrade socket; chmod 0700 it, or leave server.upgrade_sock unset (the default is upgrade/ next to state_file, created 0700)",
            dir.display(),
            mode & 0o7777
        )));
    }
    Ok(())
}

/// Where pingora's own hand-off goes once tidegate's is done: received and closed (the new
/// process holds the sockets already), so pingora's send returns at once.
pub struct Sink {
    /// Configure pingora's `upgrade_sock` with it.
    pub path: PathBuf,
}

/// The private socket next to `real` a process uses for pingora's side: `kind` is `sink`
/// (the old process's pingora sends there) or `in` (the new process's pingora receives).
pub fn side_path(real: &Path, kind: &str) -> PathBuf {
    let mut name = real.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.{kind}", std::process::id()));
    real.with_file_name(name)
}

impl Sink {
    /// Listen on a private socket next to `real`. Runs on its own thread for the process's
    /// life.
    pub fn start(real: &Path) -> std::io::Result<Sink> {
        remove_dead_sides(real);
        let path = side_path(real, "sink");
        let listener = listen_private(&path)?;
        let own = path.clone();
        std::thread::Builder::new()
            .name("upgrade-sink".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    let me = socket::getsockopt(&conn, sockopt::PeerCredentials);
                    if me.map_or(true, |c| c.pid() != std::process::id() as i32) {
                        continue;
                    }
                    let _ = conn.set_read_timeout(Some(PEER_TIMEOUT));
                    let mut payload = [0u8; MAX_PAYLOAD];
                    // The copies pingora sent are closed when dropped.
                    let _ = receive_fds(conn.as_raw_fd(), &mut payload);
                }
                let _ = std::fs::remove_file(own);
            })?;
        Ok(Sink { path })
    }
}

/// Side sockets (`NAME.PID.sink`, `NAME.PID.in`, and the `.relay` of the version before)
/// left by processes that were killed.
fn remove_dead_sides(real: &Path) {
    let (Some(dir), Some(name)) = (real.parent(), real.file_name()) else {
        return;
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(&prefix)
            .and_then(|r| r.rsplit_once('.'))
            .filter(|(_, kind)| matches!(*kind, "sink" | "in" | "relay"))
            .and_then(|(p, _)| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !crate::state::process::is_running(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}
