//! The graceful upgrade's hand-off cannot be taken over (issue 32, item 1).
//!
//! - In a state directory of mode 0755 (Docker's `/var/lib/tidegate`, systemd's
//!   `StateDirectory=`), another local user trying to connect to the new process's socket
//!   all along never reaches it: the default socket is in `upgrade/`, created 0700.
//! - A peer of another user that does reach the socket (its directory opened up after the
//!   start) is refused by the new process, which goes on waiting for the real sender.
//! - A sender of the right user with wrong descriptors makes the new process refuse to
//!   start; the old one keeps serving and stays ready.
//! - A socket file left by a process that ended is not taken for a new process at SIGQUIT.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;

/// Another local user (uid 65534) trying to be the first to connect to `path` for `secs`
/// seconds. Connected, it hands over a listening socket of its own as the address `claim`
/// and prints the answer. Prints how often it connected and the errors it met.
const INTRUDER: &str = r#"
import array, os, socket, sys, time
path, secs, claim = sys.argv[1], float(sys.argv[2]), sys.argv[3]
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen(8)
os.setgid(65534)
os.setuid(65534)
print("ready", flush=True)
end = time.time() + secs
connected, errors = 0, set()
while time.time() < end:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.connect(path)
    except OSError as e:
        errors.add(e.errno)
        c.close()
        time.sleep(0.005)
        continue
    connected += 1
    fds = array.array("i", [own.fileno()])
    try:
        c.sendmsg([claim.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        c.settimeout(3)
        print("answer=%r" % c.recv(200), flush=True)
    except OSError as e:
        print("send error %s" % e, flush=True)
    break
print("connected=%d errors=%s" % (connected, sorted(errors)), flush=True)
"#;

fn intruder(path: &Path, secs: &str, claim: &str) -> Child {
    let mut c = Command::new("python3")
        .args(["-c", INTRUDER])
        .arg(path)
        .args([secs, claim])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    // Wait for "ready" (it dropped to uid 65534).
    use std::io::Read;
    let out = c.stdout.as_mut().expect("stdout");
    let mut first = [0u8; 6];
    out.read_exact(&mut first).expect("intruder ready");
    assert_eq!(&first, b"ready\n");
    c
}

async fn output(c: Child) -> String {
    let out = tokio::task::spawn_blocking(move || c.wait_with_output().expect("wait"))
        .await
        .expect("join");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `tidegate run --upgrade` on `old`'s config, with a log of its own (the old process
/// writes its log at its own offset: one file for both would lose lines).
struct NewProcess {
    child: Child,
    log: PathBuf,
}

impl NewProcess {
    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NewProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- new process log ---\n{}", self.logs());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_new(old: &Tidegate) -> NewProcess {
    let n = NEW.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = old.dir.path().join(format!("new-{n}.log"));
    let file = std::fs::File::create(&log).expect("log");
    let child = Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config)
        .env("TIDEGATE_LOG", "info")
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    NewProcess { child, log }
}

static NEW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

async fn exit_code(mut new: NewProcess) -> (Option<i32>, String) {
    let mut child = std::mem::replace(&mut new.child, Command::new("true").spawn().expect("true"));
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    (status.code(), new.logs())
}

async fn wait_socket(sock: &Path) {
    wait_for(
        "the new process's socket",
        Duration::from_secs(15),
        || async { sock.exists().then_some(()) },
    )
    .await;
}

async fn serves_and_ready(tg: &Tidegate) {
    let r = get(&tg.url("/")).await.expect("request");
    assert_eq!(r.status, 200, "still serving");
    let r = get(&tg.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(r.status, 200, "still ready");
}

/// A proxy whose state file is in a directory of mode 0755, like Docker's and systemd's.
async fn proxy_in_open_state_dir(app: std::net::SocketAddr) -> (tempfile::TempDir, Tidegate) {
    let st = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(st.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let extra = format!("state_file: {}", st.path().join("state.json").display());
    let tg = Tidegate::start(&sidecar_yaml(app, &extra)).await;
    (st, tg)
}

/// The reproduction from the review: a user of uid 65534 keeps trying to connect first to
/// the new process's socket, by its default place next to a state file in a 0755
/// directory. It never reaches it; the upgrade completes to the real new process.
#[tokio::test]
async fn another_user_never_reaches_the_socket_in_a_0755_state_directory() {
    if !is_root("acting as another local user") {
        eprintln!("SKIPPED: acting as another local user needs root (CI runs as root)");
        return;
    }
    let app = TestBackend::start("app").await;
    let (st, mut old) = proxy_in_open_state_dir(app.addr).await;
    let dir = st.path().join("upgrade");
    let meta = std::fs::symlink_metadata(&dir).expect("upgrade/ exists");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "upgrade/ is private"
    );
    let sock = dir.join("upgrade.sock");
    let thief = intruder(&sock, "6", &old.listen.to_string());
    let new = start_new(&old);
    wait_socket(&sock).await;
    old.signal(libc::SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    assert!(
        new.logs()
            .contains("listening sockets received from the running tidegate"),
        "{}",
        new.logs()
    );
    let r = get(&old.url("/")).await.expect("the new process serves");
    assert_eq!(r.status, 200);
    let text = output(thief).await;
    assert!(
        text.contains("connected=0"),
        "the intruder connected: {text}"
    );
    assert!(text.contains("13"), "EACCES expected: {text}");
    drop(new);
}

/// The new process's socket and its directory are opened to others after its start (a
/// mistake, or a shared mount): the first connection, another user's, is refused, and the
/// new process goes on waiting for the running tidegate and takes its sockets.
#[tokio::test]
async fn the_first_connection_does_not_win_a_peer_of_another_user_is_refused() {
    if !is_root("acting as another local user") {
        eprintln!("SKIPPED: acting as another local user needs root (CI runs as root)");
        return;
    }
    let app = TestBackend::start("app").await;
    let (st, mut old) = proxy_in_open_state_dir(app.addr).await;
    let dir = st.path().join("upgrade");
    let sock = dir.join("upgrade.sock");
    let new = start_new(&old);
    wait_socket(&sock).await;
    // Opened up after the new process checked its directory: both the directory and the
    // socket file (as pingora's own socket is, mode 0666).
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let thief = intruder(&sock, "20", &old.listen.to_string());
    wait_for("the intruder refused", Duration::from_secs(20), || async {
        new.logs()
            .contains("a connection from another user was refused")
            .then_some(())
    })
    .await;
    let text = output(thief).await;
    assert!(text.contains("connected=1"), "{text}");
    assert!(
        !text.contains("ok"),
        "the intruder was told its sockets were taken: {text}"
    );
    serves_and_ready(&old).await;
    old.signal(libc::SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    let r = get(&old.url("/")).await.expect("the new process serves");
    assert_eq!(r.status, 200);
    drop(new);
}

/// A proxy with its upgrade socket in a private directory of the test's own.
async fn proxy_with_private_socket(app: std::net::SocketAddr) -> (tempfile::TempDir, Tidegate) {
    let private = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let extra = format!(
        "server: {{ upgrade_sock: {} }}",
        private.path().join("up.sock").display()
    );
    let tg = Tidegate::start(&sidecar_yaml(app, &extra)).await;
    (private, tg)
}

/// Send `fd` as the listening socket of `claim` to the process listening on `sock`; the
/// answer it gives.
fn feed(sock: &Path, claim: &str, fd: std::os::fd::RawFd) -> String {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::{io::Read, os::fd::AsRawFd};
    let mut c = std::os::unix::net::UnixStream::connect(sock).expect("connect");
    sendmsg::<()>(
        c.as_raw_fd(),
        &[std::io::IoSlice::new(claim.as_bytes())],
        &[ControlMessage::ScmRights(&[fd])],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg");
    c.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut answer = String::new();
    let _ = c.read_to_string(&mut answer);
    answer
}

/// A process of tidegate's own user that is not the old proxy feeds the new one: a socket
/// bound elsewhere, then one that does not listen. Each time the new process refuses to
/// start, and the old one keeps serving and stays ready; SIGQUIT then finds nobody
/// listening and is refused. A real upgrade still works afterwards.
#[tokio::test]
async fn wrong_descriptors_make_the_new_process_refuse_and_the_old_keeps_serving() {
    let app = TestBackend::start("app").await;
    let (private, mut old) = proxy_with_private_socket(app.addr).await;
    let sock: PathBuf = private.path().join("up.sock");
    let claim = old.listen.to_string();

    // Bound to another port.
    let elsewhere = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let new = start_new(&old);
    wait_socket(&sock).await;
    use std::os::fd::AsRawFd;
    let answer = feed(&sock, &claim, elsewhere.as_raw_fd());
    assert!(answer.starts_with("refused"), "{answer}");
    assert!(answer.contains("bound to"), "{answer}");
    let (code, log) = exit_code(new).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("refused the sockets sent by pid"), "{log}");
    serves_and_ready(&old).await;

    // Not listening: a TCP socket bound to a port of its own, never listened on.
    let idle =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    idle.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .expect("bind");
    let port = idle
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet")
        .port();
    let new = start_new(&old);
    wait_socket(&sock).await;
    let answer = feed(&sock, &format!("127.0.0.1:{port}"), idle.as_raw_fd());
    assert!(answer.contains("not listening"), "{answer}");
    let (code, log) = exit_code(new).await;
    assert_eq!(code, Some(1), "{log}");

    // Nobody waits now: SIGQUIT is refused and the proxy goes on.
    old.signal(libc::SIGQUIT);
    wait_for("the refusal", Duration::from_secs(20), || async {
        old.logs()
            .contains("SIGQUIT: graceful upgrade refused")
            .then_some(())
    })
    .await;
    serves_and_ready(&old).await;

    // The real thing still works.
    let new = start_new(&old);
    wait_socket(&sock).await;
    old.signal(libc::SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    let r = get(&old.url("/")).await.expect("the new process serves");
    assert_eq!(r.status, 200);
    drop(new);
}

/// A new process killed while it waited leaves its socket file: at SIGQUIT nobody listens
/// there, the upgrade is refused, and the proxy keeps serving and stays ready.
#[tokio::test]
async fn a_stale_socket_file_is_refused_at_sigquit() {
    let app = TestBackend::start("app").await;
    let (private, old) = proxy_with_private_socket(app.addr).await;
    let sock = private.path().join("up.sock");
    let mut waiting = start_new(&old);
    wait_socket(&sock).await;
    waiting.child.kill().expect("kill -9");
    waiting.child.wait().expect("wait");
    assert!(sock.exists(), "kill -9 leaves the socket file");
    old.signal(libc::SIGQUIT);
    wait_for("the refusal", Duration::from_secs(20), || async {
        old.logs().contains("nobody listens on").then_some(())
    })
    .await;
    serves_and_ready(&old).await;
}

/// An upgrade socket in a directory other users can enter refuses to start.
#[tokio::test]
async fn a_directory_others_can_enter_refuses_to_start() {
    let app = TestBackend::start("app").await;
    let open = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let extra = format!(
        "server: {{ upgrade_sock: {} }}",
        open.path().join("up.sock").display()
    );
    let mut tg = Tidegate::spawn(&sidecar_yaml(app.addr, &extra), &[]);
    let status = tg.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    assert!(tg.logs().contains("must be private"), "{}", tg.logs());
}

/// The new process takes the sockets, then fails to start (its TLS certificate file is gone
/// by then): the running one is told so, not `ok`, and keeps serving and stays ready.
#[tokio::test]
async fn a_new_process_that_fails_after_taking_the_sockets_leaves_the_old_serving() {
    let app = TestBackend::start("app").await;
    let private = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let ca = common::tls::Ca::new();
    let (cert, key) = ca.issue(&["localhost"], 30);
    let (cf, kf) = (private.path().join("c.pem"), private.path().join("k.pem"));
    std::fs::write(&cf, cert).expect("cert");
    std::fs::write(&kf, key).expect("key");
    let tls_port = free_port();
    let yaml = format!(
        r#"
listeners:
  - {{ name: public, address: "{{listen}}" }}
  - {{ name: tls, address: "127.0.0.1:{tls_port}", tls: {{ cert: "{}", key: "{}" }} }}
admin: {{ address: "{{admin}}" }}
server: {{ upgrade_sock: {} }}
routes:
  - name: app
    split: {{ app: 1 }}
pools:
  app:
    backends: [{{ address: "{}" }}]
"#,
        cf.display(),
        kf.display(),
        private.path().join("up.sock").display(),
        app.addr
    );
    let old = Tidegate::start(&yaml).await;
    let sock = private.path().join("up.sock");
    let new = start_new(&old);
    wait_socket(&sock).await;
    // Read at its start (checked), gone when it builds its listeners.
    std::fs::remove_file(&cf).expect("rm cert");
    old.signal(libc::SIGQUIT);
    let (code, log) = exit_code(new).await;
    assert_eq!(code, Some(1), "{log}");
    // It says it did not start, or (when it exits before its word arrives) nothing: either
    // way no `ok`, and the old process refuses the upgrade.
    wait_for("the refusal", Duration::from_secs(20), || async {
        let logs = old.logs();
        (logs.contains("graceful upgrade refused")
            && (logs.contains("the new process did not start")
                || logs.contains("the new process did not confirm")))
        .then_some(())
    })
    .await;
    serves_and_ready(&old).await;
}

/// A listener the new config adds is held by someone else: the new process refuses before
/// `ok` (pingora would only log the failed bind), and the old one keeps serving.
#[tokio::test]
async fn a_new_listener_that_cannot_be_bound_refuses_the_upgrade() {
    let app = TestBackend::start("app").await;
    let (private, old) = proxy_with_private_socket(app.addr).await;
    let sock = private.path().join("up.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let yaml = std::fs::read_to_string(&old.config).expect("config");
    let added = yaml.replacen(
        "listeners:",
        &format!("listeners:\n  - {{ name: extra, address: \"127.0.0.1:{port}\" }}"),
        1,
    );
    assert_ne!(added, yaml, "listeners: in the config");
    std::fs::write(&old.config, added).expect("config");
    let new = start_new(&old);
    wait_socket(&sock).await;
    old.signal(libc::SIGQUIT);
    let (code, log) = exit_code(new).await;
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("cannot be bound"), "{log}");
    wait_for("the refusal", Duration::from_secs(20), || async {
        old.logs()
            .contains("SIGQUIT: graceful upgrade refused")
            .then_some(())
    })
    .await;
    serves_and_ready(&old).await;
    drop(taken);
}
