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

use std::{
    io::{IoSlice, IoSliceMut, Read, Write},
    net::SocketAddr,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
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

/// How long the old process waits for the new one's socket at SIGQUIT (and the new one for
/// pingora's bootstrap to take the sockets).
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a new process waits for the running one to send (SIGQUIT may come later).
const WAIT_FOR_SENDER: Duration = Duration::from_secs(30);
/// How long a connected peer may take to send its message or its answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);
/// Listening sockets one hand-off carries at most (pingora's limit).
const MAX_FDS: usize = 32;
/// The message's size limit (pingora's).
const MAX_PAYLOAD: usize = 2048;

/// Why the upgrade socket cannot be used, or why an upgrade could not start.
#[derive(Debug, thiserror::Error)]
#[error("server.upgrade_sock {path}: {why}")]
pub struct UpgradeSockError {
    path: String,
    why: String,
}

impl UpgradeSockError {
    fn new(sock: &Path, why: impl Into<String>) -> Self {
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

fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and has no side effects.
    unsafe { libc::geteuid() }
}

/// Whether `uid` may send or receive the listening sockets: tidegate's own user, or root.
fn trusted(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Make sure the socket's directory exists and is private; `created_default`: the directory
/// is one of tidegate's defaults, created here mode 0700 (its parent must not let another
/// user replace it).
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

/// Listen on `path` (mode 0600), replacing a socket file a process that ended left there.
fn listen_private(path: &Path) -> std::io::Result<UnixListener> {
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

/// The new process's word to the running one: given with [`Confirm::started`] once this
/// process has started (every step that can fail is behind it); dropped without it, the
/// running one is told the upgrade failed and keeps serving.
pub struct Confirm(std::sync::mpsc::Sender<()>);

impl Confirm {
    pub fn started(self) {
        let _ = self.0.send(());
    }
}

/// How long the running process is kept waiting for this one to start.
const START_WAIT: Duration = Duration::from_secs(60);

/// New process (`--upgrade`): wait on `sock` for a trusted sender, check what it sends, and
/// feed the listening sockets of `configured` addresses to pingora's bootstrap on `inner`
/// (call `Server::bootstrap` after). The sender is told `ok` only through the returned
/// [`Confirm`]. `Err`: refuse to start (the sender, if any, is told why and keeps serving).
pub fn receive(
    sock: &Path,
    inner: &Path,
    configured: &[SocketAddr],
) -> Result<Confirm, UpgradeSockError> {
    let err = |why: String| UpgradeSockError::new(sock, why);
    let listener = listen_private(sock).map_err(|e| err(format!("cannot listen: {e}")))?;
    let taken = wait_for_sender(&listener, configured);
    drop(listener);
    let _ = std::fs::remove_file(sock);
    let (conn, fds) = taken.map_err(err)?;
    // Listeners this process adds must be free: another user holding one of those ports
    // would keep it (pingora only logs a failed bind).
    for addr in configured
        .iter()
        .filter(|a| !fds.iter().any(|(k, _)| same_addr(**a, *k)))
    {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let why =
                format!("listener {addr} (not sent by the running tidegate) cannot be bound: {e}");
            let _ = (&conn).write_all(format!("refused: {why}\n").as_bytes());
            return Err(err(why));
        }
    }
    let (started, wait) = std::sync::mpsc::channel();
    let inner = inner.to_path_buf();
    std::thread::Builder::new()
        .name("upgrade-feed".into())
        .spawn(move || {
            let sent = connect_within(&inner, WAIT).and_then(|c| send(&c, &fds));
            let answer = match sent.map(|()| wait.recv_timeout(START_WAIT)) {
                Ok(Ok(())) => "ok\n".to_string(),
                Ok(Err(_)) => {
                    "refused: the new process did not start (see its log)\n".to_string()
                }
                Err(e) => {
                    tracing::error!(error = %e, "graceful upgrade: the received sockets could not be passed to pingora");
                    format!("refused: {e}\n")
                }
            };
            let _ = (&conn).write_all(answer.as_bytes());
        })
        .map_err(|e| err(format!("cannot start a thread: {e}")))?;
    Ok(Confirm(started))
}

/// A sender's listening sockets, checked, by address.
type Taken = (UnixStream, Vec<(SocketAddr, OwnedFd)>);

fn wait_for_sender(listener: &UnixListener, configured: &[SocketAddr]) -> Result<Taken, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let end = Instant::now() + WAIT_FOR_SENDER;
    loop {
        let conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(format!(
                    "no running tidegate sent its listening sockets within {} s (send it SIGQUIT)",
                    WAIT_FOR_SENDER.as_secs()
                ))
            }
            Err(e) => return Err(format!("accept: {e}")),
        };
        let peer = socket::getsockopt(&conn, sockopt::PeerCredentials)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        if !trusted(peer.uid()) || peer.pid() == std::process::id() as i32 {
            tracing::warn!(
                pid = peer.pid(),
                uid = peer.uid(),
                "graceful upgrade: a connection from another user was refused; still waiting for the running tidegate"
            );
            continue;
        }
        let checked = conn
            .set_nonblocking(false)
            .and_then(|()| conn.set_read_timeout(Some(PEER_TIMEOUT)))
            .map_err(|e| e.to_string())
            .and_then(|()| take(&conn, configured));
        return match checked {
            Ok(fds) => {
                tracing::info!(
                    pid = peer.pid(),
                    uid = peer.uid(),
                    sockets = fds.len(),
                    "listening sockets received from the running tidegate"
                );
                Ok((conn, fds))
            }
            Err(why) => {
                let _ = (&conn).write_all(format!("refused: {why}\n").as_bytes());
                Err(format!(
                    "refused the sockets sent by pid {} (uid {}): {why}",
                    peer.pid(),
                    peer.uid()
                ))
            }
        };
    }
}

