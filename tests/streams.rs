//! Long-lived streams through the proxy: SSE passes unbuffered, WebSocket echo survives client
//! silence longer than the ordinary client read timeout.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn single_pool(addr: &std::net::SocketAddr, timeouts: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
timeouts: {timeouts}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends: [{{ address: "{addr}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_event_k_arrives_before_event_k_plus_1_is_sent() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single_pool(&blue.addr, "{}")).await;
    let mut sse = Sse::open(&tg.url("/events/push")).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.headers.get("content-type").unwrap(),
        "text/event-stream"
    );
    wait_for("backend stream open", Duration::from_secs(5), || async {
        (blue.app.sse_open() == 1).then_some(())
    })
    .await;
    for k in 1..=5 {
        // The backend sends event k only now; event k+1 does not exist yet, so a proxy that
        // buffered would never deliver k within the limit.
        assert_eq!(blue.app.push(&format!("event {k}")), 1);
        let got = sse
            .next_data(Duration::from_secs(5))
            .await
            .expect("event did not pass through");
        assert_eq!(got.as_deref(), Some(format!("event {k}").as_str()));
    }
    // A clean end from the backend is a clean end for the client.
    blue.app.push("__end__");
    assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_survives_silence_longer_than_client_read_timeout() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single_pool(
        &blue.addr,
        "{ client_read: 1s, websocket_idle: 30s }",
    ))
    .await;
    let mut ws = ws_connect(&format!("ws://{}/ws", tg.listen)).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    // Silence for 2.5 × client_read: a plain request body read would have timed out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    ws.send(Message::text("two")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("no echo");
    assert_eq!(echoed.unwrap().unwrap(), Message::text("two"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_idle_limit_applies() {
    // Control for the test above: the silence limit is the websocket_idle setting.
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single_pool(
        &blue.addr,
        "{ client_read: 30s, websocket_idle: 1s }",
    ))
    .await;
    let mut ws = ws_connect(&format!("ws://{}/ws", tg.listen)).await;
    ws.send(Message::text("one")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("one"));
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "silent WebSocket was not closed after websocket_idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&single_pool(&blue.addr, "{}")).await;
    let big = "y".repeat(8 << 20);
    let r = post(&tg.url("/upload"), &[], &big).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, format!("received {} bytes", 8 << 20));
    let r = get(&tg.url(&format!("/bytes?n={}", 8 << 20)))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 8 << 20);
}
