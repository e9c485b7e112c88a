//! gRPC through tidegate with real gRPC on both sides (tonic): h2c and TLS upstreams, the
//! `grpc` kind in counts, polite ends (`grpc-status: 14`) at drain deadlines and shutdown,
//! tidegate's own answers as gRPC statuses, and counts back to zero on every path.

mod common;

use std::time::Duration;

use common::{grpc::*, *};
use tonic::Code;

/// One h2c listener, one route over pools of gRPC backends spoken to with `protocol`.
fn yaml(pools: &[(&str, &[&GrpcBackend])], split: &str, extra_pool: &str) -> String {
    let mut p = String::new();
    for (name, backends) in pools {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ address: \"{}\", name: {} }}", b.addr, b.name))
            .collect();
        p.push_str(&format!(
            "  {name}:\n    protocol: h2c\n    backends: [{}]\n{extra_pool}",
            list.join(", ")
        ));
    }
    format!(
        r#"listeners: [{{ name: public, address: "{{listen}}", h2c: true }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: api
    split: {{ {split} }}
pools:
{p}"#
    )
}

/// Established TCP connections on this machine whose remote end is 127.0.0.1:`port` (the
/// tests' clients never talk to backends directly: these are tidegate's upstream ones).
fn connections_to(port: u16) -> usize {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    tcp.lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}

async fn status(tg: &Tidegate) -> serde_json::Value {
    get(&tg.admin_url("/api/v1/status"))
        .await
        .expect("status")
        .json()
}

/// The pool's in-flight counts, from one status snapshot.
async fn pool_in_flight(tg: &Tidegate, pool: &str) -> serde_json::Value {
    status(tg).await["pools"][pool]["in_flight"].clone()
}