/// Read one hand-off and check every descriptor in it.
fn take(
    conn: &UnixStream,
    configured: &[SocketAddr],
) -> Result<Vec<(SocketAddr, OwnedFd)>, String> {
    let mut payload = [0u8; MAX_PAYLOAD];
    let (fds, len) = receive_fds(conn.as_raw_fd(), &mut payload)?;
    let names: Vec<&str> = std::str::from_utf8(&payload[..len])
        .map_err(|_| "the address list is not text".to_string())?
        .split_ascii_whitespace()
        .collect();
    if names.len() != fds.len() {
        return Err(format!(
            "{} addresses for {} descriptors",
            names.len(),
            fds.len()
        ));
    }
    let mut kept = Vec::new();
    for (name, fd) in names.into_iter().zip(fds) {
        let addr = check_listener(&fd, name).map_err(|why| {
            format!(
                "the descriptor sent for {}: {why}",
                crate::api::printable(name)
            )
        })?;
        if configured.iter().any(|c| same_addr(*c, addr)) {
            kept.push((addr, fd));
        } else {
            tracing::info!(address = %addr, "graceful upgrade: closing an inherited listener this config does not name");
        }
    }
    if kept.is_empty() {
        return Err("no listening socket of a configured listener was sent".into());
    }
    Ok(kept)
}

/// A listening TCP socket bound to the address it is sent for, or why not.
fn check_listener(fd: &OwnedFd, name: &str) -> Result<SocketAddr, String> {
    let want: SocketAddr = name
        .parse()
        .map_err(|_| "not a socket address".to_string())?;
    let s = socket2::SockRef::from(fd);
    if s.r#type().map_err(|e| format!("not a socket ({e})"))? != socket2::Type::STREAM {
        return Err("not a stream socket".into());
    }
    let got = s
        .local_addr()
        .map_err(|e| e.to_string())?
        .as_socket()
        .ok_or_else(|| "not a TCP socket".to_string())?;
    if !same_addr(got, want) {
        return Err(format!("it is bound to {got}"));
    }
    if !s.is_listener().map_err(|e| e.to_string())? {
        return Err("it is not listening".into());
    }
    Ok(want)
}

