//! Active health checks (rise/fall, first pass for new backends) and the hold queue (held
//! while nothing is available, released by health, undrain or reload; bounded queue).

mod common;

use std::time::Duration;

use common::*;

fn healthy(s: &serde_json::Value, pool: &str, name: &str) -> Option<bool> {
    s["pools"][pool]["backends"]
        .as_array()?
        .iter()
        .find(|b| b["name"] == name)?["healthy"]
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_backend_gets_no_traffic_and_returns_after_rise_passes() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends:
      - {{ address: "{}", name: a }}
      - {{ address: "{}", name: b }}
    health_check: {{ path: /readyz, interval: 100ms, timeout: 1s, rise: 3, fall: 2 }}
"#,
        a.addr, b.addr
    );
    let tg = Tidegate::spawn(&yaml, &[]);
    // New backends take traffic only after their first passing check.
    tg.wait_ready().await;
    wait_status(&tg, "both healthy after a first pass", |s| {
        healthy(s, "blue", "a") == Some(true) && healthy(s, "blue", "b") == Some(true)
    })
    .await;
    assert!(a.app.readyz_hits() >= 1 && b.app.readyz_hits() >= 1);

    a.app.set_ready(false);
    wait_status(&tg, "a unhealthy", |s| {
        healthy(s, "blue", "a") == Some(false)
    })
    .await;
    let c = client();
    for _ in 0..30 {
        let r = send(&c, "GET", &tg.url("/"), &[], "").await.unwrap();
        assert_eq!(
            r.backend().as_deref(),
            Some("b"),
            "an unhealthy backend got traffic"
        );
    }
    let health = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(health["status"], "degraded");

    let checks_before = a.app.readyz_hits();
    a.app.set_ready(true);
    wait_status(&tg, "a healthy again", |s| {
        healthy(s, "blue", "a") == Some(true)
    })
    .await;
    assert!(
        a.app.readyz_hits() >= checks_before + 3,
        "came back before rise (3) passes"
    );
    let mut seen_a = false;
    for _ in 0..20 {
        seen_a |= send(&c, "GET", &tg.url("/"), &[], "")
            .await
            .unwrap()
            .backend()
            .as_deref()
            == Some("a");
    }
    assert!(seen_a, "traffic returns once healthy");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(m.contains("tidegate_backend_healthy{pool=\"blue\",backend=\"a\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_in_a_two_second_outage_are_held_and_succeed() {
    let mut app = BackendProcess::start("app").await;
    let addr = app.addr;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 1 }}
    hold: {{ timeout: 10s, max_queued: 100 }}
pools:
  app:
    backends: [{{ address: "{addr}" }}]
    health_check: {{ path: /readyz, interval: 100ms, timeout: 500ms, rise: 1, fall: 1, start_healthy: true }}
"#
    );
    let tg = Tidegate::start(&yaml).await;
    assert_eq!(get(&tg.url("/")).await.unwrap().status, 200);
    app.kill();
    // Requests made during the outage, some before and some after it is noticed.
    let mut reqs = Vec::new();
    for i in 0..10 {
        let url = tg.url("/");
        reqs.push(tokio::spawn(async move { get(&url).await }));
        if i == 4 {
            wait_status(&tg, "outage noticed", |s| {
                s["pools"]["app"]["backends"][0]["healthy"] == false
            })
            .await;
        }
    }
    wait_status(&tg, "requests held", |s| s["in_flight"].as_u64() >= Some(5)).await;
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    let held: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_held_requests{route=\"app\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no held gauge for route app:\n{m}"));
    assert!(held >= 1.0, "held gauge should be non-zero:\n{m}");
    tokio::time::sleep(Duration::from_secs(2)).await; // the outage itself, not a proof
    let _app = BackendProcess::start_on("app", addr).await;
    for r in reqs {
        let r = r.await.unwrap().expect("held request must get an answer");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body, "hello from app\n");
    }
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(m.contains("tidegate_held_requests{route=\"app\"} 0"));
    assert!(m.contains("tidegate_hold_timeouts_total{route=\"app\"} 0"));
}

fn drained_config(blue: &std::net::SocketAddr, max_queued: u32) -> String {
    format!(
        r#"
config_watch: false
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 1 }}
    hold: {{ timeout: 10s, max_queued: {max_queued} }}
pools:
  blue:
    backends: [{{ address: "{blue}" }}]
    state: draining
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_full_is_an_immediate_503_and_undrain_releases_the_held() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&drained_config(&blue.addr, 2)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let url = tg.url("/");
        held.push(tokio::spawn(async move { get(&url).await }));
    }
    wait_status(&tg, "two held", |s| s["in_flight"] == 2).await;
    // The third is refused at once, while the first two are still held.
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("hold queue full"));
    assert!(held.iter().all(|h| !h.is_finished()));
    assert_eq!(
        post(&tg.admin_url("/api/v1/pools/blue/undrain"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    for h in held {
        let r = h.await.unwrap().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend().as_deref(), Some("blue"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_adding_a_backend_releases_held_requests() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&drained_config(&blue.addr, 100)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let url = tg.url("/");
        held.push(tokio::spawn(async move { get(&url).await }));
    }
    wait_status(&tg, "three held", |s| s["in_flight"] == 3).await;
    let with_green = drained_config(&blue.addr, 100)
        .variant("split: { blue: 1 }", "split: { blue: 1, green: 1 }")
        .variant(
            "pools:\n",
            &format!(
                "pools:\n  green:\n    backends: [{{ address: \"{}\" }}]\n",
                green.addr
            ),
        )
        .variant("{listen}", &tg.listen.to_string())
        .variant("{admin}", &tg.admin.to_string());
    std::fs::write(&tg.config, with_green).unwrap();
    assert_eq!(
        post(&tg.admin_url("/api/v1/config/reload"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    for h in held {
        let r = tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .expect("not released")
            .unwrap()
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend().as_deref(), Some("green"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_timeout_is_a_503_with_retry_after() {
    let blue = TestBackend::start("blue").await;
    let tg =
        Tidegate::start(&drained_config(&blue.addr, 10).variant("timeout: 10s", "timeout: 500ms"))
            .await;
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.headers.get("retry-after").is_some());
    assert_eq!(r.json()["error"], "no_available_backend");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains("tidegate_hold_timeouts_total{route=\"app\"} 1"),
        "{m}"
    );
}
