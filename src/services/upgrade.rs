//! Graceful upgrade, guarded: the listening sockets go only to a process of tidegate's own
//! user, through a directory only that user can write.
//!
//! - [`prepare`]: at start, the upgrade socket's directory must not let another user create
//!   or replace the socket (the default one, `/tmp/tidegate-UID/`, is created mode 0700 and
//!   checked like tmux checks its socket directory). A directory writable by others, sticky
//!   (`/tmp`) or not, refuses to start.
//! - [`Relay`]: pingora sends the listening sockets, at SIGQUIT, to the socket path in its
//!   configuration. tidegate points that path at a relay of its own (a private socket next
//!   to the real one) and forwards what pingora sends only after `SO_PEERCRED` shows that the
//!   process listening on the real socket runs as tidegate's user (or root).
//! - [`listener_is_ours`]: checked at SIGQUIT before the hand-off starts: the socket exists
//!   and belongs to tidegate's user; otherwise the upgrade is refused and this process keeps
//!   serving.

use std::{
    io::{IoSlice, IoSliceMut},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{DirBuilderExt, MetadataExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::{
    cmsg_space,
    sys::socket::{self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags},
};

/// How long the relay and the SIGQUIT check wait for the new process's socket (pingora's
/// sender waits as long).
const WAIT_FOR_NEW: Duration = Duration::from_secs(5);
/// Listening sockets one hand-off carries at most (pingora's limit).
const MAX_FDS: usize = 32;

/// Why the upgrade socket cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("server.upgrade_sock {path}: {why}")]
pub struct UpgradeSockError {
    path: String,
    why: String,
}

impl UpgradeSockError {
    /// The relay socket next to `sock` could not be made.
    pub fn relay(sock: &Path, e: &std::io::Error) -> Self {
        UpgradeSockError {
            path: sock.display().to_string(),
            why: format!("cannot listen next to it: {e}"),
        }
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

/// Whether `uid` may receive the listening sockets: tidegate's own user, or root.
fn trusted(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Make sure the socket's directory exists and is safe; `created_default`: the directory is
/// tidegate's own default (`/tmp/tidegate-UID`), created here mode 0700.
pub fn prepare(sock: &Path, created_default: bool) -> Result<(), UpgradeSockError> {
    let err = |why: String| UpgradeSockError {
        path: sock.display().to_string(),
        why,
    };
    let dir = sock
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| err("must be an absolute path to a file".into()))?;
    if created_default {
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
    let mode = meta.permissions().mode();
    if created_default && (meta.uid() != euid() || mode & 0o077 != 0) {
        return Err(err(format!(
            "{} must belong to uid {} with mode 0700 (it is uid {} mode {:o}): another user may have made it; remove it",
            dir.display(),
            euid(),
            meta.uid(),
            mode & 0o7777
        )));
    }
    if !trusted(meta.uid()) {
        return Err(err(format!(
            "directory {} belongs to uid {}, not to tidegate's user",
            dir.display(),
            meta.uid()
        )));
    }
    if mode & 0o022 != 0 {
        // Sticky (/tmp) included: another user could take the name first, and the new
        // process's socket is open to every user (pingora makes it 0666), so another user
        // could also hand it sockets of their own.
        return Err(err(format!(
            "directory {} is writable by other users: one could take or feed the upgrade socket; use a directory only tidegate's user can write (the default is next to state_file, else /tmp/tidegate-UID)",
            dir.display()
        )));
    }
    Ok(())
}

/// Whether the socket at `sock` belongs to a trusted user, waiting up to 5 s for the new
/// process to create it. `Err` says why the upgrade must not go on.
pub fn listener_is_ours(sock: &Path) -> Result<(), String> {
    let end = Instant::now() + WAIT_FOR_NEW;
    loop {
        match std::fs::symlink_metadata(sock) {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(format!("{} is not a socket", sock.display()));
                }
                if !trusted(m.uid()) {
                    return Err(format!(
                        "{} belongs to uid {}, not to tidegate's user",
                        sock.display(),
                        m.uid()
                    ));
                }
                return Ok(());
            }
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                return Err(format!(
                    "{}: {e} (start the new process with --upgrade first)",
                    sock.display()
                ))
            }
        }
    }
}

/// The relay between pingora's sender and the new process.
pub struct Relay {
    /// Where pingora sends (configure pingora's `upgrade_sock` with it).
    pub path: PathBuf,
}

impl Relay {
    /// Listen on a private socket next to `real` and forward each hand-off to `real` after
    /// checking the peer there. The relay runs on its own thread for the process's life.
    pub fn start(real: &Path) -> std::io::Result<Relay> {
        let mut name = real.file_name().unwrap_or_default().to_os_string();
        name.push(format!(".{}.relay", std::process::id()));
        let path = real.with_file_name(name);
        remove_dead_relays(real);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let real = real.to_path_buf();
        let own = path.clone();
        std::thread::Builder::new()
            .name("upgrade-relay".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    if let Err(e) = relay_one(&conn, &real) {
                        tracing::error!(socket = %real.display(), error = %e, "graceful upgrade refused: the listening sockets were not sent");
                    }
                }
                let _ = std::fs::remove_file(own);
            })?;
        Ok(Relay { path })
    }
}

/// Relay sockets (`NAME.PID.relay`) left by processes that were killed.
fn remove_dead_relays(real: &Path) {
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
            .and_then(|r| r.strip_suffix(".relay"))
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !crate::state::process::is_running(pid) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// One hand-off: from pingora (this process) to the process listening on `real`.
fn relay_one(from: &UnixStream, real: &Path) -> Result<(), String> {
    let me = socket::getsockopt(from, sockopt::PeerCredentials).map_err(|e| e.to_string())?;
    if me.pid() != std::process::id() as i32 {
        return Err(format!(
            "the relay was called by pid {}, not by this process",
            me.pid()
        ));
    }
    let mut payload = [0u8; 2048];
    let (fds, len) = receive(from.as_raw_fd(), &mut payload)?;
    let to = connect(real)?;
    let peer = socket::getsockopt(&to, sockopt::PeerCredentials).map_err(|e| e.to_string())?;
    if !trusted(peer.uid()) {
        return Err(format!(
            "the process listening on {} is pid {} uid {}, not tidegate's user (uid {})",
            real.display(),
            peer.pid(),
            peer.uid(),
            euid()
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    socket::sendmsg::<()>(
        to.as_raw_fd(),
        &[IoSlice::new(&payload[..len])],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| e.to_string())?;
    tracing::info!(
        pid = peer.pid(),
        uid = peer.uid(),
        sockets = raw.len(),
        "listening sockets sent to the upgraded process"
    );
    Ok(())
}

/// Read one message with its descriptors (owned here: closed on every path out).
fn receive(fd: RawFd, payload: &mut [u8]) -> Result<(Vec<OwnedFd>, usize), String> {
    let mut iov = [IoSliceMut::new(payload)];
    let mut space = cmsg_space!([RawFd; MAX_FDS]);
    let msg = socket::recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(|e| e.to_string())?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| e.to_string())? {
        if let ControlMessageOwned::ScmRights(list) = c {
            // SAFETY: SCM_RIGHTS descriptors are new in this process and owned by nobody else.
            fds.extend(list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    Ok((fds, msg.bytes))
}

/// Connect to the new process's socket, waiting for it like pingora's sender does.
fn connect(real: &Path) -> Result<UnixStream, String> {
    let end = Instant::now() + WAIT_FOR_NEW;
    loop {
        match UnixStream::connect(real) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("{}: {e}", real.display())),
        }
    }
}
