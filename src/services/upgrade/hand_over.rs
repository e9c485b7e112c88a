//! The running process, at SIGQUIT: hand its listening sockets to the new one and wait for
//! it to take them.

use std::{
    io::Read,
    net::SocketAddr,
    os::{
        fd::{FromRawFd, OwnedFd, RawFd},
        unix::{
            fs::{FileTypeExt, MetadataExt},
            net::UnixStream,
        },
    },
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::socket::{self, sockopt};

use super::wire::*;

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
