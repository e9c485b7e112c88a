//! Reliability at the worst moments, with the shipped `conf/sidecar.yaml` (no health check):
//! an app that restarts is held for, not hammered; `hold.timeout: 0` fails fast with one
//! attempt per backend; a backend whose connects time out is treated the same; a drain that
//! races requests never turns one into an error while another pool can take it.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;

/// `conf/sidecar.yaml` exactly as shipped, with test ports and the app's address.
fn sidecar_yaml(app: SocketAddr) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml"))
        .expect("read conf/sidecar.yaml");
    assert!(text.contains("0.0.0.0:8080") && text.contains("127.0.0.1:3000"));
    text.variant("0.0.0.0:8080", "{listen}")
        .variant("127.0.0.1:9901", "{admin}")
        .variant("127.0.0.1:3000", &app.to_string())
}

/// Sum of every sample of `name` in `/metrics` whose labels contain `labels`.
async fn metric(tg: &Tidegate, name: &str, labels: &str) -> f64 {
    let text = get(&tg.admin_url("/metrics")).await.expect("metrics").body;
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One request's outcome, as seen by a client.
#[derive(Debug, Clone)]
struct Outcome {
    start: Instant,
    end: Instant,
    result: Result<u16, String>,
}

/// `n` clients sending GET `url` back to back until `stop`; every outcome is kept.
fn clients(
    url: String,
    n: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Outcome>>>, Vec<tokio::task::JoinHandle<()>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..n)
        .map(|_| {
            let (url, stop, log) = (url.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Relaxed) {
                    let start = Instant::now();
                    let result = send(&c, "GET", &url, &[], "").await.map(|r| r.status);
                    let end = Instant::now();
                    log.lock().unwrap().push(Outcome { start, end, result });
                }
            })
        })
        .collect();
    (log, tasks)
}

