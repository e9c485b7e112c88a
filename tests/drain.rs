//! Drain: new traffic moves away at once, in-flight work (plain, SSE, WebSocket) continues,
//! `drained` and the long-poll fire when the last item ends, deadlines end work politely.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{protocol::frame::coding::CloseCode, Message};

fn blue_green(blue: &std::net::SocketAddr, green: &std::net::SocketAddr, extra: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
{extra}
routes:
  - name: app
    split: {{ blue: 50, green: 50 }}
pools:
  blue:
    backends: [{{ address: "{blue}" }}]
    drain: {{ requests_deadline: 0, streams_deadline: 0 }}
  green:
    backends: [{{ address: "{green}" }}]
"#
    )
}

async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .expect("admin request")
}

/// A request that reached blue and is still open, in each of the three kinds.
enum Open {
    Sse(Sse),
    Ws(Ws),
    Slow(tokio::task::JoinHandle<Result<Resp, String>>),
}

async fn open_on_blue(tg: &Tidegate, blue: &TestBackend, kind: &str) -> Open {
    // Split 50/50 and no affinity: open until one lands on blue (green ones are closed).
    for _ in 0..20 {
        let before = blue.app.hits();
        let open = match kind {
            "sse" => Open::Sse(Sse::open(&tg.url("/events/push")).await),
            "websocket" => Open::Ws(ws_connect(&format!("ws://{}/ws", tg.listen)).await),
            _ => {
                let url = tg.url("/slow?ms=2500");
                Open::Slow(tokio::spawn(async move { get(&url).await }))
            }
        };
        wait_for(
            "request reached a backend",
            Duration::from_secs(5),
            || async {
                let s = get(&tg.admin_url("/api/v1/status")).await.ok()?.json();
                let n = s["in_flight"].as_u64()?;
                (n >= 1).then_some(())
            },
        )
        .await;
        if blue.app.hits() > before {
            return open;
        }
        drop(open);
        wait_status(tg, "green request gone", |s| s["in_flight"] == 0).await;
    }
    panic!("nothing landed on blue in 20 tries");
}

