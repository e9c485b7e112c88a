//! Every outcome the access log names, each on a request made to happen with the real
//! binary: refused at the edge, no route, maintenance, held then released (with its hold
//! time), hold timed out, no backend, retried, upstream error, timeout, client gone, spooled,
//! spool refused, replayed, a stream ended at a drain deadline and at shutdown (with its
//! lifetime), a WebSocket.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{recorder::Recorder, spool::*, *};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ms(l: &Value, key: &str) -> f64 {
    l[key].as_f64().unwrap_or_else(|| panic!("{key}: {l}"))
}

fn yaml(app: SocketAddr, extra_route: &str, extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
http: {{ max_request_header_bytes: 1024 }}
{extra}
routes:
  - name: app
    match: {{ path_prefix: /, methods: [GET, HEAD, POST] }}
    split: {{ app: 100 }}
    hold: {{ timeout: 400ms }}
{extra_route}
pools:
  app:
    backends: [{{ address: "{app}" }}]
    drain: {{ streams_deadline: 300ms, close_spread: 0s }}
"#
    )
}

async fn admin(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .unwrap()
}

/// Wait until the route holds `n` requests.
async fn held(tg: &Tidegate, n: u64) {
    let url = tg.admin_url("/metrics");
    let want = format!("tidegate_held_requests{{route=\"app\"}} {n}");
    wait_for(&want.clone(), Duration::from_secs(10), || {
        let (url, want) = (url.clone(), want.clone());
        async move {
            get(&url)
                .await
                .ok()
                .filter(|r| r.body.contains(&want))
                .map(drop)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_outcomes_refused_no_route_maintenance() {
    let app = TestBackend::start("app").await;
    let tg = Tidegate::start(&yaml(app.addr, "", "")).await;
    let c = client();
    let r = send(&c, "GET", &tg.url("/app/x"), &[("host", "bad host")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    let l = tg.access_line("bad host", |l| l["status"] == 400).await;
    assert_eq!(l["outcome"], "refused");
    assert_eq!(l["request_id"], r.json()["request_id"]);
    let big = "x".repeat(1500);
    let r = send(
        &client(),
        "GET",
        &tg.url("/app/big"),
        &[("x-big", &big)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 431);
    let l = tg.access_line("431", |l| l["status"] == 431).await;
    assert_eq!(l["outcome"], "refused");
    let r = send(&c, "PUT", &tg.url("/elsewhere"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let l = tg.access_line("404", |l| l["path"] == "/elsewhere").await;
    assert_eq!(l["outcome"], "no_route");
    assert!(l["route"].is_null());
    assert!(admin(&tg, "POST", "/api/v1/maintenance", "{}").await.status < 300);
    let r = send(&c, "GET", &tg.url("/app/m"), &[], "").await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.json()["request_id"].is_string(), "{}", r.body);
    let l = tg
        .access_line("maintenance", |l| l["path"] == "/app/m")
        .await;
    assert_eq!(l["outcome"], "maintenance");
    assert_eq!(l["route"], "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_outcomes_held_timed_out_no_backend_client_gone() {
    let app = TestBackend::start("app").await;
    let route2 = "  - name: nohold\n    match: { path_prefix: /nohold/ }\n    split: { app: 100 }\n    hold: { timeout: 0 }";
    let tg = Tidegate::start(&yaml(app.addr, route2, "")).await;
    assert_eq!(
        admin(&tg, "POST", "/api/v1/pools/app/drain", "")
            .await
            .status,
        202
    );
    // Timed out: about hold.timeout in the queue.
    let r = get(&tg.url("/app/timeout")).await.unwrap();
    assert_eq!(r.status, 503);
    let quoted = r.json()["request_id"].as_str().unwrap_or("").to_string();
    assert_eq!(
        quoted,
        r.headers["x-request-id"].to_str().unwrap(),
        "{}",
        r.body
    );
    let l = tg
        .access_line("hold timeout", |l| l["path"] == "/app/timeout")
        .await;
    assert_eq!(l["outcome"], "hold_timeout");
    assert!(ms(&l, "held_ms") >= 350.0, "{l}");
    // No backend and no holding.
    let r = get(&tg.url("/nohold/x")).await.unwrap();
    assert_eq!(r.status, 503);
    let l = tg
        .access_line("no backend", |l| l["path"] == "/nohold/x")
        .await;
    assert_eq!(l["outcome"], "no_backend");
    assert_eq!(ms(&l, "held_ms"), 0.0);
    // The client leaves while held: 499, client_gone.
    let mut s = tokio::net::TcpStream::connect(tg.listen).await.unwrap();
    s.write_all(b"GET /app/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    held(&tg, 1).await;
    drop(s);
    let l = tg
        .access_line("client gone", |l| l["path"] == "/app/gone")
        .await;
    assert_eq!(l["outcome"], "client_gone");
    assert_eq!(l["status"], 499);
    // Held, then released by the undrain: its hold time is logged.
    let url = tg.url("/app/held");
    let waiting = tokio::spawn(async move { get(&url).await });
    held(&tg, 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        admin(&tg, "POST", "/api/v1/pools/app/undrain", "")
            .await
            .status,
        200
    );
    assert_eq!(waiting.await.unwrap().unwrap().status, 200);
    let l = tg.access_line("held", |l| l["path"] == "/app/held").await;
    assert_eq!(l["outcome"], "held");
    assert!(
        ms(&l, "held_ms") >= 90.0 && ms(&l, "held_ms") < 400.0,
        "{l}"
    );
    assert_eq!(l["pool"], "app");
}

/// A backend that reads a request and closes without answering.
async fn closer() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_outcomes_retried_error_timeout() {
    let app = TestBackend::start("app").await;
    let dead = dead_addr();
    let bad = closer().await;
    let routes = r#"  - name: broken
    match: { path_prefix: /broken/ }
    split: { broken: 100 }
    hold: { timeout: 0 }
  - name: two
    match: { path_prefix: /two/ }
    split: { two: 100 }"#;
    let pools = format!(
        "  broken:\n    backends: [{{ address: \"{bad}\" }}]\n  two:\n    backends: [{{ address: \"{dead}\" }}, {{ address: \"{}\" }}]\n",
        app.addr
    );
    let text = yaml(app.addr, routes, "timeouts: { upstream_read: 300ms }")
        .variant("pools:\n", &format!("pools:\n{pools}"));
    let tg = Tidegate::start(&text).await;
    // Retried: one of the first requests meets the refusing backend, then the live one.
    for i in 0..4 {
        let r = get(&tg.url(&format!("/two/{i}"))).await.unwrap();
        assert_eq!(r.status, 200);
    }
    let l = tg
        .access_line("retried", |l| l["outcome"] == "retried")
        .await;
    assert_eq!(l["attempts"], 2);
    assert_eq!(l["backend"], app.addr.to_string());
    // Upstream error: the backend closes without answering.
    let r = get(&tg.url("/broken/x")).await.unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json()["request_id"],
        r.headers["x-request-id"].to_str().unwrap(),
        "{}",
        r.body
    );
    let l = tg.access_line("502", |l| l["path"] == "/broken/x").await;
    assert_eq!(l["outcome"], "upstream_error");
    assert!(l["error"].is_string(), "{l}");
    // Timeout: no answer within upstream_read.
    let r = get(&tg.url("/slow?ms=3000")).await.unwrap();
    assert_eq!(r.status, 504);
    let l = tg.access_line("504", |l| l["path"] == "/slow").await;
    assert_eq!(l["outcome"], "timeout");
    assert!(ms(&l, "duration_ms") >= 290.0, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_outcomes_drain_deadline_websocket_and_shutdown() {
    let app = TestBackend::start("app").await;
    let mut tg = Tidegate::start(&yaml(app.addr, "", "shutdown: { grace: 300ms }")).await;
    let mut sse = Sse::open(&tg.url("/events?interval_ms=50&count=0")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        admin(&tg, "POST", "/api/v1/pools/app/drain", "")
            .await
            .status,
        202
    );
    let l = tg
        .access_line("sse ended", |l| l["path"] == "/events")
        .await;
    assert_eq!(l["kind"], "sse");
    assert_eq!(l["outcome"], "drain_deadline");
    assert!(ms(&l, "duration_ms") >= 300.0, "its lifetime: {l}");
    assert_eq!(
        admin(&tg, "POST", "/api/v1/pools/app/undrain", "")
            .await
            .status,
        200
    );
    // A WebSocket closed by its client.
    let ws_url = tg.url("/ws").replace("http://", "ws://");
    let mut ws = ws_connect(&ws_url).await;
    ws.close(None).await.unwrap();
    let l = tg.access_line("ws", |l| l["path"] == "/ws").await;
    assert_eq!(l["kind"], "websocket");
    assert_eq!(l["status"], 101);
    // Shutdown: the stream's line is written before the process exits.
    let mut sse = Sse::open(&tg.url("/events?interval_ms=50&count=0&n=2")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    tg.signal(libc::SIGTERM);
    tg.wait_exit(Duration::from_secs(10)).await;
    let lines = tg.access_lines();
    let l = lines
        .iter()
        .filter(|l| l["path"] == "/events")
        .nth(1)
        .unwrap_or_else(|| panic!("no shutdown line:\n{}", tg.logs()));
    assert_eq!(l["outcome"], "shutdown");
    assert_eq!(l["kind"], "sse");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_outcomes_spooled_refused_replayed_with_the_same_request_id() {
    let mut rec = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    rec.stop();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&fast_yaml(rec.addr, dir.path(), ", max_body: 64")).await;
    let c = client();
    let r = send(
        &c,
        "POST",
        &tg.url("/hooks/a"),
        &[("x-request-id", "hook-1")],
        "{\"n\":1}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    let l = tg
        .access_line("spooled", |l| {
            l["path"] == "/hooks/a" && l["outcome"] == "spooled"
        })
        .await;
    assert_eq!(l["spool_id"], id);
    assert_eq!(l["status"], 202);
    assert_eq!(l["request_id"], "hook-1");
    let r = send(&c, "POST", &tg.url("/hooks/big"), &[], &"x".repeat(200))
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    let l = tg.access_line("413", |l| l["path"] == "/hooks/big").await;
    assert_eq!(l["outcome"], "spool_refused");
    rec.listen().await;
    let l = tg
        .access_line("replayed", |l| l["outcome"] == "replayed")
        .await;
    assert_eq!(l["spool_id"], id);
    assert_eq!(l["request_id"], "hook-1", "the id the client got at 202");
    assert_eq!(l["status"], 200);
    assert_eq!(l["method"], "POST");
    assert_eq!(l["route"], "hooks");
    assert_eq!(rec.seen()[0].header("x-request-id"), "hook-1");
}
