//! The graceful upgrade's listening sockets go to tidegate's own user only. A hostile local
//! user (the test runs a listener as `nobody`) who takes the upgrade socket in a shared
//! sticky directory gets nothing at SIGQUIT, and the proxy keeps serving; the default
//! socket lives in a directory of mode 0700, and the upgrade works there; a directory other
//! users can write (not sticky) refuses to start.

mod common;

use std::{
    os::unix::{fs::PermissionsExt, process::CommandExt},
    process::{Command, Stdio},
    time::Duration,
};

use common::*;

fn sidecar(app: std::net::SocketAddr, extra: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml"))
        .unwrap()
        .variant("0.0.0.0:8080", "{listen}")
        .variant("127.0.0.1:9901", "{admin}")
        .variant("127.0.0.1:3000", &app.to_string())
        .variant("routes:", &format!("{extra}\nroutes:"))
}

/// Whether the test can act as another local user (root); under `CI` it must.
fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root || std::env::var_os("CI").is_none(),
        "CI is set but the tests do not run as root (needed to act as another local user)"
    );
    root
}

/// A listener on `path` run as uid 65534 that prints how many descriptors it received.
const THIEF: &str = r#"
import array, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
s.settimeout(float(sys.argv[2]))
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

#[tokio::test]
async fn another_user_on_the_upgrade_socket_gets_no_listening_socket() {
    if !is_root() {
        eprintln!("SKIPPED: acting as another local user needs root (CI runs as root)");
        return;
    }
    let app = TestBackend::start("app").await;
    // A shared directory like /tmp: world-writable, sticky.
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.path().join("tidegate_upgrade.sock");
    let extra = format!("server: {{ upgrade_sock: {} }}", sock.display());
    let mut tg = Tidegate::start(&sidecar(app.addr, &extra)).await;
    let thief = Command::new("python3")
        .args(["-c", THIEF])
        .arg(&sock)
        .arg("4")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    wait_for("the thief listening", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    tg.signal(libc::SIGQUIT);
    wait_for("the refusal logged", Duration::from_secs(10), || async {
        tg.logs().contains("graceful upgrade refused").then_some(())
    })
    .await;
    // Still serving, still ready, on the same process.
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.status, 200);
    let r = get(&tg.admin_url("/readyz")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(tg.child.try_wait().unwrap().is_none(), "the proxy exited");
    let out = tokio::task::spawn_blocking(move || thief.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fds=0"),
        "the other user received sockets: {text}"
    );
}

/// The socket file is made to look like ours (chowned to root) while another user listens:
/// the relay's `SO_PEERCRED` check still refuses to send.
#[tokio::test]
async fn the_peer_credentials_are_checked_before_sending() {
    if !is_root() {
        eprintln!("SKIPPED: acting as another local user needs root (CI runs as root)");
        return;
    }
    let app = TestBackend::start("app").await;
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = shared.path().join("up.sock");
    let extra = format!("server: {{ upgrade_sock: {} }}", sock.display());
    let tg = Tidegate::start(&sidecar(app.addr, &extra)).await;
    let thief = Command::new("python3")
        .args(["-c", THIEF])
        .arg(&sock)
        .arg("15")
        .uid(65534)
        .gid(65534)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    wait_for("the thief listening", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    std::os::unix::fs::lchown(&sock, Some(0), Some(0)).unwrap();
    tg.signal(libc::SIGQUIT);
    wait_for("the relay's refusal", Duration::from_secs(15), || async {
        tg.logs().contains("not tidegate's user").then_some(())
    })
    .await;
    let out = tokio::task::spawn_blocking(move || thief.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fds=0"),
        "the other user received sockets: {text}"
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
