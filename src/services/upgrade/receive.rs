//! The new process (`--upgrade`): wait for the running tidegate, check what it sends, feed
//! pingora's bootstrap, and tell the sender `ok` once this process has started.

use std::{
    io::Write,
    net::SocketAddr,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::socket::{self, sockopt};

use super::wire::*;

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
