//! The access log, request ids and trace context, with the real binary: the shipped sidecar
//! config logs one JSON line per request on stdout with every documented key; each outcome
//! tidegate names appears on a request that came to it; ids are the same at the backend, in
//! the response and in the log; secrets never appear.

mod common;

use std::time::Duration;

use common::{recorder::Recorder, *};
use serde_json::Value;

/// The JSON keys the README documents (a contract: log pipelines parse them).
const KEYS: [&str; 26] = [
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
    "pick",
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
