//! The access log's destinations with the real binary: formats and filters across reloads,
//! a file rotated under load and reopened on SIGUSR1 with no line lost or written twice, and a
//! stdout reader that stops reading for 5 s without costing a request any latency.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// Lines of a file ("" when it does not exist).
fn file_lines(p: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

async fn reload_to(tg: &Tidegate, yaml: &str, generation: u64) {
    tg.rewrite_config(yaml);
    wait_for("reload", Duration::from_secs(10), || async {
        (tg.generation().await == generation).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_destinations_and_filters_follow_reloads() {
    let app = TestBackend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let with = |keys: &str| {
        sidecar_yaml(
            app.addr,
            &format!("access_log: {{ path: {}, {keys} }}", file.display()),
        )
    };
    let tg = Tidegate::start(&with("format: logfmt")).await;
    get(&tg.url("/fmt/logfmt?secret=1")).await.unwrap();
    let line = wait_for("a logfmt line", Duration::from_secs(10), || {
        let found = file_lines(&file)
            .into_iter()
            .find(|l| l.contains("path=/fmt/logfmt"));
        async move { found }
    })
    .await;
    assert!(
        line.starts_with("time=")
            && line.contains(" outcome=proxied")
            && line.contains(" status=200 "),
        "{line}"
    );
    assert!(
        !line.contains("secret") && !line.contains("trace_id="),
        "{line}"
    );
    assert!(!tg.logs().contains("path=/fmt"), "the file, not stdout");
    reload_to(&tg, &with("format: combined"), 2).await;
    send(
        &client(),
        "GET",
        &tg.url("/fmt/combined"),
        &[("referer", "http://r.example/"), ("user-agent", "ua \"q\"")],
        "",
    )
    .await
    .unwrap();
    let line = wait_for("a combined line", Duration::from_secs(10), || {
        let found = file_lines(&file)
            .into_iter()
            .find(|l| l.contains("/fmt/combined"));
        async move { found }
    })
    .await;
    let (head, tail) = line.split_once(" - - [").expect("combined");
    assert_eq!(head, "127.0.0.1");
    assert!(
        tail.contains("+0000] \"GET /fmt/combined HTTP/1.1\" 200 "),
        "{line}"
    );
    assert!(
        line.ends_with("\"http://r.example/\" \"ua \\x22q\\x22\""),
        "{line}"
    );
    // Excluded paths and sampling: plain successes thinned, everything else kept.
    reload_to(
        &tg,
        &with("exclude_paths: [/healthz, \"/skip/*\"], sample: 0.0"),
        3,
    )
    .await;
    for p in ["/healthz", "/skip/a", "/plain"] {
        get(&tg.url(p)).await.unwrap();
    }
    assert_eq!(admin_post(&tg, "/api/v1/maintenance").await, 200);
    get(&tg.url("/during-maintenance")).await.unwrap();
    let json = wait_for("the maintenance line", Duration::from_secs(10), || {
        let found = access_lines_of(&std::fs::read_to_string(&file).unwrap_or_default())
            .into_iter()
            .find(|l| l["path"] == "/during-maintenance");
        async move { found }
    })
    .await;
    assert_eq!(
        json["outcome"], "maintenance",
        "sample 0 keeps non-plain outcomes"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    for p in ["\"/healthz\"", "\"/skip/a\"", "\"/plain\""] {
        assert!(!text.contains(p), "{p} logged:\n{text}");
    }
    // Off: nothing more.
    reload_to(&tg, &with("enabled: false"), 4).await;
    get(&tg.url("/while-off")).await.unwrap();
    let n = file_lines(&file).len();
    get(&tg.url("/while-off-2")).await.unwrap();
    // The last line written before is still the last one after the writer is idle.
    let m = metric(&tg, "tidegate_access_log_lines_total{result=\"written\"}").await;
    assert_eq!(file_lines(&file).len(), n);
    assert!(!std::fs::read_to_string(&file)
        .unwrap()
        .contains("while-off"));
    assert!(m >= n as f64 - 1.0, "written {m}, lines {n}");
}

async fn admin_post(tg: &Tidegate, path: &str) -> u16 {
    send(&client(), "POST", &tg.admin_url(path), &[], "{}")
        .await
        .unwrap()
        .status
}

/// A sample of the Prometheus text (0 when absent).
async fn metric(tg: &Tidegate, series: &str) -> f64 {
    let body = get(&tg.admin_url("/metrics")).await.unwrap().body;
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse().unwrap_or(0.0))
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_a_rotated_file_with_no_line_lost_or_duplicated_under_load() {
    let app = TestBackend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let yaml = sidecar_yaml(
        app.addr,
        &format!("access_log: {{ path: {} }}", file.display()),
    );
    let tg = Tidegate::start(&yaml).await;
    let load = Load::start(tg.url("/load"), 4);
    wait_for("lines in the file", Duration::from_secs(20), || {
        let n = file_lines(&file).len();
        async move { (n >= 300).then_some(()) }
    })
    .await;
    // logrotate's move, then its postrotate signal.
    std::fs::rename(&file, &rotated).unwrap();
    tg.signal(libc::SIGUSR1);
    wait_for("lines in the new file", Duration::from_secs(20), || {
        let n = file_lines(&file).len();
        async move { (n >= 300).then_some(()) }
    })
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0);
    // Quiescent: the writer has written what was sent (compared on one snapshot).
    let (old, new) = wait_for("the writer idle", Duration::from_secs(10), || async {
        let (old, new) = (file_lines(&rotated), file_lines(&file));
        ((old.len() + new.len()) as u64 == ok).then_some((old, new))
    })
    .await;
    let mut ids = std::collections::HashSet::new();
    for l in old.iter().chain(new.iter()) {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line ({e}): {l}"));
        assert!(
            ids.insert(v["request_id"].as_str().unwrap().to_string()),
            "duplicated: {l}"
        );
    }
    assert_eq!(
        metric(&tg, "tidegate_access_log_lines_total{result=\"dropped\"}").await,
        0.0
    );
    assert!(tg.logs().contains("SIGUSR1: reopening the access log"));
    eprintln!(
        "rotation under load: {} lines before, {} after, {ok} requests",
        old.len(),
        new.len()
    );
}

/// Latency percentiles (ms) of `durations`.
fn percentiles(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort();
    let at = |q: f64| d[((d.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (at(0.5), at(0.99), at(1.0))
}

/// Requests back to back from 4 clients for `how_long`; their latencies.
async fn timed_load(url: String, how_long: Duration) -> Vec<Duration> {
    let until = std::time::Instant::now() + how_long;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                let mut out = Vec::new();
                while std::time::Instant::now() < until {
                    let t = std::time::Instant::now();
                    let r = send(&c, "GET", &url, &[], "").await.expect("request");
                    assert_eq!(r.status, 200);
                    out.push(t.elapsed());
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_reader_costs_no_latency() {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    let app = TestBackend::start("app").await;
    let (tg, mut stdout) = Tidegate::start_piped(&sidecar_yaml(app.addr, "")).await;
    let paused = std::sync::Arc::new(AtomicBool::new(false));
    let read = std::sync::Arc::new(AtomicU64::new(0));
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (p, r, s) = (paused.clone(), read.clone(), seen.clone());
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if p.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    r.fetch_add(n as u64, SeqCst);
                    let mut s = s.lock().unwrap();
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if s.len() > 1 << 20 {
                        let at = s.len() - (1 << 19);
                        let keep = s.split_off(at);
                        *s = keep;
                    }
                }
            }
        }
    });
    let before = timed_load(tg.url("/reading"), Duration::from_secs(2)).await;
    let written = "tidegate_access_log_lines_total{result=\"written\"}";
    paused.store(true, SeqCst);
    let written_before = metric(&tg, written).await;
    let stalled = timed_load(tg.url("/stalled"), Duration::from_secs(5)).await;
    let written_during = metric(&tg, written).await - written_before;
    let dropped = metric(&tg, "tidegate_access_log_lines_total{result=\"dropped\"}").await;
    paused.store(false, SeqCst);
    let (b50, b99, bmax) = percentiles(before.clone());
    let (s50, s99, smax) = percentiles(stalled.clone());
    eprintln!(
        "reading: {} requests p50 {b50:.2} ms p99 {b99:.2} ms max {bmax:.2} ms; stalled 5 s: {} requests p50 {s50:.2} ms p99 {s99:.2} ms max {smax:.2} ms; {written_during} lines written and {dropped} dropped meanwhile",
        before.len(),
        stalled.len()
    );
    // The writer was stuck on the full pipe (a few hundred lines fit in it), and the queue
    // overflowed: the stall was real.
    assert!(
        written_during < stalled.len() as f64 / 2.0 && dropped > 0.0,
        "the pipe never stalled the writer ({written_during} lines written, {dropped} dropped during {} requests): the test proves nothing",
        stalled.len()
    );
    // A worker blocked on the pipe would hold its request for the whole stall.
    assert!(
        smax < 1000.0,
        "a request waited {smax} ms while stdout was stalled"
    );
    assert!(
        stalled.len() > 100,
        "only {} requests in 5 s",
        stalled.len()
    );
    // Reading again: once the backlog is read, new lines flow again (one sent while the
    // queue is still full is dropped, so keep sending).
    let url = tg.url("/after-the-stall");
    wait_for("lines after the stall", Duration::from_secs(20), || {
        let (url, seen) = (url.clone(), seen.clone());
        async move {
            get(&url).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen.lock()
                .unwrap()
                .contains("/after-the-stall")
                .then_some(())
        }
    })
    .await;
}
