//! What both ends of the hand-off share: limits, who is trusted, the socket and message
//! primitives (pingora's message: addresses separated by spaces, descriptors as
//! `SCM_RIGHTS`).

use std::{
    io::{IoSlice, IoSliceMut},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{FileTypeExt, PermissionsExt},
            net::{UnixListener, UnixStream},
        },
    },
    path::Path,
    time::{Duration, Instant},
};

use nix::{
    cmsg_space,
    sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags},
};

/// How long the old process waits for the new one's socket at SIGQUIT (and the new one for
/// pingora's bootstrap to take the sockets).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a new process waits for the running one to send (SIGQUIT may come later).
pub(super) const WAIT_FOR_SENDER: Duration = Duration::from_secs(30);
/// How long a connected peer may take to send its message or its answer.
pub(super) const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Listening sockets one hand-off carries at most (pingora's limit).
pub(super) const MAX_FDS: usize = 32;
/// The message's size limit (pingora's).
pub(super) const MAX_PAYLOAD: usize = 2048;

/// Why the upgrade socket cannot be used, or why an upgrade could not start.
#[derive(Debug, thiserror::Error)]
#[error("server.upgrade_sock {path}: {why}")]
pub struct UpgradeSockError {
    path: String,
    why: String,
}

impl UpgradeSockError {
    pub(super) fn new(sock: &Path, why: impl Into<String>) -> Self {
        UpgradeSockError {
            path: sock.display().to_string(),
            why: why.into(),
        }
    }

    /// The sink socket next to `sock` could not be made.
    pub fn relay(sock: &Path, e: &std::io::Error) -> Self {
        Self::new(sock, format!("cannot listen next to it: {e}"))
    }
}

pub(super) fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

/// Whether `uid` may send or receive the listening sockets: tidegate's own user, or root.
pub(super) fn trusted(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Listen on `path` (mode 0600), replacing a socket file a process that ended left there.
pub(super) fn listen_private(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // The directory is private already; the file is too.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub(super) fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

pub(super) fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    matches!(e.kind(), ConnectionRefused | NotFound)
}

/// Send pingora's hand-off message: the addresses, space-separated, with the descriptors.
pub(super) fn send(conn: &UnixStream, fds: &[(SocketAddr, OwnedFd)]) -> Result<(), String> {
    let names: Vec<String> = fds.iter().map(|(a, _)| a.to_string()).collect();
    let payload = names.join(" ");
    if payload.len() > MAX_PAYLOAD || fds.len() > MAX_FDS {
        return Err(format!(
            "too many listeners for one hand-off ({})",
            fds.len()
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|(_, f)| f.as_fd().as_raw_fd()).collect();
    socket::sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(payload.as_bytes())],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Connect to `path`, waiting up to `wait` for something to listen there.
pub(super) fn connect_within(path: &Path, wait: Duration) -> Result<UnixStream, String> {
    let end = Instant::now() + wait;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if retryable(&e) && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
}

/// Read one message with its descriptors (owned here: closed on every path out).
pub(super) fn receive_fds(fd: RawFd, payload: &mut [u8]) -> Result<(Vec<OwnedFd>, usize), String> {
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
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err("more descriptors than one hand-off carries".into());
    }
    Ok((fds, msg.bytes))
}
