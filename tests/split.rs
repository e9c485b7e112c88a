//! Weighted splits across pools and weighted picks inside a pool, over real traffic.

mod common;

use std::collections::HashMap;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_80_20_backend_weights_3_1_and_weight_zero_pool() {
    let blue_a = TestBackend::start("blue-a").await;
    let blue_b = TestBackend::start("blue-b").await;
    let green = TestBackend::start("green").await;
    let red = TestBackend::start("red").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 80, green: 20, red: 0 }}
pools:
  blue:
    backends:
      - {{ address: "{}", weight: 3 }}
      - {{ address: "{}", weight: 1 }}
  green:
    backends: [{{ address: "{}" }}]
  red:
    backends: [{{ address: "{}" }}]
"#,
        blue_a.addr, blue_b.addr, green.addr, red.addr
    );
    let tg = Tidegate::start(&yaml).await;

    // 1,000 requests from 8 concurrent keep-alive clients.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = tg.url("/");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            for _ in 0..125 {
                let r = send(&c, "GET", &url, &[], "")
                    .await
                    .expect("request failed");
                assert_eq!(r.status, 200, "{}", r.body);
                seen.push(r.backend().expect("x-backend"));
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for b in t.await.unwrap() {
            *counts.entry(b).or_default() += 1;
        }
    }
    let n = |k: &str| counts.get(k).copied().unwrap_or(0) as f64;
    let total = 1000.0;
    let blue = n("blue-a") + n("blue-b");
    assert_eq!(blue + n("green") + n("red"), total, "{counts:?}");
    let blue_pct = blue / total * 100.0;
    assert!(
        (77.0..=83.0).contains(&blue_pct),
        "blue {blue_pct}% {counts:?}"
    );
    let green_pct = n("green") / total * 100.0;
    assert!(
        (17.0..=23.0).contains(&green_pct),
        "green {green_pct}% {counts:?}"
    );
    assert_eq!(n("red"), 0.0, "weight-0 pool got traffic: {counts:?}");
    assert_eq!(red.app.hits(), 0);
    let a_share = n("blue-a") / blue * 100.0;
    assert!(
        (72.0..=78.0).contains(&a_share),
        "blue-a share of blue {a_share}% {counts:?}"
    );
    // The backends saw exactly what the clients saw.
    assert_eq!(blue_a.app.hits() as f64, n("blue-a"));
    assert_eq!(blue_b.app.hits() as f64, n("blue-b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_longest_prefix_and_404_json() {
    let web = TestBackend::start("web").await;
    let api = TestBackend::start("api").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: web
    match: {{ host: "*.example.com", path_prefix: / }}
    split: {{ web: 1 }}
  - name: api
    match: {{ host: ["api.example.com", "*.example.com"], path_prefix: /api }}
    split: {{ api: 1 }}
pools:
  web: {{ backends: [{{ address: "{}" }}] }}
  api: {{ backends: [{{ address: "{}" }}] }}
"#,
        web.addr, api.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let c = client();
    let r = send(
        &c,
        "GET",
        &tg.url("/api/x"),
        &[("host", "www.example.com")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.backend().as_deref(), Some("api"));
    let r = send(
        &c,
        "GET",
        &tg.url("/index"),
        &[("host", "WWW.Example.com:8080")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.backend().as_deref(), Some("web"));
    let r = send(
        &c,
        "GET",
        &tg.url("/api/x"),
        &[("host", "api.example.com")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.backend().as_deref(), Some("api"));
    // api.example.com has only /api: no fallback to the wildcard host (nginx/Envoy semantics).
    let r = send(&c, "GET", &tg.url("/"), &[("host", "api.example.com")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
    let r = send(&c, "GET", &tg.url("/"), &[("host", "other.org")], "")
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    // X-Forwarded-*: the client's address appended to the chain it sent, proto and host set
    // (a spoofed proto replaced).
    let r = send(
        &c,
        "GET",
        &tg.url("/headers"),
        &[
            ("host", "www.example.com"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await
    .unwrap();
    let h = r.json();
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h}");
    assert_eq!(h["x-forwarded-host"], "www.example.com", "{h}");
    assert_eq!(h["host"], "www.example.com", "{h}");
}