async fn wait_pool_idle(tg: &Tidegate, pool: &str) {
    wait_for("pool idle", Duration::from_secs(10), || async {
        let f = pool_in_flight(tg, pool).await;
        (f["http"] == 0 && f["grpc"] == 0 && f["sse"] == 0 && f["websocket"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unary_and_server_streaming_calls_pass_through_h2c_and_count_as_grpc() {
    let blue = GrpcBackend::start("blue");
    let tg = Tidegate::start(&yaml(&[("blue", &[&blue])], "blue: 100", "")).await;
    let ch = channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    for _ in 0..20 {
        assert_eq!(unary(&ch, "hi").await.expect("unary"), "blue");
    }
    let mut s = stream(&ch, 50).await.expect("stream");
    for i in 0..3 {
        let m = s.message().await.expect("message").expect("some");
        assert_eq!(String::from_utf8_lossy(&m), format!("blue:{i}"));
    }
    // One snapshot: the stream counts as grpc, on the backend and in the drain status.
    let st = status(&tg).await;
    assert_eq!(st["pools"]["blue"]["in_flight"]["grpc"], 1, "{st}");
    assert_eq!(st["pools"]["blue"]["backends"][0]["in_flight"]["grpc"], 1);
    let d = get(&tg.admin_url("/api/v1/pools/blue/drain"))
        .await
        .unwrap()
        .json();
    assert_eq!(d["streams"][0]["kind"], "grpc", "{d}");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains(r#"tidegate_backend_in_flight{pool="blue",backend="blue",kind="grpc"} 1"#),
        "{m}"
    );
    drop(s);
    wait_pool_idle(&tg, "blue").await;
    wait_for("backend stream closed", Duration::from_secs(10), || async {
        (blue.open_streams() == 0).then_some(())
    })
    .await;
    assert_eq!(
        blue.seen.unary.load(std::sync::atomic::Ordering::SeqCst),
        20
    );
    // Unary calls shared connections: far fewer upstream connections than calls (h2 reuse).
    let logs = tg.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}

/// How one long call ended, and where its retry landed.
#[derive(Debug)]
struct StreamRun {
    first_end: Option<Code>,
    messages_before: usize,
    retry_landed_on: Option<String>,
}

/// Open a stream, read it to its end, then retry once (as a gRPC client does on
/// UNAVAILABLE) and note which backend the retry's first message came from.
async fn long_call(ch: tonic::transport::Channel, every_ms: u64) -> StreamRun {
    let s = stream(&ch, every_ms).await.expect("open stream");
    let (got, end) = drain_stream(s).await;
    let mut run = StreamRun {
        first_end: end.err().map(|s| s.code()),
        messages_before: got.len(),
        retry_landed_on: None,
    };
    if run.first_end == Some(Code::Unavailable) {
        let mut s = stream(&ch, every_ms.min(100)).await.expect("retry");
        if let Ok(Some(m)) = s.message().await {
            let m = String::from_utf8_lossy(&m).into_owned();
            run.retry_landed_on = m.split(':').next().map(str::to_string);
        }
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_ends_every_grpc_stream_with_unavailable_and_retries_land_on_green() {
    let blue = GrpcBackend::start("blue");
    let green = GrpcBackend::start("green");
    let drain = "    drain: { requests_deadline: 2s, streams_deadline: 3s, close_spread: 2s }\n";
    let yaml = yaml(
        &[("blue", &[&blue]), ("green", &[&green])],
        "blue: 100, green: 0",
        drain,
    );
    let tg = Tidegate::start(&yaml).await;
    let url = format!("http://{}", tg.listen);
    let ch = channel(&url, None).await.expect("channel");
    // 15 streams that talk every 100 ms and 5 quiet ones (a message a minute): the quiet
    // ones have no next message to end at, so their shared connection is ended for them.
    let mut calls = Vec::new();
    for i in 0..20 {
        let every = if i < 15 { 100 } else { 60_000 };
        calls.push(tokio::spawn(long_call(ch.clone(), every)));
    }
    wait_for(
        "20 streams open on blue",
        Duration::from_secs(10),
        || async { (pool_in_flight(&tg, "blue").await["grpc"] == 20).then_some(()) },
    )
    .await;
    // Unary load on its own connection, all through the deploy.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, ch) = (stop.clone(), channel(&url, None).await.expect("channel"));
        tokio::spawn(async move {
            let (mut ok, mut failed, mut on_green) = (0u32, Vec::new(), 0u32);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match unary(&ch, "x").await {
                    Ok(who) => {
                        ok += 1;
                        on_green += u32::from(who == "green");
                    }
                    Err(s) => failed.push(format!("{:?} {}", s.code(), s.message())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, on_green)
        })
    };
    let started = std::time::Instant::now();
    let (code, out) = run_cli(vec![
        "deploy".into(),
        "api".into(),
        "--to".into(),
        "green".into(),
        "--admin".into(),
        tg.admin_url(""),
    ])
    .await;
    assert_eq!(code, 0, "deploy: {out}\n{}", tg.logs());
    let took = started.elapsed();
    let mut runs = Vec::new();
    for c in calls {
        runs.push(c.await.expect("call task"));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed, on_green) = load.await.expect("load");
    assert!(failed.is_empty(), "failed unary calls: {failed:?}");
    assert!(ok > 50 && on_green > 0, "ok {ok}, on green {on_green}");
    for r in &runs {
        assert_eq!(
            r.first_end,
            Some(Code::Unavailable),
            "{runs:#?}\n{}",
            tg.logs()
        );
        assert_eq!(r.retry_landed_on.as_deref(), Some("green"), "{runs:#?}");
    }
    // The chatty streams ran until their deadline (3 s), not less.
    assert!(
        runs[..15].iter().all(|r| r.messages_before >= 25),
        "{runs:#?}"
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    let d = get(&tg.admin_url("/api/v1/pools/blue/drain"))
        .await
        .unwrap()
        .json();
    assert_eq!(d["drained"], true, "{d}");
    wait_pool_idle(&tg, "blue").await;
    // Drained: tidegate closed its (pooled, idle) HTTP/2 connections to blue; green's stay.
    wait_for(
        "no connection left to blue",
        Duration::from_secs(5),
        || async { (connections_to(blue.addr.port()) == 0).then_some(()) },
    )
    .await;
    assert!(connections_to(green.addr.port()) > 0);
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    let line = m
        .lines()
        .find(|l| {
            l.starts_with(
                r#"tidegate_streams_ended_total{pool="blue",kind="grpc",reason="deadline"}"#,
            )
        })
        .unwrap_or_else(|| panic!("no grpc deadline line:\n{m}"))
        .to_string();
    assert!(line.ends_with(" 20"), "{line}");
}

async fn admin(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .expect("admin call")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_clients_get_a_grpc_status_for_tidegates_own_answers() {
    let blue = GrpcBackend::start("blue");
    // `down`: a backend nothing listens on, behind a short hold; `api`: only host `api.test`.
    let dead = format!("127.0.0.1:{}", free_port());
    let yaml = format!(
        r#"listeners: [{{ name: public, address: "{{listen}}", h2c: true }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: down
    match: {{ path_prefix: /test.Echo/Stream }}
    split: {{ dead: 100 }}
    hold: {{ timeout: 300ms }}
  - name: api
    match: {{ path_prefix: /test.Echo/Unary }}
    split: {{ blue: 100 }}
  - name: legacy
    match: {{ path_prefix: /legacy.Svc/ }}
    split: {{ plain: 100 }}
pools:
  blue:
    protocol: h2c
    backends: [{{ address: "{}", name: blue }}]
  plain:
    backends: [{{ address: "{}", name: plain }}]
  dead:
    protocol: h2c
    backends: [{{ address: "{dead}", name: dead }}]
"#,
        blue.addr, blue.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let ch = channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    assert_eq!(unary(&ch, "x").await.expect("unary"), "blue");

    // No backend after the hold: UNAVAILABLE with tidegate's message, not an HTTP error.
    let err = stream(&ch, 100).await.expect_err("no backend");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("became available"), "{err:?}");

    // No route: UNIMPLEMENTED (gRPC's mapping of 404).
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready().await.unwrap();
    let err = g
        .unary(
            tonic::Request::new(bytes::Bytes::new()),
            http::uri::PathAndQuery::from_static("/other.Svc/Call"),
            Raw,
        )
        .await
        .expect_err("no route");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // A pool that speaks HTTP/1.1 cannot carry gRPC: UNIMPLEMENTED, naming the pool.
    g.ready().await.unwrap();
    let err = g
        .unary(
            tonic::Request::new(bytes::Bytes::new()),
            http::uri::PathAndQuery::from_static("/legacy.Svc/Call"),
            Raw,
        )
        .await
        .expect_err("http1 pool");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    assert!(
        err.message().contains("speaks HTTP/1.1") && !err.message().contains("plain"),
        "{err:?}"
    );
    assert_eq!(blue.seen.unary.load(std::sync::atomic::Ordering::SeqCst), 1);

    // Maintenance: UNAVAILABLE with its message and Retry-After.
    let r = admin(
        &tg,
        "POST",
        "/api/v1/maintenance",
        r#"{"message": "back at noon", "retry_after": "120s"}"#,
    )
    .await;
    assert!(r.status < 300, "{}", r.body);
    let err = unary(&ch, "x").await.expect_err("maintenance");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "back at noon");
    assert_eq!(
        err.metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("120")
    );
    admin(&tg, "DELETE", "/api/v1/maintenance", "").await;
    assert_eq!(unary(&ch, "x").await.expect("after maintenance"), "blue");

    // A 502: the backend dies; the next call gets UNAVAILABLE, not INTERNAL.
    drop(blue);
    let err = unary(&ch, "x").await.expect_err("backend gone");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // The access log shows these as tidegate's own answers (HTTP 200, gRPC status inside).
    let l = tg
        .access_line("maintenance", |l| l["outcome"] == "maintenance")
        .await;
    assert_eq!(l["status"], 200, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counts_return_to_zero_when_clients_vanish_and_backends_die_mid_stream() {
    let mut blue = GrpcBackend::start("blue");
    let tg = Tidegate::start(&yaml(&[("blue", &[&blue])], "blue: 100", "")).await;
    let url = format!("http://{}", tg.listen);
    // Clients vanish: streams open on their own connections, then the connections drop.
    for _ in 0..3 {
        let ch = channel(&url, None).await.expect("channel");
        let mut streams = Vec::new();
        for _ in 0..5 {
            let mut s = stream(&ch, 20).await.expect("stream");
            s.message().await.expect("first").expect("some");
            streams.push(s);
        }
        assert_eq!(pool_in_flight(&tg, "blue").await["grpc"], 5);
        drop(streams);
        drop(ch);
        wait_pool_idle(&tg, "blue").await;
    }
    wait_for(
        "backend saw the resets",
        Duration::from_secs(10),
        || async { (blue.open_streams() == 0).then_some(()) },
    )
    .await;
    // The backend dies mid-stream: every stream ends with a status, counts go to zero.
    let ch = channel(&url, None).await.expect("channel");
    let mut open = Vec::new();
    for _ in 0..5 {
        let mut s = stream(&ch, 20).await.expect("stream");
        s.message().await.expect("first").expect("some");
        open.push(tokio::spawn(drain_stream(s)));
    }
    blue.kill();
    for t in open {
        let (_, end) = t.await.unwrap();
        let code = end.expect_err("ended by the death").code();
        assert_eq!(
            code,
            Code::Unavailable,
            "a dead backend reads as UNAVAILABLE"
        );
    }
    wait_pool_idle(&tg, "blue").await;
    let st = status(&tg).await;
    assert_eq!(st["in_flight"], 0, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_sends_goaway_and_no_call_in_flight_is_lost() {
    let blue = GrpcBackend::start("blue");
    let web = TestBackend::start("web").await;
    let yaml = yaml(&[("blue", &[&blue])], "blue: 100", "")
        .variant("admin: {", "shutdown: { grace: 20s }\nadmin: {")
        .variant(
            "routes:\n",
            "routes:\n  - name: web\n    match: { path_prefix: /slow }\n    split: { web: 100 }\n",
        )
        .variant(
            "pools:\n",
            &format!(
                "pools:\n  web:\n    backends: [{{ address: \"{}\" }}]\n",
                web.addr
            ),
        );
    let mut tg = Tidegate::start(&yaml).await;
    let ch = channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    assert_eq!(unary(&ch, "x").await.expect("warm"), "blue");
    // 30 slow calls in flight on one HTTP/2 connection when SIGTERM comes, and a plain
    // HTTP/2 client (nghttp, printing the frames it gets) with a slow request of its own.
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let ch = ch.clone();
            tokio::spawn(async move { unary(&ch, "sleep:1500").await })
        })
        .collect();
    let nghttp = tokio::process::Command::new("nghttp")
        .args(["-v", "-n", &tg.url("/slow?ms=1500")])
        .output();
    let nghttp = tokio::spawn(nghttp);
    wait_for("31 calls in flight", Duration::from_secs(10), || async {
        let st = status(&tg).await;
        (st["pools"]["blue"]["in_flight"]["grpc"] == 30
            && st["pools"]["web"]["in_flight"]["http"] == 1)
            .then_some(())
    })
    .await;
    tg.signal(libc::SIGTERM);
    for c in calls {
        assert_eq!(
            c.await.unwrap().expect("a call in flight at SIGTERM"),
            "blue"
        );
    }
    let out = nghttp.await.unwrap().expect("run nghttp");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("recv GOAWAY frame"), "no GOAWAY:\n{text}");
    let exit = tg.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "{exit:?}\n{}", tg.logs());
    let err = unary(&ch, "x").await.expect_err("after exit");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_health_checks_take_a_not_serving_backend_out_and_back() {
    let one = GrpcBackend::start("one");
    let two = GrpcBackend::start("two");
    let hc = "    health_check: { grpc: true, interval: 100ms, timeout: 1s, rise: 1, fall: 1 }\n";
    let tg = Tidegate::start(&yaml(&[("app", &[&one, &two])], "app: 100", hc)).await;
    let healthy =
        |st: &serde_json::Value, i: usize| st["pools"]["app"]["backends"][i]["healthy"].clone();
    wait_for("both healthy", Duration::from_secs(10), || async {
        let st = status(&tg).await;
        (healthy(&st, 0) == true && healthy(&st, 1) == true).then_some(())
    })
    .await;
    two.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    wait_for("two unhealthy", Duration::from_secs(10), || async {
        (healthy(&status(&tg).await, 1) == false).then_some(())
    })
    .await;
    let ch = channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    for _ in 0..20 {
        assert_eq!(unary(&ch, "x").await.expect("unary"), "one");
    }
    two.health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    wait_for("two healthy again", Duration::from_secs(10), || async {
        (healthy(&status(&tg).await, 1) == true).then_some(())
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(unary(&ch, "x").await.expect("unary"));
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        tg.logs().contains("NOT_SERVING"),
        "the reason is logged:\n{}",
        tg.logs()
    );
}

type OpenCall = (tonic::transport::Channel, tonic::Streaming<bytes::Bytes>);

/// Open `n` server-streaming calls at once, each on its own client connection (so nothing
/// serializes them before tidegate); the open streams and the refusals.
async fn burst(url: &str, n: usize) -> (Vec<OpenCall>, Vec<tonic::Status>) {
    let mut calls = Vec::new();
    for _ in 0..n {
        let ch = channel(url, None).await.expect("channel");
        calls.push(tokio::spawn(async move {
            stream(&ch, 50).await.map(|s| (ch, s))
        }));
    }
    let (mut open, mut refused) = (Vec::new(), Vec::new());
    for c in calls {
        match c.await.expect("join") {
            Ok(run) => open.push(run),
            Err(st) => refused.push(st),
        }
    }
    (open, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_calls_shares_upstream_connections_up_to_the_cap() {
    // Defaults (100 streams per connection): 30 calls opened at once ride one connection.
    let shared = GrpcBackend::start("shared");
    let tg = Tidegate::start(&yaml(&[("app", &[&shared])], "app: 100", "")).await;
    let (open, refused) = burst(&format!("http://{}", tg.listen), 30).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(open.len(), 30);
    assert_eq!(shared.open_streams(), 30);
    assert_eq!(
        connections_to(shared.addr.port()),
        1,
        "one upstream connection"
    );
    drop(open);

    // 10 streams per connection, 2 connections: 20 calls fit, the next 5 are refused with
    // UNAVAILABLE and a message that names the limits; never a third connection.
    let capped = GrpcBackend::start("capped");
    let h2 = "    h2: { max_streams: 10, max_connections: 2 }\n";
    let tg = Tidegate::start(&yaml(&[("app", &[&capped])], "app: 100", h2)).await;
    let url = format!("http://{}", tg.listen);
    let (open, refused) = burst(&url, 25).await;
    assert_eq!((open.len(), refused.len()), (20, 5), "{refused:?}");
    for st in &refused {
        assert_eq!(st.code(), Code::Unavailable, "{st:?}");
        assert!(st.message().contains("h2.max_connections"), "{st:?}");
    }
    assert_eq!(connections_to(capped.addr.port()), 2);
    assert_eq!(capped.open_streams(), 20);
    // Room again once calls end; the counts come back to zero.
    drop(open);
    wait_pool_idle(&tg, "app").await;
    let ch = channel(&url, None).await.expect("channel");
    assert_eq!(unary(&ch, "x").await.expect("unary"), "capped");
    assert!(connections_to(capped.addr.port()) <= 2);
}