async fn wait_held(tg: &Tidegate, at_least: f64) {
    wait_for("requests held", Duration::from_secs(10), || async {
        (metric(tg, "tidegate_held_requests", "route=\"app\"").await >= at_least).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecar_app_restart_is_held_not_hammered() {
    let mut app = BackendProcess::start("app").await;
    let addr = app.addr;
    let tg = Tidegate::start(&sidecar_yaml(addr)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = clients(tg.url("/"), 20, stop.clone());
    wait_for("traffic flowing", Duration::from_secs(10), || async {
        (log.lock().unwrap().len() >= 100).then_some(())
    })
    .await;

    // The app goes away for 3 s (a container restart).
    app.kill();
    let down_at = Instant::now();
    wait_held(&tg, 20.0).await;
    let outage = Duration::from_secs(3);
    wait_for("outage of 3 s", outage + Duration::from_secs(1), || async {
        (down_at.elapsed() >= outage).then_some(())
    })
    .await;
    let failures_during = metric(&tg, "tidegate_upstream_connect_failures_total", "").await;
    let _app = BackendProcess::start_on("app", addr).await;
    // `start_on` returns once a connect succeeds: the app accepts from (at most) here.
    let up_at = Instant::now();
    wait_for("held requests released", Duration::from_secs(5), || async {
        (metric(&tg, "tidegate_held_requests", "").await == 0.0).then_some(())
    })
    .await;
    wait_for(
        "traffic after the outage",
        Duration::from_secs(5),
        || async {
            let n = log
                .lock()
                .unwrap()
                .iter()
                .filter(|o| o.start > up_at)
                .count();
            (n >= 100).then_some(())
        },
    )
    .await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let log = log.lock().unwrap().clone();
    let failed: Vec<_> = log.iter().filter(|o| o.result != Ok(200)).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    // Held: started before the app came back, answered after.
    let held: Vec<_> = log
        .iter()
        .filter(|o| o.start < up_at && o.end >= up_at)
        .collect();
    assert!(held.len() >= 20, "{} held requests", held.len());
    let slowest = held
        .iter()
        .map(|o| o.end.duration_since(up_at))
        .max()
        .unwrap();
    eprintln!(
        "outage {:?}: {} requests held, released within {slowest:?} of the app accepting; \
         {failures_during} failed connects during the outage",
        up_at.duration_since(down_at),
        held.len()
    );
    assert!(
        slowest <= Duration::from_millis(250),
        "held requests released {slowest:?} after the app accepted"
    );
    // 20 requests in flight when it died + probes (50 ms doubling to 1 s, at most 100 ms
    // apart while requests are held): about 50 in 3 s. Hammering would be thousands.
    assert!(
        failures_during <= 100.0,
        "{failures_during} connect failures during a 3 s outage"
    );
    let logs = tg.logs();
    assert!(
        logs.matches("backend accepts connections again").count() == 1,
        "{logs}"
    );
}

/// Nothing listens on these: bound, then released.
fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

fn two_backend_yaml(a: SocketAddr, b: SocketAddr, route_extra: &str, top_extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
{top_extra}
routes:
  - name: app
    split: {{ app: 100 }}
    {route_extra}
pools:
  app:
    backends:
      - {{ address: "{a}", name: a }}
      - {{ address: "{b}", name: b }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hold_zero_fails_fast_with_one_attempt_per_backend() {
    let (a, b) = (dead_addr(), dead_addr());
    let tg = Tidegate::start(&two_backend_yaml(a, b, "hold: { timeout: 0 }", "")).await;
    let c = client();
    let t = Instant::now();
    let r = send(&c, "GET", &tg.url("/"), &[], "").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_gateway");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let attempts = tg.logs().matches("upstream connect failed").count();
    assert_eq!(attempts, 2, "one attempt per backend:\n{}", tg.logs());
    // Both are down now: later requests fail at once without touching them.
    for _ in 0..20 {
        let r = send(&c, "GET", &tg.url("/"), &[], "").await.unwrap();
        assert!(r.status == 503 || r.status == 502, "{}", r.body);
    }
    let attempts = tg.logs().matches("upstream connect failed").count();
    assert!(attempts <= 4, "{attempts} request connects for 21 requests");
    let probes = metric(&tg, "tidegate_upstream_connect_failures_total", "").await;
    assert!(probes >= 2.0, "failures are counted: {probes}");

    // One comes back: the probe notices, requests succeed again without a reload.
    let _app = BackendProcess::start_on("b", b).await;
    wait_for("backend b back", Duration::from_secs(5), || async {
        let r = send(&c, "GET", &tg.url("/"), &[], "").await.ok()?;
        (r.status == 200 && r.backend().as_deref() == Some("b")).then_some(())
    })
    .await;
}

/// A listener whose accept queue is full: connects to it time out (SYNs are dropped).
fn blackhole() -> (std::net::TcpListener, Vec<std::net::TcpStream>) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&any.into()).unwrap();
    s.listen(0).unwrap();
    let l: std::net::TcpListener = s.into();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    // Fill the queue until a connect times out.
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => fill.push(c),
            Err(_) => break,
        }
    }
    (l, fill)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn connect_timeouts_are_held_for_too() {
    let (listener, fill) = blackhole();
    let addr = listener.local_addr().unwrap();
    let yaml = sidecar_yaml(addr).variant("routes:", "timeouts: { connect: 300ms }\nroutes:");
    let tg = Tidegate::start(&yaml).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (log, tasks) = clients(tg.url("/"), 5, stop.clone());
    wait_held(&tg, 5.0).await;
    let t = Instant::now();
    wait_for("2 s of timeouts", Duration::from_secs(4), || async {
        (t.elapsed() >= Duration::from_secs(2)).then_some(())
    })
    .await;
    let attempts = tg.logs().matches("upstream connect failed").count();
    // The app starts accepting on its listener (the queue drains).
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let app = common::backend::Backend::new("app");
    let serving = tokio::spawn(app.clone().serve(listener));
    drop(fill);
    let up_at = Instant::now();
    wait_for("requests answered", Duration::from_secs(10), || async {
        let n = log
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.start > up_at)
            .count();
        (n >= 20).then_some(())
    })
    .await;
    stop.store(true, Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    serving.abort();
    let log = log.lock().unwrap().clone();
    let failed: Vec<_> = log.iter().filter(|o| o.result != Ok(200)).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    assert!(
        attempts <= 5,
        "{attempts} request connects timed out: each waiting request tried once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_toggles_never_fail_a_request_green_can_take() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100, green: 100 }}
    hold: {{ timeout: 0 }}
pools:
  blue:
    backends: [{{ address: "{}" }}]
  green:
    backends: [{{ address: "{}" }}]
"#,
        blue.addr, green.addr
    );
    let tg = Arc::new(Tidegate::start(&yaml).await);
    let stop = Arc::new(AtomicBool::new(false));
    let togglers: Vec<_> = (0..20)
        .map(|i| {
            let (tg, stop) = (tg.clone(), stop.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let c = client();
                    let verb = if i % 2 == 0 { "drain" } else { "undrain" };
                    let url = tg.admin_url(&format!("/api/v1/pools/blue/{verb}"));
                    let mut n = 0u64;
                    while !stop.load(Relaxed) {
                        let _ = send(&c, "POST", &url, &[], "{}").await;
                        n += 1;
                    }
                    n
                })
            })
        })
        .collect();
    let load = Load::start(tg.url("/"), 4);
    let t = Instant::now();
    wait_for(
        "15,000 requests under toggles",
        Duration::from_secs(90),
        || async {
            (green.app.hits() + blue.app.hits() >= 15_000 && t.elapsed() > Duration::from_secs(2))
                .then_some(())
        },
    )
    .await;
    let (ok, failed) = load.stop().await;
    stop.store(true, Relaxed);
    let toggles: u64 = togglers.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("{ok} requests, {failed} failed, {toggles} drain/undrain calls");
    assert_eq!(failed, 0);
    assert!(toggles >= 200, "{toggles} toggles");
    assert!(blue.app.hits() > 0 && green.app.hits() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_held_frees_its_slot() {
    use tokio::io::AsyncWriteExt;
    let tg = Tidegate::start(&sidecar_yaml(dead_addr())).await;
    // Mark the app down first, so the next request is held at once.
    let c = client();
    let _ = tokio::time::timeout(
        Duration::from_millis(300),
        send(&c, "GET", &tg.url("/"), &[], ""),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(tg.listen).await.unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    wait_for("held", Duration::from_secs(5), || async {
        (metric(&tg, "tidegate_held_requests", "route=\"app\"").await >= 1.0).then_some(())
    })
    .await;
    drop(s);
    // The hold ends with the client, not at hold.timeout (30 s).
    wait_for("slot freed", Duration::from_secs(3), || async {
        (metric(&tg, "tidegate_held_requests", "route=\"app\"").await == 0.0).then_some(())
    })
    .await;
    // The request's context (and its in-flight count) goes a moment after the hold slot.
    wait_status(&tg, "nothing in flight", |s| s["in_flight"] == 0).await;
}
