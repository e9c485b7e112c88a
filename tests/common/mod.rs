//! Shared integration-test harness: real backends on 127.0.0.1, the real `tidegate` binary
//! spawned with a temp config, readiness polled with a deadline, processes killed on drop.
#![allow(dead_code)]

pub mod acme;
pub mod cdp;
pub mod client;
pub mod docker;
pub mod fleet;
pub mod grpc;
pub mod postgres;
pub mod recorder;
pub mod spool;
pub mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

pub use client::*;

/// The demo app (part of the binary), compiled into the tests as well.
#[path = "../../src/demo/backend.rs"]
pub mod backend;

use backend::Backend;

/// Config variants: `text.variant(from, to)` is `replace`, failing the test when `from` is
/// not in the text (a variant equal to its base would let a test pass for nothing).
pub trait Variant {
    fn variant(&self, from: &str, to: &str) -> String;
}

impl Variant for str {
    fn variant(&self, from: &str, to: &str) -> String {
        assert!(
            self.contains(from),
            "variant: {from:?} is not in the text:\n{self}"
        );
        self.replace(from, to)
    }
}

/// The shipped `conf/sidecar.yaml` with test addresses for `{listen}`, `{admin}` and the app,
/// and `extra` top-level keys before `routes:`.
pub fn sidecar_yaml(app: SocketAddr, extra: &str) -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml"))
        .expect("read conf/sidecar.yaml")
        .variant("0.0.0.0:8080", "{listen}")
        .variant("127.0.0.1:9901", "{admin}")
        .variant("127.0.0.1:3000", &app.to_string())
        .variant("routes:", &format!("{extra}\nroutes:"))
}

/// A free TCP port on 127.0.0.1 (bound then released), never one this test process has
/// handed out before: the kernel may give a released port again soon, and tidegate binds
/// with SO_REUSEPORT, so two proxies of concurrent tests would silently share a port.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Poll `f` until it returns `Some` or `deadline` passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An in-process backend on its own 127.0.0.1 port, stopped on drop.
pub struct TestBackend {
    pub app: Arc<Backend>,
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestBackend {
    /// Start a backend named `name`.
    pub async fn start(name: &str) -> Self {
        Self::start_at(name, "127.0.0.1").await
    }

    /// Start one on another loopback address (`127.0.0.2`: "another host").
    pub async fn start_at(name: &str, ip: &str) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let app = Backend::new(name);
        let task = tokio::spawn(app.clone().serve(listener));
        Self { app, addr, task }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `tidegate run` process with its temp config.
pub struct Tidegate {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

/// Whether the test runs as root, which `why` needs (acting as another local user, a mount
/// namespace); under `CI` it must.
pub fn is_root(why: &str) -> bool {
    // SAFETY: geteuid(2) cannot fail.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root || std::env::var_os("CI").is_none(),
        "CI is set but the tests do not run as root (needed for {why})"
    );
    root
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_tidegate")
}

impl Tidegate {
    /// Spawn with `yaml`, where `{listen}` and `{admin}` are replaced by free ports.
    /// Waits for `/readyz` to answer 200.
    pub async fn start(yaml: &str) -> Self {
        let t = Self::spawn(yaml, &[]);
        t.wait_ready().await;
        t
    }

    /// Spawn without waiting (for startup-failure tests). `env` is added to the environment.
    pub fn spawn(yaml: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_to(yaml, env, None)
    }

    /// Start with standard output on a pipe the test reads (or not); stderr goes to the log.
    pub async fn start_piped(yaml: &str) -> (Self, std::process::ChildStdout) {
        let mut t = Self::spawn_to(yaml, &[], Some(Stdio::piped()));
        let out = t.child.stdout.take().expect("piped stdout");
        t.wait_ready().await;
        (t, out)
    }

    /// Spawn as the last arguments of `wrapper` (`unshare … sh -c '…; exec "$@"' …`), with
    /// `{listen}` and `{admin}` replaced by free ports; waits for readiness.
    pub async fn start_wrapped(yaml: &str, wrapper: &[String]) -> Self {
        let t = Self::spawn_full(yaml, &[], None, wrapper);
        t.wait_ready().await;
        t
    }

    fn spawn_to(yaml: &str, env: &[(&str, &str)], stdout: Option<Stdio>) -> Self {
        Self::spawn_full(yaml, env, stdout, &[])
    }

    fn spawn_full(
        yaml: &str,
        env: &[(&str, &str)],
        stdout: Option<Stdio>,
        wrapper: &[String],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("tidegate.yaml");
        std::fs::write(&config, fill(yaml, listen, admin)).expect("write config");
        let log = dir.path().join("tidegate.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .env("TIDEGATE_LOG", "info")
            .stdout(stdout.unwrap_or_else(|| logf.try_clone().expect("log clone").into()))
            .stderr(logf)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tidegate");
        Self {
            child,
            dir,
            config,
            log,
            listen,
            admin,
        }
    }

    /// Stop with SIGTERM (waiting for exit), then start again on the same ports, config
    /// and log file (appended), and wait for readiness.
    pub async fn restart(&mut self) {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20)).await;
        self.respawn().await;
    }

    /// SIGKILL, then start again on the same ports, config and log file (appended), and
    /// wait for readiness: a crash and a supervisor's restart.
    pub async fn kill9_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn().await;
    }

    /// Start the process again (it has exited) with the same config and log file
    /// (appended), and wait for readiness.
    async fn respawn(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Command::new(binary())
            .arg("run")
            .arg("-c")
            .arg(&self.config)
            .env("TIDEGATE_LOG", "info")
            .stdout(logf.try_clone().expect("log clone"))
            .stderr(logf)
            .stdin(Stdio::null())
            .spawn()
            .expect("respawn tidegate");
        self.wait_ready().await;
    }

