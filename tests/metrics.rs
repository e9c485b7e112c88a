//! /metrics: every metric of DESIGN.md with the right labels after traffic of each kind,
//! values that agree with the status API, `promtool check metrics`, and `metrics_auth`.

mod common;

use std::{collections::HashMap, process::Command, time::Duration};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Parse exposition text into `series → value` (series = name{labels} as written).
/// A series as `name{labels}` with its labels sorted by name: the order labels are written
/// in is not part of the exposition format's meaning (the prometheus crate sorts them).
fn canon(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else {
        return series.to_string();
    };
    // Our label values hold no commas.
    let mut labels: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((canon(k), v.parse().ok()?))
        })
        .collect()
}

fn config(blue: &std::net::SocketAddr, green: &std::net::SocketAddr, admin_extra: &str) -> String {
    format!(
        r#"
config_watch: false
listeners: [{{ name: public, address: "{{listen}}" }}]
admin:
  address: "{{admin}}"{admin_extra}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
    retries: 1
pools:
  blue:
    backends:
      - {{ address: "{blue}", name: b1 }}
      - {{ address: "127.0.0.1:{}", name: dead }}
  green:
    backends: [{{ address: "{green}", name: g1 }}]
"#,
        free_port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_after_traffic_of_each_kind() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, "")).await;
    let c = client();
    for _ in 0..10 {
        assert_eq!(
            send(&c, "GET", &tg.url("/"), &[], "").await.unwrap().status,
            200
        );
    }
    assert_eq!(get(&tg.url("/status/503")).await.unwrap().status, 503);
    let mut sse = Sse::open(&tg.url("/events?interval_ms=50&count=2")).await;
    while let Ok(Some(_)) = sse.next_data(Duration::from_secs(5)).await {}
    // Each attempt is a 101 the proxy counts (see ws_connect_counted on pingora #946).
    let (mut ws, upgrades) = ws_connect_counted(&format!("ws://{}/ws", tg.listen)).await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
    // One stream stays open so in-flight gauges are non-zero.
    let mut open = Sse::open(&tg.url("/events/push")).await;
    wait_status(&tg, "open stream counted", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    blue.app.push("hi");
    assert!(open
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    // A failed reload and a drain, for their metrics.
    std::fs::write(&tg.config, "not: [valid").unwrap();
    assert_eq!(
        post(&tg.admin_url("/api/v1/config/reload"), &[], "")
            .await
            .unwrap()
            .status,
        422
    );
    assert_eq!(
        post(&tg.admin_url("/api/v1/pools/green/drain"), &[], "")
            .await
            .unwrap()
            .status,
        202
    );
    wait_status(&tg, "ws gone", |s| {
        s["pools"]["blue"]["in_flight"]["websocket"] == 0
    })
    .await;

    let r = get(&tg.admin_url("/metrics")).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let m = parse(&r.body);
    // Every family served is one the code names (metrics::names::ALL, which the dashboard
    // test checks against), and every name there is served.
    let served: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("tidegate_"))
        .collect();
    for n in &served {
        assert!(
            tidegate::metrics::names::ALL.contains(n),
            "{n} is not in names::ALL"
        );
    }
    // The spool's families have series only on a spooled route, the certificate ones only
    // on TLS listeners (none here; tests/edge_tls.rs and tests/acme.rs check those), the
    // fleet's with a control_store (tests/fleet.rs).
    let elsewhere = [
        "tidegate_spool_",
        "tidegate_tls_",
        "tidegate_acme_",
        "tidegate_control_",
        "tidegate_fleet_",
    ];
    for n in tidegate::metrics::names::ALL
        .iter()
        .filter(|n| !elsewhere.iter().any(|p| n.starts_with(p)))
    {
        assert!(served.contains(n), "{n} is in names::ALL but not served");
    }
    let v = |k: &str| {
        *m.get(&canon(k))
            .unwrap_or_else(|| panic!("missing series {k}\n{}", r.body))
    };
    let st = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();

    assert_eq!(
        v(r#"tidegate_backend_in_flight{pool="blue",backend="b1",kind="sse"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_backend_in_flight{pool="blue",backend="b1",kind="http"}"#),
        0.0
    );
    assert_eq!(
        v(r#"tidegate_backend_in_flight{pool="blue",backend="b1",kind="websocket"}"#),
        0.0
    );
    assert_eq!(st["pools"]["blue"]["backends"][0]["in_flight"]["sse"], 1);
    assert_eq!(
        v(r#"tidegate_backend_state{pool="green",backend="g1",state="drained"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_backend_state{pool="green",backend="g1",state="active"}"#),
        0.0
    );
    assert_eq!(
        v(r#"tidegate_backend_state{pool="blue",backend="b1",state="active"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_backend_weight{pool="blue",backend="b1"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_backend_healthy{pool="blue",backend="b1"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_route_split_weight{route="app",pool="blue"}"#),
        100.0
    );
    assert_eq!(
        v(r#"tidegate_route_split_weight{route="app",pool="green"}"#),
        0.0
    );
    assert!(v(r#"tidegate_requests_total{route="app",pool="blue",code_class="2xx"}"#) >= 11.0);
    assert_eq!(
        v(r#"tidegate_requests_total{route="app",pool="blue",code_class="5xx"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tidegate_requests_total{route="app",pool="blue",code_class="1xx"}"#),
        f64::from(upgrades),
        "the WebSocket (101)"
    );
    let count = v(r#"tidegate_request_duration_seconds_count{route="app",pool="blue"}"#);
    assert_eq!(
        count,
        v(r#"tidegate_request_duration_seconds_bucket{route="app",pool="blue",le="+Inf"}"#)
    );
    assert!(count >= 13.0);
    let failures = v(r#"tidegate_upstream_connect_failures_total{pool="blue",backend="dead"}"#);
    // The background probe of the dead backend keeps counting: compare /metrics with the
    // status only from a moment when the count stood still across both reads.
    let dead_failures = |st: &serde_json::Value| {
        st["pools"]["blue"]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "dead")
            .unwrap()["connect_failures"]
            .as_f64()
            .unwrap()
    };
    let (in_metrics, in_status) = wait_for(
        "a quiet moment of the connect-failure count",
        Duration::from_secs(20),
        || async {
            let before = dead_failures(&get(&tg.admin_url("/api/v1/status")).await.ok()?.json());
            let m = parse(&get(&tg.admin_url("/metrics")).await.ok()?.body);
            let after = dead_failures(&get(&tg.admin_url("/api/v1/status")).await.ok()?.json());
            let key =
                canon(r#"tidegate_upstream_connect_failures_total{pool="blue",backend="dead"}"#);
            (before == after).then(|| (m[&key], after))
        },
    )
    .await;
    assert_eq!(in_metrics, in_status);
    assert!(failures >= 1.0);
    // Requests' failed connects were retried; the background probe of the down backend
    // counts its failed connects too, so failures can only be higher.
    let retries = v(r#"tidegate_retries_total{route="app"}"#);
    assert!(
        retries >= 1.0 && retries <= failures,
        "retries {retries}, connect failures {failures}"
    );
    assert_eq!(
        v(r#"tidegate_streams_ended_total{pool="blue",kind="sse",reason="completed"}"#),
        1.0
    );
    let ws_ended = |reason: &str| {
        v(&format!(
            r#"tidegate_streams_ended_total{{pool="blue",kind="websocket",reason="{reason}"}}"#
        ))
    };
    assert!(
        ws_ended("completed") >= 1.0,
        "the WebSocket closed by handshake"
    );
    assert_eq!(
        ["completed", "client", "upstream", "deadline"]
            .map(ws_ended)
            .iter()
            .sum::<f64>(),
        f64::from(upgrades),
        "every upgraded tunnel ended once"
    );
    assert_eq!(v(r#"tidegate_config_reloads_total{result="failure"}"#), 1.0);
    assert_eq!(v(r#"tidegate_config_reloads_total{result="success"}"#), 0.0);
    assert_eq!(
        v("tidegate_config_generation"),
        st["generation"].as_f64().unwrap()
    );
    assert!(v("tidegate_config_last_reload_success_timestamp_seconds") > 1.7e9);
    assert_eq!(v("tidegate_shutting_down"), 0.0);
    assert_eq!(
        v(&format!(
            "tidegate_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        )),
        1.0
    );
    // No unbounded labels.
    assert!(
        !r.body.contains("/events") && !r.body.contains("127.0.0.1:"),
        "paths or client addresses leaked into labels"
    );

    // promtool agrees it is valid exposition text.
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is needed (scripts/deps installs Debian's prometheus package)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(r.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_auth_protects_metrics_only_when_asked() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::spawn(
        &config(
            &blue.addr,
            &green.addr,
            "\n  token_env: TG_M_TOKEN\n  metrics_auth: true",
        ),
        &[("TG_M_TOKEN", "mtok")],
    );
    tg.wait_ready().await;
    assert_eq!(get(&tg.admin_url("/metrics")).await.unwrap().status, 401);
    let r = send(
        &client(),
        "GET",
        &tg.admin_url("/metrics"),
        &[("authorization", "Bearer mtok")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains("tidegate_build_info"));

    // Without metrics_auth, /metrics is open even though a token is set.
    let tg2 = Tidegate::spawn(
        &config(&blue.addr, &green.addr, "\n  token_env: TG_M_TOKEN"),
        &[("TG_M_TOKEN", "mtok")],
    );
    tg2.wait_ready().await;
    assert_eq!(get(&tg2.admin_url("/metrics")).await.unwrap().status, 200);
    assert_eq!(
        get(&tg2.admin_url("/api/v1/status")).await.unwrap().status,
        401
    );
}

#[test]
fn grafana_dashboard_uses_only_our_metric_names() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/grafana-dashboard.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    // The names the code defines, not a copy of them.
    let known = tidegate::metrics::names::ALL;
    let mut exprs = 0;
    for p in v["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            exprs += 1;
            for w in e
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("tidegate_"))
            {
                let base = w
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(known.contains(&base), "unknown metric {w} in {e}");
            }
        }
    }
    assert!(exprs >= 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_beside_ours() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, "")).await;
    let m = parse(&get(&tg.admin_url("/metrics")).await.unwrap().body);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = m.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            *v > 0.0 || name == "process_cpu_seconds_total",
            "{name} = {v}"
        );
    }
    let rss = m["process_resident_memory_bytes"];
    assert!(rss > 1e6 && rss < 1e10, "{rss}");
}
