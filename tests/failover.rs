//! Connect failures: retried on another backend of the pool; all failed → 502 JSON.

mod common;

use common::*;

/// An address where nothing listens (bound, then closed).
fn refusing_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_refusing_backend_costs_no_client_errors() {
    let good = TestBackend::start("good").await;
    let dead = refusing_addr();
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 1 }}
    retries: 1
pools:
  blue:
    backends:
      - {{ address: "{dead}", name: dead }}
      - {{ address: "{}", name: good }}
"#,
        good.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = tg.url("/");
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut errors = 0;
            for i in 0..50 {
                // POSTs too: nothing reached the dead backend, so retrying them is safe.
                let method = if i % 2 == 0 { "GET" } else { "POST" };
                match send(&c, method, &url, &[], "payload").await {
                    Ok(r) if r.status == 200 && r.backend().as_deref() == Some("good") => {}
                    other => {
                        eprintln!("{other:?}");
                        errors += 1
                    }
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap();
    }
    assert_eq!(errors, 0, "client-visible errors; log:\n{}", tg.logs());
    assert_eq!(good.app.hits(), 200);
    let status = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    let backends = status["pools"]["blue"]["backends"]
        .as_array()
        .unwrap()
        .clone();
    let dead_b = backends.iter().find(|b| b["name"] == "dead").unwrap();
    // Passive health: the first refused connect marks it down, so the 200 requests do not
    // each try it again; only the background probe (50 ms doubling) keeps knocking.
    // Requests' own failed connects are in the log (the probe's grow with time, so the
    // counter is only bounded below by them).
    let by_requests = tg.logs().matches("upstream connect failed").count() as u64;
    assert!((1..=20).contains(&by_requests), "{}", tg.logs());
    let failures = dead_b["connect_failures"].as_u64().unwrap();
    assert!(failures >= by_requests, "{dead_b}");
    assert_eq!(dead_b["healthy"], false, "{dead_b}");
    assert_eq!(dead_b["available"], false, "{dead_b}");
    let url = tg.admin_url("/api/v1/status");
    wait_for(
        "backend in_flight back to 0",
        std::time::Duration::from_secs(5),
        || async {
            let s = get(&url).await.ok()?.json();
            let all_zero = s["pools"]["blue"]["backends"].as_array()?.iter().all(|b| {
                b["in_flight"]
                    == serde_json::json!({"http": 0, "sse": 0, "websocket": 0, "grpc": 0})
            });
            all_zero.then_some(())
        },
    )
    .await;
    assert!(tg.logs().contains("upstream connect failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_refusing_is_a_502_json() {
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 1 }}
    retries: 2
    hold: {{ timeout: 0 }}
pools:
  blue:
    backends:
      - {{ address: "{}" }}
      - {{ address: "{}" }}
"#,
        refusing_addr(),
        refusing_addr()
    );
    let tg = Tidegate::start(&yaml).await;
    let r = get(&tg.url("/x")).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    assert_eq!(r.json()["error"], "bad_gateway");
    let status = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    let failures: u64 = status["pools"]["blue"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["connect_failures"].as_u64().unwrap())
        .sum();
    // The background probe of the two down backends adds to the same counter: the
    // request's own attempts are counted in its log lines.
    assert!(failures >= 2, "each backend tried once: {status}");
    assert_eq!(
        tg.logs().matches("upstream connect failed").count(),
        2,
        "each backend tried once by the request: {}",
        tg.logs()
    );
    // The context is dropped just after the response is written: poll for zero.
    let url = tg.admin_url("/api/v1/status");
    wait_for(
        "in_flight back to 0",
        std::time::Duration::from_secs(5),
        || async { (get(&url).await.ok()?.json()["in_flight"] == 0).then_some(()) },
    )
    .await;
}