    /// Base URL of the client listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Wait until `/readyz` says 200.
    pub async fn wait_ready(&self) {
        let url = self.admin_url("/readyz");
        wait_for("tidegate /readyz", Duration::from_secs(30), || {
            let url = url.clone();
            async move { matches!(get(&url).await, Ok(r) if r.status == 200).then_some(()) }
        })
        .await;
    }

    /// The process log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The access log's JSON lines so far (stdout shares the log file with stderr).
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        access_lines_of(&self.logs())
    }

    /// Wait (10 s at most) for an access log line that `pred` accepts.
    pub async fn access_line(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(
            &format!("access log line: {what}"),
            Duration::from_secs(10),
            || {
                let found = self.access_lines().into_iter().find(|l| pred(l));
                async move { found }
            },
        )
        .await
    }

    /// Replace the config the way an editor does: write a temp file, then rename over it.
    pub fn rewrite_config(&self, yaml: &str) {
        let tmp = self.dir.path().join(".tidegate.yaml.tmp");
        std::fs::write(&tmp, fill(yaml, self.listen, self.admin)).expect("write tmp config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Current config generation from the status API.
    pub async fn generation(&self) -> u64 {
        let r = get(&self.admin_url("/api/v1/status"))
            .await
            .expect("status");
        r.json()["generation"].as_u64().expect("generation")
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for the process to exit, up to `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            if Instant::now() > end {
                panic!(
                    "tidegate did not exit within {deadline:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Tidegate {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The proxy's side of a failure is usually the key to it.
            let log = self.logs();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- tidegate log (last 40 lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// JSON access log lines in a log text (tidegate's own lines are not JSON).
pub fn access_lines_of(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| l.starts_with("{\"time\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad access line ({e}): {l}")))
        .collect()
}

fn fill(yaml: &str, listen: SocketAddr, admin: SocketAddr) -> String {
    yaml.replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
}

/// Run `tidegate check -c FILE`: (exit code, stdout + stderr).
pub fn check(path: &Path) -> (i32, String) {
    let out = Command::new(binary())
        .args(["check", "-c"])
        .arg(path)
        .output()
        .expect("run tidegate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A backend as a separate `tidegate backend` process, for tests that kill it mid-stream.
pub struct BackendProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl BackendProcess {
    /// Start one named `name` and wait until it accepts connections.
    pub async fn start(name: &str) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_on(name, addr).await
    }

    /// Start one on a given address (to bring a killed backend back on its port).
    pub async fn start_on(name: &str, addr: SocketAddr) -> Self {
        let child = Command::new(binary())
            .args(["backend", "--listen", &addr.to_string(), "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn backend");
        wait_for(
            "backend process listening",
            Duration::from_secs(10),
            || async { tokio::net::TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await;
        Self { child, addr }
    }

    /// SIGKILL: every connection is reset by the kernel.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for BackendProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What admin calls can change, without the counters that move by themselves (connect
/// failures, health, ages): generation, maintenance, each route's split, override and ramp,
/// each pool's state and members.
pub fn control_state(s: &serde_json::Value) -> serde_json::Value {
    let pools: serde_json::Map<String, serde_json::Value> = s["pools"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, p)| {
                    let backends: Vec<_> = p["backends"]
                        .as_array()
                        .map(|bs| {
                            bs.iter()
                                .map(|b| {
                                    serde_json::json!([
                                        b["id"],
                                        b["address"],
                                        b["weight"],
                                        b["state"]
                                    ])
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    let v = serde_json::json!({
                        "state": p["state"],
                        "backends_override": p["backends_override"],
                        "backends": backends,
                    });
                    (name.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    let routes: Vec<_> = s["routes"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| serde_json::json!([r["name"], r["split"], r["override"], r["ramp"]]))
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "generation": s["generation"],
        "maintenance": s["maintenance"],
        "routes": routes,
        "pools": pools,
    })
}

/// Poll the status API until `f(status)` holds.
pub async fn wait_status(
    tg: &Tidegate,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = tg.admin_url("/api/v1/status");
    wait_for(what, Duration::from_secs(10), || {
        let url = url.clone();
        let f = &f;
        async move {
            let s = get(&url).await.ok()?.json();
            f(&s).then_some(s)
        }
    })
    .await
}

/// Read one HTTP/1.1 request (its head, and a `Content-Length` body) from `conn`, keeping any
/// bytes of the next one in `buf`. The head as text; `None` when the connection ends first.
pub async fn read_request(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    async fn more(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<()> {
        let mut chunk = [0u8; 16384];
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    }
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        more(conn, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        more(conn, buf).await?;
    }
    buf.drain(..end + len);
    Some(head)
}

/// Run the binary with `args` (a client verb): (exit code, stdout + stderr).
pub async fn run_cli(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let o = Command::new(binary())
            .args(&args)
            .output()
            .expect("run tidegate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code().unwrap_or(-1), text)
    })
    .await
    .expect("cli task")
}

/// The first route's `picking` once `done` accepts its pick counts (a request is counted
/// as it ends, just after its response: read after quiescence, from one snapshot).
pub async fn wait_picking(
    tg: &Tidegate,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let url = tg.admin_url("/api/v1/status");
    wait_for("the pick counts", Duration::from_secs(10), || {
        let url = url.clone();
        let found = async move {
            let s = get(&url).await.ok()?.json();
            Some(s["routes"][0]["picking"].clone())
        };
        async { found.await.filter(|p| done(&p["picks"])) }
    })
    .await
}
