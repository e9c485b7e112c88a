//! `GET /api/v1/events`: a status event at once, another within a second of a drain; 401
//! without the token; a client that disconnects leaves no stream behind.

mod common;

use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "events-test-token";

fn yaml(blue: std::net::SocketAddr, green: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}", token_env: TIDEGATE_ADMIN_TOKEN }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue: {{ backends: [{{ address: "{blue}" }}] }}
  green: {{ backends: [{{ address: "{green}" }}] }}
"#
    )
}

async fn start() -> (Tidegate, TestBackend, TestBackend) {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::spawn(
        &yaml(blue.addr, green.addr),
        &[("TIDEGATE_ADMIN_TOKEN", TOKEN)],
    );
    tg.wait_ready().await;
    (tg, blue, green)
}

fn auth() -> String {
    format!("Bearer {TOKEN}")
}

/// The next `status` event's JSON.
async fn next_status(s: &mut Sse) -> serde_json::Value {
    let data = s
        .next_data(Duration::from_secs(10))
        .await
        .expect("event")
        .expect("stream open");
    serde_json::from_str(&data).expect("event JSON")
}

#[tokio::test]
async fn a_drain_is_an_event_within_a_second() {
    let (tg, _b, _g) = start().await;
    let a = auth();
    let mut s = Sse::open_with(&tg.admin_url("/api/v1/events"), &[("authorization", &a)]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.headers["content-type"], "text/event-stream");
    let first = next_status(&mut s).await;
    assert_eq!(first["pools"]["green"]["state"], "active");
    assert!(first["now"].as_f64().unwrap() > 1.7e9);
    let r = send(
        &client(),
        "POST",
        &tg.admin_url("/api/v1/pools/green/drain"),
        &[("authorization", &a)],
        r#"{"streams_deadline":"10m"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let asked = Instant::now();
    loop {
        let ev = next_status(&mut s).await;
        if ev["pools"]["green"]["state"] == "drained" || ev["pools"]["green"]["state"] == "draining"
        {
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "event after {:?}",
                asked.elapsed()
            );
            assert_eq!(
                ev["pools"]["green"]["drain_deadlines"]["streams_deadline"],
                "10m"
            );
            assert!(ev["pools"]["green"]["drain_started_at"].as_f64().is_some());
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "no drain event");
    }
}

#[tokio::test]
async fn no_token_is_a_401_and_a_gone_client_leaves_nothing() {
    let (tg, _b, _g) = start().await;
    let r = get(&tg.admin_url("/api/v1/events")).await.unwrap();
    assert_eq!(r.status, 401);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let r = send(
        &client(),
        "GET",
        &tg.admin_url("/api/v1/events"),
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    let a = auth();
    let streams = |tg: &Tidegate| {
        let url = tg.admin_url("/api/v1/status");
        let a = a.clone();
        async move {
            let r = send(&client(), "GET", &url, &[("authorization", &a)], "")
                .await
                .ok()?;
            r.json()["event_streams"].as_u64()
        }
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = Sse::open_with(&tg.admin_url("/api/v1/events"), &[("authorization", &a)]).await;
        assert_eq!(
            next_status(&mut s).await["event_streams"],
            open.len() as u64 + 1
        );
        open.push(s);
    }
    assert_eq!(streams(&tg).await, Some(3));
    drop(open);
    wait_for("event streams closed", Duration::from_secs(15), || async {
        (streams(&tg).await == Some(0)).then_some(())
    })
    .await;
}
