//! Zero-downtime rollout: under constant plain-request load plus 50 SSE and 10 WebSocket
//! clients on blue, shift blue → green and drain blue. No request fails, every blue stream
//! continues until it ends by itself, and blue is drained promptly after the last one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shift_and_drain_under_load_with_60_streams() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = format!(
        r#"
config_watch: false
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    backends: [{{ address: "{}" }}]
    drain: {{ requests_deadline: 0, streams_deadline: 0 }}
  green:
    backends: [{{ address: "{}" }}]
"#,
        blue.addr, green.addr
    );
    let tg = Tidegate::start(&yaml).await;

    // Constant plain load.
    let load = Load::start(tg.url("/"), 3);

    // 50 SSE streams of 30 events each (every 200 ms), all on blue.
    let mut sse = Vec::new();
    for _ in 0..50 {
        let s = Sse::open(&tg.url("/events?interval_ms=200&count=30")).await;
        assert_eq!(s.headers.get("x-backend").unwrap(), "blue");
        sse.push(tokio::spawn(async move {
            let mut s = s;
            let mut n = 0;
            loop {
                match s.next_data(Duration::from_secs(10)).await {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => return Ok(n),
                    Err(e) => return Err(format!("after {n} events: {e}")),
                }
            }
        }));
    }
    // 10 WebSockets on blue, echoing every 200 ms for 5 s, then closing themselves.
    let mut ws = Vec::new();
    for _ in 0..10 {
        let mut w = ws_connect(&format!("ws://{}/ws", tg.listen)).await;
        ws.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(5);
            let mut n = 0;
            while Instant::now() < end {
                w.send(Message::text(format!("m{n}")))
                    .await
                    .map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) if t.as_str() == format!("m{n}") => n += 1,
                    other => return Err(format!("echo {n}: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            w.close(None).await.map_err(|e| e.to_string())?;
            Ok::<u32, String>(n)
        }));
    }
    wait_status(&tg, "60 streams on blue", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 50
            && s["pools"]["blue"]["in_flight"]["websocket"] == 10
    })
    .await;

    // Shift, then drain, with a wait pending.
    let split = post(
        &tg.admin_url("/api/v1/routes/app/split"),
        &[],
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    assert_eq!(split.unwrap().status, 200);
    assert_eq!(
        post(&tg.admin_url("/api/v1/pools/blue/drain"), &[], "")
            .await
            .unwrap()
            .status,
        202
    );
    let wait_url = tg.admin_url("/api/v1/pools/blue/drain/wait?timeout=60s");
    let waiter = tokio::spawn(async move { (get(&wait_url).await, Instant::now()) });
    let green_before = green.app.hits();
    wait_for("load on green", Duration::from_secs(10), || async {
        (green.app.hits() > green_before + 50).then_some(())
    })
    .await;

    let mut last_end = Instant::now();
    for h in sse {
        let n = h.await.unwrap().expect("an SSE stream was cut");
        assert_eq!(n, 30, "every event of every blue stream arrives");
        last_end = Instant::now();
    }
    for h in ws {
        let n = h.await.unwrap().expect("a WebSocket was cut");
        assert!(n >= 10, "WebSocket echoed only {n} times");
        last_end = Instant::now();
    }
    let (r, answered) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("wait did not answer")
        .unwrap();
    let j = r.unwrap().json();
    assert_eq!(j["drained"], true, "{j}");
    assert!(
        answered.saturating_duration_since(last_end) < Duration::from_secs(2),
        "drained answered late"
    );
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "requests failed during the rollout");
    assert!(ok > 100);
}
