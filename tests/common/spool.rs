//! Spool test helpers: the shipped `conf/webhooks.yaml` with test addresses, a variant
//! without hold, and waits on the spool list and the recording backend.

use std::{net::SocketAddr, time::Duration};

use super::{free_port, get, recorder, recorder::Recorder, wait_for, Tidegate};

/// `conf/webhooks.yaml` as shipped, with test ports, the app's address and a temp state file.
pub fn webhooks_yaml(app: SocketAddr, dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/webhooks.yaml"))
        .expect("read conf/webhooks.yaml");
    for s in [
        "0.0.0.0:8080",
        "127.0.0.1:9901",
        "127.0.0.1:3000",
        "/var/lib/tidegate/state.json",
    ] {
        assert!(text.contains(s), "conf/webhooks.yaml lost {s}");
    }
    text.replace("0.0.0.0:8080", "{listen}")
        .replace("127.0.0.1:9901", "{admin}")
        .replace("127.0.0.1:3000", &app.to_string())
        .replace(
            "/var/lib/tidegate/state.json",
            &dir.join("state.json").display().to_string(),
        )
}

/// A variant: holding off, fast replay back-off, and extra `spool` keys.
pub fn fast_yaml(app: SocketAddr, dir: &std::path::Path, spool: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: {state}
routes:
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ app: 100 }}
    hold: {{ timeout: 0 }}
    spool: {{ replay: {{ backoff: 100ms, max_backoff: 400ms, max_attempts: 4 }}{spool} }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#,
        state = dir.join("state.json").display()
    )
}

/// A port nothing listens on (yet).
pub fn dead_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// The spool list (waiting while the store is still being opened, the first moments).
pub async fn spool_list(tg: &Tidegate, query: &str) -> serde_json::Value {
    let url = tg.admin_url(&format!("/api/v1/spool{query}"));
    let r = wait_for("the spool store open", Duration::from_secs(10), || async {
        let r = get(&url).await.expect("spool list");
        (!r.body.contains("being opened")).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Wait until the recorder has seen `n` requests.
pub async fn wait_seen(rec: &Recorder, n: usize, limit: Duration) -> Vec<recorder::Seen> {
    wait_for(&format!("{n} requests at the backend"), limit, || async {
        let s = rec.seen();
        (s.len() >= n).then_some(s)
    })
    .await
}
