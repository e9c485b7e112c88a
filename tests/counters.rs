//! In-flight counters return to exactly zero on every way a request can end badly.

mod common;

use std::time::Duration;

use common::*;

fn single(addr: &std::net::SocketAddr, timeouts: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
timeouts: {timeouts}
routes:
  - name: app
    split: {{ blue: 1 }}
    retries: 0
pools:
  blue:
    backends: [{{ address: "{addr}", name: b1 }}]
"#
    )
}

fn zero() -> serde_json::Value {
    serde_json::json!({"http": 0, "sse": 0, "websocket": 0, "grpc": 0})
}

async fn wait_zero(tg: &Tidegate) {
    wait_status(tg, "every counter back to 0", |s| {
        s["in_flight"] == 0
            && s["pools"]["blue"]["in_flight"] == zero()
            && s["pools"]["blue"]["backends"][0]["in_flight"] == zero()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_mid_sse() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single(&blue.addr, "{}")).await;
    let mut sse = Sse::open(&tg.url("/events/push")).await;
    wait_status(&tg, "sse counted", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    blue.app.push("x");
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    drop(sse);
    wait_zero(&tg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_stream() {
    let mut blue = BackendProcess::start("blue").await;
    let tg = Tidegate::start(&single(&blue.addr, "{}")).await;
    let mut sse = Sse::open(&tg.url("/events?interval_ms=100")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    wait_status(&tg, "sse counted", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    blue.kill();
    // The client sees the stream end (the backend is gone), and nothing stays counted.
    let mut ended = false;
    for _ in 0..1000 {
        if !matches!(sse.next_data(Duration::from_secs(5)).await, Ok(Some(_))) {
            ended = true;
            break;
        }
    }
    assert!(ended);
    wait_zero(&tg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_request() {
    let mut blue = BackendProcess::start("blue").await;
    let addr = blue.addr;
    let tg = Tidegate::start(&single(&addr, "{}")).await;
    // A GET (idempotent) in the app's hands when it dies is held and sent again once the app
    // accepts again; a POST is not sent twice: 502.
    let url = tg.url("/slow?ms=2000");
    let slow = tokio::spawn(async move { get(&url).await });
    let post_url = tg.url("/slow?ms=10000");
    let posted = tokio::spawn(async move { post(&post_url, &[], "x").await });
    wait_status(&tg, "requests counted", |s| {
        s["pools"]["blue"]["in_flight"]["http"] == 2
    })
    .await;
    blue.kill();
    let r = posted.await.unwrap().expect("client gets an answer");
    assert_eq!(r.status, 502, "{}", r.body);
    let _back = BackendProcess::start_on("blue", addr).await;
    let r = slow.await.unwrap().expect("client gets an answer");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "slow hello from blue\n");
    wait_zero(&tg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_request_without_hold() {
    let mut blue = BackendProcess::start("blue").await;
    let yaml =
        single(&blue.addr, "{}").variant("retries: 0", "retries: 0\n    hold: { timeout: 0 }");
    let tg = Tidegate::start(&yaml).await;
    let url = tg.url("/slow?ms=10000");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_status(&tg, "request counted", |s| {
        s["pools"]["blue"]["in_flight"]["http"] == 1
    })
    .await;
    blue.kill();
    let r = slow.await.unwrap().expect("client gets an answer");
    assert_eq!(r.status, 502, "{}", r.body);
    wait_zero(&tg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_read_timeout() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single(&blue.addr, "{ upstream_read: 500ms }")).await;
    let r = get(&tg.url("/slow?ms=3000")).await.unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"], "gateway_timeout");
    wait_zero(&tg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_then_retry() {
    let good = TestBackend::start("good").await;
    let dead = format!("127.0.0.1:{}", free_port());
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
      - {{ address: "{dead}", name: b1 }}
      - {{ address: "{}", name: b2 }}
"#,
        good.addr
    );
    let tg = Tidegate::start(&yaml).await;
    for _ in 0..10 {
        assert_eq!(get(&tg.url("/")).await.unwrap().status, 200);
    }
    wait_status(&tg, "all zero after retries", |s| {
        s["in_flight"] == 0
            && s["pools"]["blue"]["in_flight"] == zero()
            && s["pools"]["blue"]["backends"]
                .as_array()
                .is_some_and(|bs| bs.iter().all(|b| b["in_flight"] == zero()))
    })
    .await;
}