async fn drain_while_open(kind: &str) {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&blue_green(&blue.addr, &green.addr, "")).await;
    let mut open = open_on_blue(&tg, &blue, kind).await;

    let r = api(&tg, "POST", "/api/v1/pools/blue/drain", "").await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["state"], "draining");
    // A long-poll already pending when the last item ends must return promptly.
    let wait_url = tg.admin_url("/api/v1/pools/blue/drain/wait?timeout=60s");
    let waiter = tokio::spawn(async move {
        let r = get(&wait_url).await;
        (r, Instant::now())
    });

    // New requests all go to green.
    let c = client();
    for _ in 0..20 {
        let r = send(&c, "GET", &tg.url("/"), &[], "").await.unwrap();
        assert_eq!(r.backend().as_deref(), Some("green"));
    }
    let st = api(&tg, "GET", "/api/v1/pools/blue/drain", "").await.json();
    assert_eq!(st["state"], "draining");
    assert_eq!(st["drained"], false);
    assert_eq!(
        st["in_flight"][if kind == "slow" { "http" } else { kind }],
        1,
        "{st}"
    );
    if kind != "slow" {
        let s = &st["streams"][0];
        assert_eq!(s["kind"], kind);
        assert_eq!(
            s["path"],
            if kind == "sse" { "/events/push" } else { "/ws" }
        );
        assert!(s["age_seconds"].as_f64().unwrap() > 0.0);
        assert_eq!(
            s["client"].as_str().unwrap().split(':').next(),
            Some("127.0.0.1")
        );
    }
    let health = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(health["status"], "degraded");

    // The open item keeps working, then ends by itself.
    let ended_at = match &mut open {
        Open::Sse(sse) => {
            for k in 0..3 {
                assert_eq!(blue.app.push(&format!("e{k}")), 1);
                assert_eq!(
                    sse.next_data(Duration::from_secs(5))
                        .await
                        .unwrap()
                        .as_deref(),
                    Some(format!("e{k}").as_str())
                );
            }
            blue.app.push("__end__");
            assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
            Instant::now()
        }
        Open::Ws(ws) => {
            ws.send(Message::text("still here")).await.unwrap();
            assert_eq!(
                ws.next().await.unwrap().unwrap(),
                Message::text("still here")
            );
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
            Instant::now()
        }
        Open::Slow(h) => {
            let r = h.await.unwrap().unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.backend().as_deref(), Some("blue"));
            Instant::now()
        }
    };
    let (r, answered_at) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("wait did not return")
        .unwrap();
    let j = r.unwrap().json();
    assert_eq!(j["drained"], true, "{j}");
    assert_eq!(j["state"], "drained");
    assert!(j["drained_at"].as_f64().is_some());
    // Notification, not polling: well under a second (the contract is 100 ms on a quiet box).
    let lag = answered_at.saturating_duration_since(ended_at);
    assert!(
        lag < Duration::from_secs(1),
        "wait answered {lag:?} after the last item ended"
    );

    // Undrain returns traffic to blue.
    let r = api(&tg, "POST", "/api/v1/pools/blue/undrain", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "active");
    let before = blue.app.hits();
    for _ in 0..10 {
        send(&c, "GET", &tg.url("/"), &[], "").await.unwrap();
    }
    assert!(blue.app.hits() >= before + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_with_an_sse_stream_open() {
    drain_while_open("sse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_with_a_websocket_open() {
    drain_while_open("websocket").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_with_a_slow_request_open() {
    drain_while_open("slow").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_deadline_ends_sse_cleanly_and_websocket_with_1001() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = blue_green(&blue.addr, &green.addr, "").variant(
        "split: { blue: 50, green: 50 }",
        "split: { blue: 100, green: 0 }",
    );
    let tg = Tidegate::start(&yaml).await;
    let mut sse = Sse::open(&tg.url("/events?interval_ms=200")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    let mut ws = ws_connect(&format!("ws://{}/ws", tg.listen)).await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));

    let t0 = Instant::now();
    let r = api(
        &tg,
        "POST",
        "/api/v1/pools/blue/drain",
        r#"{"streams_deadline":"2s","close_spread":"0"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // SSE: events keep coming until the deadline, then a clean end of stream (not a reset).
    let mut events = 0;
    let sse_end = loop {
        match sse.next_data(Duration::from_secs(10)).await {
            Ok(Some(_)) => events += 1,
            Ok(None) => break Instant::now(),
            Err(e) => panic!("SSE stream was cut, not ended cleanly: {e}"),
        }
    };
    assert!(
        events >= 3,
        "stream should have kept flowing until the deadline"
    );
    assert!(sse_end.duration_since(t0) >= Duration::from_millis(1900));
    // WebSocket: a close frame with 1001.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame in time");
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let j = api(&tg, "GET", "/api/v1/pools/blue/drain/wait?timeout=10s", "")
        .await
        .json();
    assert_eq!(j["drained"], true, "{j}");
    let logs = tg.logs();
    assert!(
        logs.contains("ended at drain deadline")
            && logs.contains("kind=\"sse\"")
            && logs.contains("kind=\"websocket\""),
        "{logs}"
    );
    assert!(
        logs.contains("path=/events") && logs.contains("path=/ws"),
        "{logs}"
    );
    assert!(logs.contains("drain deadline reached"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_spread_spreads_twenty_stream_ends_over_the_window() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = blue_green(&blue.addr, &green.addr, "").variant(
        "split: { blue: 50, green: 50 }",
        "split: { blue: 100, green: 0 }",
    );
    let tg = Tidegate::start(&yaml).await;
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = Sse::open(&tg.url("/events?interval_ms=100")).await;
        assert!(s.next_data(Duration::from_secs(5)).await.unwrap().is_some());
        streams.push(s);
    }
    let r = api(
        &tg,
        "POST",
        "/api/v1/pools/blue/drain",
        r#"{"streams_deadline":"1s","close_spread":"3s"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let ends: Vec<Instant> =
        futures_util::future::join_all(streams.into_iter().map(|mut s| async move {
            loop {
                match s.next_data(Duration::from_secs(15)).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return Instant::now(),
                    Err(e) => panic!("stream cut: {e}"),
                }
            }
        }))
        .await;
    let first = *ends.iter().min().unwrap();
    let last = *ends.iter().max().unwrap();
    assert!(
        last.duration_since(first) >= Duration::from_millis(1800),
        "ends were not spread: {:?}",
        last.duration_since(first)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn state_draining_in_the_file_drains_and_active_undrains() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let declared = blue_green(&blue.addr, &green.addr, "").variant(
        &format!("backends: [{{ address: \"{}\" }}]\n", green.addr),
        &format!(
            "backends: [{{ address: \"{}\" }}]\n    state: draining\n",
            green.addr
        ),
    );
    assert!(declared.contains("state: draining"));
    let tg = Tidegate::start(&declared).await;
    assert_eq!(
        api(&tg, "GET", "/api/v1/pools/green/drain", "")
            .await
            .json()["state"],
        "drained"
    );
    let st = api(&tg, "GET", "/api/v1/status", "").await.json();
    assert_eq!(st["pools"]["green"]["file_state"], "draining");
    assert_eq!(st["pools"]["green"]["state"], "drained");
    for _ in 0..10 {
        assert_eq!(
            get(&tg.url("/")).await.unwrap().backend().as_deref(),
            Some("blue")
        );
    }
    // Back to active in the file: undrained by the reload.
    tg.rewrite_config(&blue_green(&blue.addr, &green.addr, ""));
    assert_eq!(
        api(&tg, "POST", "/api/v1/config/reload", "").await.status,
        200
    );
    assert_eq!(
        api(&tg, "GET", "/api/v1/pools/green/drain", "")
            .await
            .json()["state"],
        "active"
    );
    let before = green.app.hits();
    for _ in 0..10 {
        get(&tg.url("/")).await.unwrap();
    }
    assert!(green.app.hits() >= before + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_pool_is_reported_until_its_stream_ends() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = blue_green(&blue.addr, &green.addr, "").variant(
        "split: { blue: 50, green: 50 }",
        "split: { blue: 100, green: 0 }",
    );
    let tg = Tidegate::start(&yaml).await;
    let mut sse = Sse::open(&tg.url("/events/push")).await;
    wait_status(&tg, "sse counted", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    // The new file has no blue pool at all.
    let green_only = format!(
        "listeners: [{{ name: public, address: \"{}\" }}]\nadmin: {{ address: \"{}\" }}\nroutes:\n  - name: app\n    split: {{ green: 1 }}\npools:\n  green:\n    backends: [{{ address: \"{}\" }}]\n",
        tg.listen, tg.admin, green.addr
    );
    std::fs::write(&tg.config, green_only).unwrap();
    assert_eq!(
        api(&tg, "POST", "/api/v1/config/reload", "").await.status,
        200
    );
    let st = api(&tg, "GET", "/api/v1/status", "").await.json();
    let removed = st["removed"].as_array().unwrap();
    assert_eq!(removed.len(), 1, "{st}");
    assert_eq!(removed[0]["state"], "removed");
    assert_eq!(removed[0]["in_flight"]["sse"], 1);
    let d = api(&tg, "GET", "/api/v1/pools/blue/drain", "").await.json();
    assert_eq!(d["state"], "removed");
    assert_eq!(d["streams"][0]["path"], "/events/push");
    // The stream still flows, then ends; the removed pool disappears.
    blue.app.push("still");
    assert_eq!(
        sse.next_data(Duration::from_secs(5))
            .await
            .unwrap()
            .as_deref(),
        Some("still")
    );
    blue.app.push("__end__");
    assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
    wait_status(&tg, "removed list empty", |s| {
        s["removed"].as_array().is_some_and(|r| r.is_empty())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_deadline_ends_a_slow_plain_request() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = blue_green(&blue.addr, &green.addr, "").variant(
        "split: { blue: 50, green: 50 }",
        "split: { blue: 100, green: 0 }",
    );
    let tg = Tidegate::start(&yaml).await;
    let url = tg.url("/slow?ms=30000");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_status(&tg, "request counted", |s| {
        s["pools"]["blue"]["in_flight"]["http"] == 1
    })
    .await;
    let t0 = Instant::now();
    let r = api(
        &tg,
        "POST",
        "/api/v1/pools/blue/drain",
        r#"{"requests_deadline":"1s"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("request was not ended")
        .unwrap()
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(900));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "ended");
    let j = api(&tg, "GET", "/api/v1/pools/blue/drain/wait?timeout=10s", "")
        .await
        .json();
    assert_eq!(j["drained"], true);
    let logs = tg.logs();
    assert!(
        logs.contains("ended at drain deadline")
            && logs.contains("kind=\"http\"")
            && logs.contains("path=/slow"),
        "{logs}"
    );
}

/// A drain status lists a bounded number of streams, the oldest first, with the total.
#[tokio::test]
async fn stream_lists_are_bounded_oldest_first() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = blue_green(&blue.addr, &green.addr, "")
        .variant("blue: 50, green: 50", "blue: 100, green: 0");
    let tg = Tidegate::start(&yaml).await;
    let mut open = Vec::new();
    for _ in 0..5 {
        let s = Sse::open(&tg.url("/events/push")).await;
        assert_eq!(s.status, 200);
        open.push(s);
        // Each stream is seen by the proxy before the next opens (distinct ages).
        let n = open.len() as u64;
        wait_for("stream tracked", Duration::from_secs(5), || async {
            let d = api(&tg, "GET", "/api/v1/pools/blue/drain", "").await.json();
            (d["in_flight"]["sse"] == n).then_some(())
        })
        .await;
    }
    let all = api(&tg, "GET", "/api/v1/pools/blue/drain", "").await.json();
    let all = all["streams"].as_array().unwrap().clone();
    assert_eq!(all.len(), 5, "the default limit is 100");
    let started: Vec<f64> = all
        .iter()
        .map(|s| s["started_at"].as_f64().unwrap())
        .collect();
    assert!(
        started.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {started:?}"
    );
    let d = api(&tg, "GET", "/api/v1/pools/blue/drain?streams=2", "")
        .await
        .json();
    assert_eq!(d["streams_total"], 5);
    let listed = d["streams"].as_array().unwrap();
    let listed_started: Vec<f64> = listed
        .iter()
        .map(|s| s["started_at"].as_f64().unwrap())
        .collect();
    assert_eq!(listed_started, started[..2], "the two oldest");
    let oldest = d["oldest_stream_age_seconds"].as_f64().unwrap();
    assert_eq!(oldest, listed[0]["age_seconds"].as_f64().unwrap());
    let r = api(&tg, "GET", "/api/v1/pools/blue/drain?streams=10001", "").await;
    assert_eq!(r.status, 400);
    drop(open);
}
