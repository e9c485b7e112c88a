//! `state_file` under concurrent overrides: eight clients drain, undrain, shift and toggle
//! maintenance at once while a reader parses the file continuously; the file is always
//! whole, mode 0600, no temp file is left, and after `kill -9` and a restart the proxy comes
//! back with exactly the overrides it had (the last write holds the newest state).

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

use common::*;

/// What the state file must bring back: states of pools and backends, splits, maintenance.
fn overrides(s: &serde_json::Value) -> serde_json::Value {
    let mut pools = serde_json::Map::new();
    for (name, p) in s["pools"].as_object().unwrap() {
        let backends: Vec<_> = p["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["id"].clone(), b["state"].clone()))
            .collect();
        pools.insert(
            name.clone(),
            serde_json::json!({"state": p["state"], "backends": backends}),
        );
    }
    let splits: Vec<_> = s["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["split"].clone())
        .collect();
    serde_json::json!({"pools": pools, "splits": splits, "maintenance": s["maintenance"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overrides_never_tear_the_state_file() {
    let backends: Vec<_> =
        futures_util::future::join_all(["b1", "b2", "g1", "g2"].map(TestBackend::start)).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: {}
routes:
  - name: app
    match: {{ path_prefix: /app }}
    split: {{ blue: 100, green: 0 }}
  - name: ramped
    split: {{ blue: 100, green: 0 }}
pools:
  blue: {{ backends: [{{ address: "{}", name: b1 }}, {{ address: "{}", name: b2 }}] }}
  green: {{ backends: [{{ address: "{}", name: g1 }}, {{ address: "{}", name: g2 }}] }}
"#,
        state.display(),
        backends[0].addr,
        backends[1].addr,
        backends[2].addr,
        backends[3].addr
    );
    let mut tg = Tidegate::start(&yaml).await;

    let stop = Arc::new(AtomicBool::new(false));
    let torn = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (stop, torn, reads, state) = (stop.clone(), torn.clone(), reads.clone(), state.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(bytes) = std::fs::read(&state) {
                    reads.fetch_add(1, Ordering::SeqCst);
                    if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
                        torn.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Leave the writers their share of two cores.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    // A ramp steps every 100 ms on the ramp service's own thread, and reloads save from a
    // blocking thread: writers on three threads besides the admin API's.
    let r = send(
        &client(),
        "POST",
        &tg.admin_url("/api/v1/routes/ramped/split"),
        &[],
        r#"{"split":{"blue":0,"green":100},"over":"20s","step":"100ms"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let ops: [(&str, &str, &str); 9] = [
        ("POST", "/api/v1/config/reload", ""),
        ("POST", "/api/v1/pools/blue/backends/b1/drain", ""),
        ("POST", "/api/v1/pools/blue/backends/b1/undrain", ""),
        ("POST", "/api/v1/pools/green/backends/g2/drain", ""),
        ("POST", "/api/v1/pools/green/backends/g2/undrain", ""),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":30,"green":70}}"#,
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":80,"green":20}}"#,
        ),
        ("POST", "/api/v1/maintenance", r#"{"methods":["DELETE"]}"#),
        ("DELETE", "/api/v1/maintenance", ""),
    ];
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let base = tg.admin_url("");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for i in 0..40usize {
                let (m, p, b) = ops[(w * 3 + i * 5) % ops.len()];
                let r = send(&c, m, &format!("{base}{p}"), &[], b).await.unwrap();
                assert!(
                    [200, 202, 409].contains(&r.status),
                    "{m} {p}: {} {}",
                    r.status,
                    r.body
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // A final, known state on top of the storm.
    let final_ops = [
        ("DELETE", "/api/v1/routes/ramped/split", ""),
        ("POST", "/api/v1/pools/green/backends/g1/drain", ""),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":40,"green":60}}"#,
        ),
    ];
    for (m, p, b) in final_ops {
        let r = send(&client(), m, &tg.admin_url(p), &[], b).await.unwrap();
        assert!([200, 202, 409].contains(&r.status), "{}", r.body);
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(reads.load(Ordering::SeqCst) > 0, "the reader saw the file");
    assert_eq!(torn.load(Ordering::SeqCst), 0, "a torn state_file was read");
    let tmp: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    let before = overrides(&wait_status(&tg, "quiet", |s| s["in_flight"] == 0).await);
    assert!(
        tg.logs()
            .lines()
            .all(|l| !l.contains("cannot write state_file")),
        "{}",
        tg.logs()
    );
    // A crash right now, then a restart: everything comes back as it was.
    tg.kill9_restart().await;
    let after = overrides(&wait_status(&tg, "restored", |s| s["in_flight"] == 0).await);
    assert_eq!(after, before);
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A hand-edited state file is input (issue 32): a drain started at 1e300, a split weight
/// past the range and a deadline of centuries are refused with a clear error, not a panic,
/// and the proxy starts and routes on its file.
#[tokio::test]
async fn a_hand_edited_state_file_is_checked_not_trusted() {
    let app = TestBackend::start("app").await;
    let other = TestBackend::start("other").await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    std::fs::write(
        &state,
        r#"{"version":1,"drains":[
            {"pool":"blue","backend":null,"started_at":1e300,"requests_deadline_ms":null,"streams_deadline_ms":null,"close_spread_ms":0},
            {"pool":"green","backend":null,"started_at":1000,"requests_deadline_ms":18446744073709551615,"streams_deadline_ms":null,"close_spread_ms":0}],
          "overrides":{"splits":{"app":{"blue":4000000000,"green":0}}}}"#,
    )
    .unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: {}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue: {{ backends: [{{ address: "{}" }}] }}
  green: {{ backends: [{{ address: "{}" }}] }}
"#,
        state.display(),
        app.addr,
        other.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let logs = tg.logs();
    assert!(!logs.contains("panicked"), "{logs}");
    assert!(
        logs.contains("a drain in state_file is not valid"),
        "{logs}"
    );
    assert!(
        logs.contains("a split in state_file is not valid"),
        "{logs}"
    );
    let s: serde_json::Value = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    assert_eq!(s["pools"]["blue"]["state"], "active", "{s}");
    assert_eq!(s["pools"]["green"]["state"], "active", "{s}");
    assert_eq!(s["routes"][0]["split"]["blue"], 100, "{s}");
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.status, 200);
}
