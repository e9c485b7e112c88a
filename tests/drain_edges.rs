//! Drains at their edges: a request held after its upstream connection died is not counted
//! on (and its dead socket is never touched by) the backend it left, so a drain deadline
//! there cannot hit an unrelated socket that reused the descriptor number.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_after_a_dead_connection_is_not_on_its_old_backend() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // Backend `a` reads each request and closes: the connection dies before an answer.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = read_request(&mut c, &mut buf).await;
            });
        }
    });
    let ws_app = TestBackend::start("ws").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: ws
    match: {{ path_prefix: /ws }}
    split: {{ b: 100 }}
  - name: app
    split: {{ a: 100 }}
    retries: 0
    hold: {{ timeout: 20s }}
pools:
  a:
    backends: [{{ address: "{a}" }}]
    drain: {{ requests_deadline: 1s }}
  b:
    backends: [{{ address: "{}" }}]
"#,
        ws_app.addr
    );
    let tg = Tidegate::start(&yaml).await;
    // GET (retried by default after a dead connection): fails on `a`, then waits in the hold.
    let url = tg.url("/held");
    let held = tokio::spawn(async move { get(&url).await });
    wait_for("the request held", Duration::from_secs(10), || async {
        let m = get(&tg.admin_url("/metrics")).await.ok()?.body;
        m.contains("tidegate_held_requests{route=\"app\"} 1")
            .then_some(())
    })
    .await;
    // New sockets now: the lowest free descriptor numbers, the dead connection's among them.
    let mut ws = ws_connect(&format!("ws://{}/ws", tg.listen)).await;
    // The held request is on no backend: `a` drains at once.
    let r = post(&tg.admin_url("/api/v1/pools/a/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_for("a drained", Duration::from_secs(5), || async {
        let s = get(&tg.admin_url("/api/v1/pools/a/drain"))
            .await
            .ok()?
            .json();
        (s["drained"] == true).then_some(s)
    })
    .await;
    assert_eq!(s["in_flight"]["http"], 0, "{s}");
    // Past the requests deadline, the WebSocket still works.
    let after_deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < after_deadline {
        ws.send(Message::Text("still here".into())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo")
            .expect("open")
            .expect("frame");
        assert_eq!(m.into_text().unwrap().as_str(), "still here");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !tg.logs().contains("ended at drain deadline"),
        "{}",
        tg.logs()
    );
    // The held request is released by the end of its hold (nothing to send it to).
    drop(held);
}

/// A pool drain's deadline ends streams oldest first across the pool, spread over
/// `close_spread`: four streams opened alternately on two backends end in the order they
/// were opened (backend by backend would end 1, 3, 2, 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_drain_ends_streams_oldest_first_across_backends() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100 }}
pools:
  blue:
    backends: [{{ address: "{}", name: b1 }}, {{ address: "{}", name: b2 }}]
    drain: {{ streams_deadline: 1s, close_spread: 3s }}
"#,
        b1.addr, b2.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let admin = |p: &str| tg.admin_url(&format!("/api/v1/pools/blue/backends/{p}"));
    let forever = r#"{"streams_deadline":"0","requests_deadline":"0"}"#;
    let mut streams = Vec::new();
    for (on, off) in [("b1", "b2"), ("b2", "b1"), ("b1", "b2"), ("b2", "b1")] {
        // Steer the next stream: only `on` takes new work.
        let _ = post(&admin(&format!("{on}/undrain")), &[], "")
            .await
            .unwrap();
        let r = post(
            &admin(&format!("{off}/drain")),
            &[("content-type", "application/json")],
            forever,
        )
        .await
        .unwrap();
        assert!([202, 409].contains(&r.status), "{}", r.body);
        let s = Sse::open(&tg.url("/events?interval_ms=100")).await;
        assert_eq!(s.headers["x-backend"], on);
        streams.push(s);
    }
    for b in ["b1", "b2"] {
        let _ = post(&admin(&format!("{b}/undrain")), &[], "")
            .await
            .unwrap();
    }
    let r = post(&tg.admin_url("/api/v1/pools/blue/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // Read every stream to its end; note when each ended.
    let ends = futures_util::future::join_all(streams.into_iter().enumerate().map(
        |(i, mut s)| async move {
            loop {
                match s.next_data(Duration::from_secs(15)).await {
                    Ok(Some(_)) => continue,
                    _ => return (std::time::Instant::now(), i),
                }
            }
        },
    ))
    .await;
    let mut order = ends.clone();
    order.sort();
    let order: Vec<usize> = order.into_iter().map(|(_, i)| i).collect();
    assert_eq!(order, [0, 1, 2, 3], "ended in the order opened");
}
