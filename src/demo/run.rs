//! `tidegate demo`: blue and green app instances (in-process) with tidegate (a child process
//! of this binary) in front, on given or free ports. Prints what to try; `--script` walks a
//! whole rollout — SSE client on blue, shift to green in steps, drain blue with wait, drained
//! once the stream ends — and exits 0.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use super::backend::Backend;
use tidegate::client::{self, Admin, DrainArgs, ShiftArgs};

/// Removes the demo's temp directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills the proxy child on drop.
struct Proxy(Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn listen(port: u16) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot bind 127.0.0.1:{port}: {e}"))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

fn pick(port: u16) -> Result<u16, String> {
    if port == 0 {
        free_port()
    } else {
        Ok(port)
    }
}

/// Run the demo. Returns the exit code.
pub async fn run(script: bool, port: u16, admin_port: u16) -> Result<u8, String> {
    let (port, admin_port) = (pick(port)?, pick(admin_port)?);
    let blue = Backend::new("blue");
    let green = Backend::new("green");
    let (bl, gl) = (listen(0).await?, listen(0).await?);
    let (baddr, gaddr) = (
        bl.local_addr().map_err(|e| e.to_string())?,
        gl.local_addr().map_err(|e| e.to_string())?,
    );
    tokio::spawn(blue.clone().serve(bl));
    tokio::spawn(green.clone().serve(gl));
    let dir: PathBuf = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let config = dir.join("tidegate.yaml");
    let yaml = format!(
        "listeners: [{{ name: public, address: \"127.0.0.1:{port}\" }}]\nadmin: {{ address: \"127.0.0.1:{admin_port}\" }}\nroutes:\n  - name: app\n    split: {{ blue: 100, green: 0 }}\npools:\n  blue:\n    backends: [{{ address: \"{baddr}\", name: blue-1 }}]\n    drain: {{ streams_deadline: 10m }}\n  green:\n    backends: [{{ address: \"{gaddr}\", name: green-1 }}]\n"
    );
    std::fs::write(&config, yaml).map_err(|e| format!("{}: {e}", config.display()))?;
    let log = std::fs::File::create(dir.join("tidegate.log")).map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = Command::new(exe)
        .args(["run", "-c"])
        .arg(&config)
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start tidegate: {e}"))?;
    let _proxy = Proxy(child);
    let _cleanup = RemoveDir(dir.clone());
    let admin = Admin::new(&format!("127.0.0.1:{admin_port}"), None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !admin.ready(Duration::from_secs(1)).await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "tidegate did not become ready; see {}",
                dir.join("tidegate.log").display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("http://127.0.0.1:{port}");
    println!("tidegate demo: proxy {url}, admin http://127.0.0.1:{admin_port}, blue {baddr}, green {gaddr}");
    println!(
        "config {} (edit it: tidegate reloads on save)\n",
        config.display()
    );
    if !script {
        println!("Try:\n  curl {url}/                     # hello from blue\n  curl -N {url}/events            # SSE, one event a second\n  open http://127.0.0.1:{admin_port}/ui   # the live status page\n  tidegate status --admin 127.0.0.1:{admin_port}\n  tidegate shift app green=100 blue=0 --over 20s --step 5s --admin 127.0.0.1:{admin_port}\n  tidegate drain blue --wait --admin 127.0.0.1:{admin_port}\n  curl http://127.0.0.1:{admin_port}/metrics\nCtrl-C stops everything.");
        let _ = tokio::signal::ctrl_c().await;
        return Ok(0);
    }
    walk(&url, &admin, &blue).await
}

// Long: the scripted rollout reads best as one story, step after step.
async fn walk(url: &str, admin: &Admin, blue: &Arc<Backend>) -> Result<u8, String> {
    let fleet = vec![admin.clone()];
    let err = |e: client::ClientError| e.to_string();
    println!("1. An SSE client connects; the split is blue=100, so it lands on blue.");
    let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("{url}/events/push"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = http.request(req).await.map_err(|e| e.to_string())?;
    let backend = resp
        .headers()
        .get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    println!("   stream open on {backend}");
    let mut body = resp.into_body();
    let reader = tokio::spawn(async move {
        let mut events = 0;
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                events += String::from_utf8_lossy(&d).matches("data: ").count();
            }
        }
        events
    });
    println!("2. Shift app to green in 4 steps (rolls back on errors):");
    let code = client::shift(
        &fleet,
        ShiftArgs {
            route: "app".into(),
            weights: vec!["green=100".into(), "blue=0".into()],
            ramp: client::RampOpts {
                over: Some(Duration::from_secs(2)),
                step: Some(Duration::from_millis(500)),
                max_error_rate: Some(0.05),
                min_requests: 20,
            },
        },
    )
    .await
    .map_err(err)?;
    if code != 0 {
        return Ok(code);
    }
    println!("3. New requests go to green; the stream on blue keeps flowing:");
    let mut by_backend = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let req = http::Request::get(format!("{url}/"))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let r = http.request(req).await.map_err(|e| e.to_string())?;
        let b = r
            .headers()
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string();
        *by_backend.entry(b).or_default() += 1;
    }
    println!("   10 new requests: {by_backend:?}");
    let n = blue.push("still streaming from blue");
    println!("   event sent to {n} open blue stream(s)");
    println!("4. Drain blue and wait; the stream ends by itself in 2 s:");
    let b = blue.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        b.push("__end__");
    });
    let code = client::drain(
        &fleet,
        DrainArgs {
            target: Some("blue".into()),
            node: None,
            hard: false,
            wait: true,
            timeout: Duration::from_secs(30),
            strict: false,
            requests_deadline: None,
            streams_deadline: None,
            json: false,
        },
    )
    .await
    .map_err(err)?;
    let events = reader.await.unwrap_or(0);
    println!("   the SSE client got {events} event(s) and a clean end of stream");
    if code == 0 {
        println!("5. blue is drained: safe to stop it. Done.");
    }
    Ok(code)
}