fn same_addr(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// Old process, at SIGQUIT: hand this process's listening sockets for `addrs` to the new
/// process on `sock` and wait for it to take them. `Ok(n)`: sent and taken; `Err`: why the
/// upgrade must not go on (this process keeps serving).
pub fn hand_over(sock: &Path, addrs: &[SocketAddr]) -> Result<usize, String> {
    let conn = connect_trusted(sock)?;
    let fds = own_listeners(addrs);
    if fds.is_empty() {
        return Err("this process holds none of its listeners' sockets".into());
    }
    send(&conn, &fds)?;
    conn.set_read_timeout(Some(WAIT + PEER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = (&conn).take(512).read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    if answer.trim_end() != "ok" {
        return Err(match answer.trim() {
            "" => "the new process did not confirm it took the sockets".into(),
            a => format!("the new process answered: {}", crate::api::printable(a)),
        });
    }
    Ok(fds.len())
}

/// Connect to the new process's socket, waiting up to [`WAIT`] for it to listen; the file
/// and the listening process must be of a trusted user.
fn connect_trusted(sock: &Path) -> Result<UnixStream, String> {
    let end = Instant::now() + WAIT;
    let conn = loop {
        let late = Instant::now() >= end;
        match std::fs::symlink_metadata(sock) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(format!("{} is not a socket", sock.display()))
            }
            Ok(m) if !trusted(m.uid()) => {
                return Err(format!(
                    "{} belongs to uid {}, not to tidegate's user",
                    sock.display(),
                    m.uid()
                ))
            }
            Ok(_) => match UnixStream::connect(sock) {
                Ok(c) => break c,
                Err(e) if !late && retryable(&e) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(format!(
                        "nobody listens on {} (a socket file left by a process that ended?): start the new process with --upgrade",
                        sock.display()
                    ))
                }
                Err(e) => return Err(format!("{}: {e}", sock.display())),
            },
            Err(_) if !late => {}
            Err(e) => {
                return Err(format!(
                    "{}: {e} (start the new process with --upgrade first)",
                    sock.display()
                ))
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let peer = socket::getsockopt(&conn, sockopt::PeerCredentials).map_err(|e| e.to_string())?;
    if !trusted(peer.uid()) {
        return Err(format!(
            "the process listening on {} is pid {} uid {}, not tidegate's user (uid {})",
            sock.display(),
            peer.pid(),
            peer.uid(),
            euid()
        ));
    }
    if peer.pid() == std::process::id() as i32 {
        return Err("the socket is this process's own".into());
    }
    Ok(conn)
}

fn retryable(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    matches!(e.kind(), ConnectionRefused | NotFound)
}

/// This process's listening sockets bound to `addrs` (duplicated; one per address), found
/// among its open descriptors.
fn own_listeners(addrs: &[SocketAddr]) -> Vec<(SocketAddr, OwnedFd)> {
    let mut found: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(raw) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else {
            continue;
        };
        let is_socket =
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        // A duplicate of our own, checked on the duplicate: a descriptor closed and reused
        // meanwhile is checked as what it now is.
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on any number is safe; it fails on a closed one.
        let dup = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: `dup` was just returned by fcntl and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        let s = socket2::SockRef::from(&fd);
        let Some(addr) = s.local_addr().ok().and_then(|a| a.as_socket()) else {
            continue;
        };
        let listening = s.is_listener().unwrap_or(false)
            && s.r#type().is_ok_and(|t| t == socket2::Type::STREAM);
        let wanted = addrs.iter().find(|a| same_addr(**a, addr));
        if let Some(want) = wanted.filter(|_| listening) {
            if !found.iter().any(|(a, _)| a == want) {
                found.push((*want, fd));
            }
        }
    }
    found
}

/// Send pingora's hand-off message: the addresses, space-separated, with the descriptors.
fn send(conn: &UnixStream, fds: &[(SocketAddr, OwnedFd)]) -> Result<(), String> {
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
fn connect_within(path: &Path, wait: Duration) -> Result<UnixStream, String> {
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

/// Read one message with its descriptors (owned here: closed on every path out).
fn receive_fds(fd: RawFd, payload: &mut [u8]) -> Result<(Vec<OwnedFd>, usize), String> {
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
