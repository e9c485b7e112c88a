//! Concurrent drains and undrains of one pool and one backend (issue 32, item 2): a
//! black-box probe toggling them about a thousand times a second on one proxy without a
//! store. Every success answered is a real transition, so successes alternate: drains and
//! undrains answered 2xx differ by at most one, in the direction of the final state; and
//! once the calls end the status, the metrics and the `state_file` agree with each other.

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::*;

async fn toggle(tg: &Tidegate, target: &str, workers: usize, run_for: Duration) -> (u64, u64) {
    let drains = Arc::new(AtomicU64::new(0));
    let undrains = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers {
        let base = tg.admin_url(target);
        let (drains, undrains) = (drains.clone(), undrains.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let end = Instant::now() + run_for;
            let mut i = w;
            while Instant::now() < end {
                let undrain = i % 2 == 1;
                i += 1 + (w % 3);
                let path = if undrain { "/undrain" } else { "/drain" };
                let r = send(&c, "POST", &format!("{base}{path}"), &[], "")
                    .await
                    .expect("admin answers");
                match (undrain, r.status) {
                    (false, 202) => drains.fetch_add(1, Ordering::SeqCst),
                    (true, 200) => undrains.fetch_add(1, Ordering::SeqCst),
                    (_, 409) => 0,
                    (_, s) => panic!("{path}: {s} {}", r.body),
                };
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    (
        drains.load(Ordering::SeqCst),
        undrains.load(Ordering::SeqCst),
    )
}

fn metric_state(text: &str, backend: &str) -> Vec<String> {
    text.lines()
        .filter(|l| {
            l.starts_with("tidegate_backend_state{")
                && l.contains(&format!("backend=\"{backend}\""))
        })
        .filter(|l| l.trim_end().ends_with(" 1"))
        .filter_map(|l| {
            l.split("state=\"")
                .nth(1)?
                .split('"')
                .next()
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answered_transition_is_real_and_everything_agrees_after() {
    let b1 = TestBackend::start("b1").await;
    let b2 = TestBackend::start("b2").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: {}
routes:
  - name: app
    split: {{ blue: 100 }}
pools:
  blue:
    drain: {{ requests_deadline: 1m, streams_deadline: 1m }}
    backends: [{{ address: "{}", name: b1 }}, {{ address: "{}", name: b2 }}]
"#,
        state.display(),
        b1.addr,
        b2.addr
    );
    let tg = Tidegate::start(&yaml).await;
    // Requests in flight meanwhile: drains go draining → drained as they end, racing the
    // toggles.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (url, stop) = (tg.url("/"), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::SeqCst) {
                let _ = send(&c, "GET", &url, &[], "").await;
            }
        }));
    }
    for round in 0..2 {
        for (target, backend) in [
            ("/api/v1/pools/blue", None),
            ("/api/v1/pools/blue/backends/b2", Some("b2")),
        ] {
            let (d, u) = toggle(&tg, target, 16, Duration::from_millis(1500)).await;
            eprintln!("round {round} {target}: {d} drains, {u} undrains answered success");
            assert!(
                d > 20 && u > 20,
                "round {round} {target}: too few ({d}, {u})"
            );
            let s: serde_json::Value = get(&tg.admin_url(&format!("{target}/drain")))
                .await
                .expect("drain status")
                .json();
            let st = s["state"].as_str().unwrap_or_default().to_string();
            let draining = st != "active";
            assert_eq!(
                d,
                u + u64::from(draining),
                "round {round} {target}: {d} drains and {u} undrains answered success, final state {st}"
            );
            // The state file names the drain exactly when there is one.
            let saved: serde_json::Value =
                wait_for("state file", Duration::from_secs(5), || async {
                    let bytes = std::fs::read(&state).ok()?;
                    serde_json::from_slice(&bytes).ok()
                })
                .await;
            let text = saved.to_string();
            let key = match backend {
                None => "\"pool\":\"blue\"".to_string(),
                Some(b) => format!("\"backend\":\"{b}\""),
            };
            let drains_saved: Vec<&serde_json::Value> = saved["drains"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|d| match backend {
                            None => d["backend"].is_null(),
                            Some(b) => d["backend"] == b,
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(
                drains_saved.len(),
                usize::from(draining),
                "round {round} {target}: state {st}, state_file {text} ({key})"
            );
            // The metrics say the same about the backend.
            let m = get(&tg.admin_url("/metrics")).await.expect("metrics").body;
            let shown = metric_state(&m, backend.unwrap_or("b1"));
            if backend.is_some() || draining {
                assert_eq!(
                    shown,
                    vec![st.clone()],
                    "round {round} {target}: metrics {shown:?}"
                );
            }
            // Back to active for the next target.
            if draining {
                let r = send(
                    &client(),
                    "POST",
                    &tg.admin_url(&format!("{target}/undrain")),
                    &[],
                    "",
                )
                .await
                .expect("undrain");
                assert_eq!(r.status, 200);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.await.expect("load");
    }
}
