//! The access log, request ids and trace context, with the real binary: the shipped sidecar
//! config logs one JSON line per request on stdout with every documented key; each outcome
//! tidegate names appears on a request that came to it; ids are the same at the backend, in
//! the response and in the log; secrets never appear.

mod common;

use std::time::Duration;

use common::{recorder::Recorder, *};
use serde_json::Value;

/// The JSON keys the README documents (a contract: log pipelines parse them).
const KEYS: [&str; 25] = [
    "time",
    "request_id",
    "trace_id",
    "client",
    "method",
    "host",
    "path",
    "query",
    "protocol",
    "status",
    "bytes_in",
    "bytes_out",
    "duration_ms",
    "connect_ms",
    "first_byte_ms",
    "held_ms",
    "route",
    "pool",
    "backend",
    "kind",
    "attempts",
    "outcome",
    "spool_id",
    "error",
    "user_agent",
];

fn any_addr() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn header(r: &Resp, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn is_minted(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn ms(l: &Value, key: &str) -> f64 {
    l[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} not a number: {l}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sidecar_logs_one_json_line_per_request_with_every_key() {
    let rec = Recorder::start(any_addr()).await;
    let tg = Tidegate::start(&sidecar_yaml(rec.addr, "")).await;
    let c = client();
    let r = send(
        &c,
        "GET",
        &tg.url("/orders/7?token=s3cr3t-query"),
        &[
            ("authorization", "Bearer s3cr3t-auth"),
            ("cookie", "session=s3cr3t-cookie"),
            ("user-agent", "test-agent/1"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let id = header(&r, "x-request-id");
    assert!(is_minted(&id), "minted id: {id:?}");
    assert_eq!(
        rec.seen()[0].header("x-request-id"),
        id,
        "the backend got it"
    );
    let l = tg
        .access_line("the GET", |l| l["path"] == "/orders/7")
        .await;
    for k in KEYS {
        assert!(l.get(k).is_some(), "key {k} missing: {l}");
    }
    assert_eq!(l["request_id"], id.as_str());
    assert_eq!(l["outcome"], "proxied");
    assert_eq!(l["status"], 200);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "app");
    assert_eq!(l["pool"], "app");
    assert_eq!(l["backend"], rec.addr.to_string());
    assert_eq!(l["kind"], "http");
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["client"], "127.0.0.1");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["host"], tg.listen.to_string());
    assert_eq!(l["user_agent"], "test-agent/1");
    assert!(l["query"].is_null(), "no query unless asked: {l}");
    assert_eq!(l["bytes_out"], r.body.len() as u64);
    assert!(l["spool_id"].is_null() && l["error"].is_null() && l["trace_id"].is_null());
    assert_eq!(ms(&l, "held_ms"), 0.0);
    assert!(ms(&l, "duration_ms") >= ms(&l, "first_byte_ms"), "{l}");
    assert!(ms(&l, "first_byte_ms") >= ms(&l, "connect_ms"), "{l}");
    let time = l["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 with milliseconds: {time}"
    );
    let all = tg.logs();
    for secret in ["s3cr3t-auth", "s3cr3t-cookie", "s3cr3t-query"] {
        assert!(!all.contains(secret), "{secret} logged:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_headers_are_never_logged_even_when_listed() {
    let rec = Recorder::start(any_addr()).await;
    let extra = "access_log:\n  query: true\n  request_headers: [Authorization, Proxy-Authorization, Cookie, User-Agent, X-Tenant]\n  response_headers: [Set-Cookie, Content-Length]\n";
    let yaml = sidecar_yaml(rec.addr, extra);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.yaml");
    std::fs::write(
        &file,
        yaml.replace("{listen}", "127.0.0.1:1")
            .replace("{admin}", "127.0.0.1:2"),
    )
    .unwrap();
    let (code, out) = check(&file);
    assert_eq!(code, 0, "{out}");
    for h in [
        "Authorization",
        "Proxy-Authorization",
        "Cookie",
        "Set-Cookie",
    ] {
        assert!(
            out.contains(&format!("{h} carries credentials and is never logged")),
            "{out}"
        );
    }
    let tg = Tidegate::start(&yaml).await;
    let r = send(
        &client(),
        "GET",
        &tg.url("/q?page=2"),
        &[
            ("authorization", "Basic s3cr3t-basic"),
            ("proxy-authorization", "Basic s3cr3t-proxy"),
            ("cookie", "sid=s3cr3t-cookie"),
            ("x-tenant", "acme"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let l = tg.access_line("the GET", |l| l["path"] == "/q").await;
    assert_eq!(l["query"], "page=2", "query: true logs it");
    let h = l["request_headers"].as_object().expect("request_headers");
    assert_eq!(
        h.get("x-tenant").and_then(Value::as_str),
        Some("acme"),
        "{l}"
    );
    assert!(
        h.get("authorization").is_none() && h.get("cookie").is_none(),
        "{l}"
    );
    assert_eq!(l["response_headers"]["content-length"], "3", "{l}");
    let all = tg.logs();
    assert!(!all.contains("s3cr3t"), "a credential was logged:\n{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_valid_replaced_when_forged_and_quoted_in_errors() {
    let rec = Recorder::start(any_addr()).await;
    let base = sidecar_yaml(rec.addr, "");
    let yaml = base.variant(
        "    split: { app: 100 }",
        "    match: { path_prefix: /app/ }\n    split: { app: 100 }",
    );
    let tg = Tidegate::start(&yaml).await;
    let c = client();
    let get = |path: &'static str, ids: Vec<String>| {
        let c = c.clone();
        let url = tg.url(path);
        async move {
            let hs: Vec<(&str, &str)> = ids.iter().map(|v| ("x-request-id", v.as_str())).collect();
            send(&c, "GET", &url, &hs, "").await.unwrap()
        }
    };
    // A valid id is kept: the backend, the response and the log agree.
    let r = get(
        "/app/kept",
        vec!["0b4d2c9e-7f1a-4c3e-9d2b-5a6f7e8d9c0b".into()],
    )
    .await;
    assert_eq!(
        header(&r, "x-request-id"),
        "0b4d2c9e-7f1a-4c3e-9d2b-5a6f7e8d9c0b"
    );
    let seen = rec.seen();
    assert_eq!(
        seen.last().unwrap().header("x-request-id"),
        "0b4d2c9e-7f1a-4c3e-9d2b-5a6f7e8d9c0b"
    );
    let l = tg.access_line("kept", |l| l["path"] == "/app/kept").await;
    assert_eq!(l["request_id"], "0b4d2c9e-7f1a-4c3e-9d2b-5a6f7e8d9c0b");
    // Overlong, malformed, or two of them: replaced, and the backend sees only the new one.
    for (path, ids) in [
        ("/app/long", vec!["a".repeat(129)]),
        ("/app/space", vec!["has space".to_string()]),
        ("/app/quote", vec!["x\"y".to_string()]),
        ("/app/two", vec!["one".to_string(), "two".to_string()]),
    ] {
        let r = get(path, ids.clone()).await;
        let id = header(&r, "x-request-id");
        assert!(
            is_minted(&id),
            "{path}: {ids:?} must be replaced, got {id:?}"
        );
        let at_backend: Vec<_> = rec
            .seen()
            .last()
            .unwrap()
            .headers
            .get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(at_backend, vec![id.clone()], "{path}");
        let l = tg.access_line(path, |l| l["path"] == path).await;
        assert_eq!(l["request_id"], id.as_str(), "{path}");
    }
    // tidegate's own error: the id is in the header and in the JSON body.
    let r = get("/nowhere", vec!["client-404".into()]).await;
    assert_eq!(r.status, 404);
    assert_eq!(header(&r, "x-request-id"), "client-404");
    assert_eq!(r.json()["request_id"], "client-404", "{}", r.body);
    // `http.request_id: replace` mints even for a valid one.
    tg.rewrite_config(&format!("{yaml}\nhttp: {{ request_id: replace }}\n"));
    wait_for("reload", Duration::from_secs(10), || async {
        (tg.generation().await == 2).then_some(())
    })
    .await;
    let r = get("/app/replaced", vec!["valid-but-replaced".into()]).await;
    let id = header(&r, "x-request-id");
    assert!(is_minted(&id), "{id}");
    assert_eq!(rec.seen().last().unwrap().header("x-request-id"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_passes_through_and_can_be_started() {
    let rec = Recorder::start(any_addr()).await;
    let yaml = sidecar_yaml(rec.addr, "");
    let tg = Tidegate::start(&yaml).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = send(
        &client(),
        "GET",
        &tg.url("/traced"),
        &[("traceparent", tp), ("tracestate", "vendor=abc")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = rec.seen();
    let s = seen.last().unwrap();
    assert_eq!(s.header("traceparent"), tp, "unchanged");
    assert_eq!(s.header("tracestate"), "vendor=abc", "unchanged");
    let l = tg.access_line("traced", |l| l["path"] == "/traced").await;
    assert_eq!(l["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    // Without trace.start nothing is added; an invalid one passes, unlogged.
    send(
        &client(),
        "GET",
        &tg.url("/bad-trace"),
        &[("traceparent", "garbage")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(rec.seen().last().unwrap().header("traceparent"), "garbage");
    let l = tg
        .access_line("bad trace", |l| l["path"] == "/bad-trace")
        .await;
    assert!(l["trace_id"].is_null());
    // trace.start: a request without one gets a new trace, flagged per trace.sample.
    tg.rewrite_config(&format!("{yaml}\ntrace: {{ start: true, sample: 0.0 }}\n"));
    wait_for("reload", Duration::from_secs(10), || async {
        (tg.generation().await == 2).then_some(())
    })
    .await;
    send(
        &client(),
        "GET",
        &tg.url("/started"),
        &[("tracestate", "stale=1")],
        "",
    )
    .await
    .unwrap();
    let s = rec.seen().last().unwrap().clone();
    let started = s.header("traceparent");
    assert!(
        started.starts_with("00-") && started.ends_with("-00") && started.len() == 55,
        "{started}"
    );
    assert_eq!(
        s.header("tracestate"),
        "",
        "a stale tracestate goes with a new trace"
    );
    let l = tg.access_line("started", |l| l["path"] == "/started").await;
    assert_eq!(l["trace_id"], &started[3..35]);
    // A valid incoming one is still kept as it is.
    send(
        &client(),
        "GET",
        &tg.url("/kept"),
        &[("traceparent", tp)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(rec.seen().last().unwrap().header("traceparent"), tp);
}

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

/// The audit line of `action` on `target` (tidegate's log, stderr).
async fn audit_line(tg: &Tidegate, action: &str, target: &str) -> String {
    let (a, t) = (
        format!("action=\"{action}\""),
        format!("target=\"{target}\""),
    );
    wait_for(
        &format!("audit {action} {target}"),
        Duration::from_secs(10),
        || {
            let found = tg
                .logs()
                .lines()
                .find(|l| l.contains(" audit ") && l.contains(&a) && l.contains(&t))
                .map(str::to_string);
            async move { found }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_leaves_an_audit_line_without_the_token() {
    let app = TestBackend::start("app").await;
    let canary = TestBackend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: web, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}", token_env: TG_AUDIT_TOKEN }}
spool_store: {{ path: {db} }}
routes:
  - name: web
    split: {{ app: 100, canary: 0 }}
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ app: 100 }}
    spool: {{}}
pools:
  app:
    backends: [{{ name: a1, address: "{app}" }}]
  canary:
    backends: [{{ address: "{canary}" }}]
"#,
        db = dir.path().join("spool.db").display(),
        app = app.addr,
        canary = canary.addr
    );
    let token = "audit-s3cr3t-token-value";
    let mut tg = Tidegate::spawn(&yaml, &[("TG_AUDIT_TOKEN", token)]);
    tg.wait_ready().await;
    let c = client();
    let auth = format!("Bearer {token}");
    let call = |method: &'static str, path: String, body: &'static str| {
        let (c, url, auth) = (c.clone(), tg.admin_url(&path), auth.clone());
        async move {
            send(&c, method, &url, &[("authorization", auth.as_str())], body)
                .await
                .unwrap()
                .status
        }
    };
    let members = format!("{{\"backends\":[{{\"address\":\"{}\"}}]}}", canary.addr);
    let members: &'static str = Box::leak(members.into_boxed_str());
    let steps: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "POST",
            "/api/v1/config/reload".into(),
            "",
            "reload",
            "config",
        ),
        (
            "PUT",
            "/api/v1/routes/web/checkpoint".into(),
            "",
            "checkpoint",
            "route web",
        ),
        (
            "POST",
            "/api/v1/pools/app/backends/a1/drain".into(),
            "",
            "drain",
            "backend app/a1",
        ),
        (
            "POST",
            "/api/v1/pools/app/backends/a1/undrain".into(),
            "",
            "undrain",
            "backend app/a1",
        ),
        (
            "PUT",
            "/api/v1/routes/web/split".into(),
            "{\"split\":{\"app\":90,\"canary\":10}}",
            "split",
            "route web",
        ),
        (
            "POST",
            "/api/v1/routes/web/split".into(),
            "{\"split\":{\"app\":50,\"canary\":50},\"over\":\"2s\"}",
            "ramp",
            "route web",
        ),
        (
            "DELETE",
            "/api/v1/routes/web/split".into(),
            "",
            "split.clear",
            "route web",
        ),
        (
            "PUT",
            "/api/v1/pools/canary/backends".into(),
            members,
            "members.set",
            "pool canary",
        ),
        (
            "DELETE",
            "/api/v1/pools/canary/backends".into(),
            "",
            "members.reset",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/pools/canary/drain".into(),
            "",
            "drain",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/pools/canary/undrain".into(),
            "",
            "undrain",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/routes/web/rollback".into(),
            "",
            "rollback",
            "route web",
        ),
        (
            "POST",
            "/api/v1/maintenance".into(),
            "{}",
            "maintenance.on",
            "routes",
        ),
        (
            "DELETE",
            "/api/v1/maintenance".into(),
            "",
            "maintenance.off",
            "routes",
        ),
        (
            "POST",
            "/api/v1/spool/retry".into(),
            "{}",
            "spool.retry",
            "spool",
        ),
        (
            "DELETE",
            "/api/v1/spool?state=dead".into(),
            "",
            "spool.purge",
            "spool",
        ),
    ];
    for (method, path, body, action, target) in steps {
        let status = wait_for(&format!("{method} {path}"), Duration::from_secs(10), || {
            let f = call(method, path.clone(), body);
            // The spool store opens in the background: 503 until it is open.
            async move { Some(f.await).filter(|s| *s != 503) }
        })
        .await;
        assert!(status < 300, "{method} {path}: {status}");
        let line = audit_line(&tg, action, target).await;
        assert!(
            line.contains("caller=127.0.0.1:") && line.contains("result=\"ok\""),
            "{line}"
        );
        assert!(line.contains(&format!("status={status}")), "{line}");
    }
    // Refused: no token, a wrong one, not JSON. Each says why.
    let r = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/pools/app/drain"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let wrong = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/pools/app/drain"),
        &[("authorization", "Bearer wrong-guess-token")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    let r = send_exact(
        &c,
        "POST",
        &tg.admin_url("/api/v1/maintenance"),
        &[("authorization", &auth), ("content-type", "text/plain")],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    let lines: Vec<String> = wait_for("refused audit lines", Duration::from_secs(10), || {
        let l: Vec<String> = tg
            .logs()
            .lines()
            .filter(|l| l.contains(" audit ") && l.contains("result=\"refused\""))
            .map(str::to_string)
            .collect();
        async move { (l.len() >= 3).then_some(l) }
    })
    .await;
    assert!(
        lines[0].contains("action=\"drain\"")
            && lines[0].contains("status=401")
            && lines[0].contains("reason=\"unauthorized"),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains("action=\"maintenance.on\"")
            && lines[2].contains("status=415")
            && lines[2].contains("reason="),
        "{}",
        lines[2]
    );
    tg.signal(libc::SIGINT);
    tg.wait_exit(Duration::from_secs(10)).await;
    let all = tg.logs();
    assert!(
        !all.contains(token) && !all.contains("wrong-guess-token"),
        "a token was logged"
    );
}
