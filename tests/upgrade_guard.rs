//! The graceful upgrade's listening sockets go to tidegate's own user only. A directory other
//! users can write (`/tmp`-like sticky ones included) refuses to start. In a private one, a
//! listener of another user (the test, as root, plants one running as `nobody`) gets
//! nothing at SIGQUIT: refused before the hand-off when the socket file is foreign (the
//! proxy keeps serving), or by the relay's `SO_PEERCRED` check when the file looks like
//! ours. The default socket lives in a directory of mode 0700, and the upgrade works there.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

fn sidecar(app: std::net::SocketAddr, extra: &str) -> String {
    sidecar_yaml(app, extra)
}

/// A listener on `path` run as uid 65534 that prints how many descriptors it received.
const THIEF: &str = r#"
import array, os, socket, sys
path, timeout, owner = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)                  # as root: the private directory admits only its owner
os.chown(path, owner, owner)  # the socket file's owner, as the proxy's check sees it
os.setgid(65534)
os.setuid(65534)              # the listener (SO_PEERCRED) is `nobody`
s.listen(8)
s.settimeout(timeout)
print("listening", flush=True)
try:
    c, _ = s.accept()
except socket.timeout:
    print("fds=0", flush=True)
    sys.exit(0)
fds = array.array("i")
msg, anc, flags, addr = c.recvmsg(2048, socket.CMSG_LEN(32 * fds.itemsize))
for level, kind, data in anc:
    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
        fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
print("fds=%d" % len(fds), flush=True)
"#;

/// As root only: a proxy of the shipped sidecar config whose upgrade socket is
/// `up.sock` in a private directory (the backend and directory live as long as it does).
async fn proxy_with_private_socket() -> Option<(TestBackend, tempfile::TempDir, Tidegate)> {
    if !is_root("acting as another local user") {
        eprintln!("SKIPPED: acting as another local user needs root (CI runs as root)");
        return None;
    }
    let app = TestBackend::start("app").await;
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let extra = format!(
        "server: {{ upgrade_sock: {} }}",
        private.path().join("up.sock").display()
    );
    let tg = Tidegate::start(&sidecar(app.addr, &extra)).await;
    Some((app, private, tg))
}

/// Start the thief on `sock` (file owned by `owner`) and wait until it listens.
async fn plant_thief(sock: &std::path::Path, owner: u32, timeout_s: &str) -> std::process::Child {
    let thief = Command::new("python3")
        .args(["-c", THIEF])
        .arg(sock)
        .args([timeout_s, &owner.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    wait_for("the thief listening", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    thief
}

async fn fds_received(thief: std::process::Child) -> String {
    let out = tokio::task::spawn_blocking(move || thief.wait_with_output().unwrap())
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The socket file belongs to another user: the upgrade is refused before the hand-off,
/// and the proxy keeps serving.
#[tokio::test]
async fn a_foreign_upgrade_socket_is_refused_and_the_proxy_keeps_serving() {
    let Some((_app, private, tg)) = proxy_with_private_socket().await else {
        return;
    };
    let sock = private.path().join("up.sock");
    let thief = plant_thief(&sock, 65534, "4").await;
    tg.signal(libc::SIGQUIT);
    wait_for("the refusal logged", Duration::from_secs(10), || async {
        tg.logs().contains("graceful upgrade refused").then_some(())
    })
    .await;
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.status, 200);
    let r = get(&tg.admin_url("/readyz")).await.unwrap();
    assert_eq!(r.status, 200, "still ready");
    let text = fds_received(thief).await;
    assert!(
        text.contains("fds=0"),
        "the other user received sockets: {text}"
    );
}

/// The socket file is made to look like ours (root's) while `nobody` listens: the relay's
/// `SO_PEERCRED` check still refuses to send.
#[tokio::test]
async fn the_peer_credentials_are_checked_before_sending() {
    let Some((_app, private, tg)) = proxy_with_private_socket().await else {
        return;
    };
    let sock = private.path().join("up.sock");
    let thief = plant_thief(&sock, 0, "15").await;
    tg.signal(libc::SIGQUIT);
    wait_for("the relay's refusal", Duration::from_secs(15), || async {
        tg.logs().contains("not tidegate's user").then_some(())
    })
    .await;
    let text = fds_received(thief).await;
    assert!(
        text.contains("fds=0"),
        "the other user received sockets: {text}"
    );
}

/// A shared directory like /tmp (world-writable, sticky) refuses to start: another user
/// could take the socket's name first, or feed the new process sockets of their own.
#[tokio::test]
async fn a_shared_sticky_directory_refuses_to_start() {
    let app = TestBackend::start("app").await;
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let extra = format!(
        "server: {{ upgrade_sock: {} }}",
        shared.path().join("tidegate_upgrade.sock").display()
    );
    let mut tg = Tidegate::spawn(&sidecar(app.addr, &extra), &[]);
    let status = tg.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        tg.logs().contains("writable by other users"),
        "{}",
        tg.logs()
    );
}

#[tokio::test]
async fn the_default_socket_is_private_and_the_upgrade_works_there() {
    let app = TestBackend::start("app").await;
    let mut old = Tidegate::start(&sidecar(app.addr, "")).await;
    // SAFETY: geteuid(2) cannot fail.
    let dir = std::path::PathBuf::from(format!("/tmp/tidegate-{}", unsafe { libc::geteuid() }));
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&old.log)
        .unwrap();
    let mut new = Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sock = dir.join("upgrade.sock");
    wait_for("upgrade socket", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    old.signal(libc::SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    assert!(old
        .logs()
        .contains("listening sockets sent to the upgraded process"));
    let r = get(&old.url("/")).await.unwrap();
    assert_eq!(r.status, 200, "the new process serves");
    assert!(new.try_wait().unwrap().is_none());
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test]
async fn a_directory_others_can_write_refuses_to_start() {
    let app = TestBackend::start("app").await;
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let extra = format!("state_file: {}", open.path().join("state.json").display());
    let mut tg = Tidegate::spawn(&sidecar(app.addr, &extra), &[]);
    let status = tg.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    assert!(
        tg.logs().contains("writable by other users"),
        "{}",
        tg.logs()
    );
}
