//! What a client reads when the proxy answers an error itself names no route, pool or
//! backend (their names, and backend addresses, are the operator's; the access log has
//! them): a hold that times out, every backend refusing, a forced pool that cannot take the
//! request, a full spool.

mod common;

use common::*;

fn yaml(dead: u16) -> String {
    format!(
        r#"
listeners: [{{ name: web, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: secret-route-hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ secret-pool-blue: 100 }}
    hold: {{ timeout: 200ms }}
    spool: {{ max_items: 1 }}
  - name: secret-route-held
    match: {{ path_prefix: /held/ }}
    split: {{ secret-pool-drained: 100 }}
    hold: {{ timeout: 200ms }}
  - name: secret-route-app
    split: {{ secret-pool-blue: 100, secret-pool-drained: 0 }}
    hold: {{ timeout: 0s }}
    retries: 1
    force_pool: {{ header: X-Pool, pools: [secret-pool-drained], fallback: refuse }}
pools:
  secret-pool-blue:
    backends: [{{ address: "127.0.0.1:{dead}", name: secret-backend-b1 }}]
  secret-pool-drained:
    state: draining
    backends: [{{ address: "127.0.0.1:{dead}", name: secret-backend-d1 }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_name_no_route_pool_or_backend() {
    let dead = free_port();
    let state = tempfile::tempdir().expect("state dir");
    let file = state.path().join("state.json");
    let y = yaml(dead).replace(
        "admin:",
        &format!("state_file: \"{}\"\nadmin:", file.display()),
    );
    let tg = Tidegate::start(&y).await;
    let json = [("content-type", "application/json")];
    let cases = [
        ("GET", "/", &[][..], "every backend refuses"),
        ("GET", "/held/x", &[][..], "the hold times out"),
        (
            "GET",
            "/",
            &[("x-pool", "secret-pool-drained")][..],
            "forced pool",
        ),
        ("POST", "/hooks/1", &json[..], "spooled (202)"),
        ("POST", "/hooks/2", &json[..], "the spool is full"),
    ];
    let mut statuses = Vec::new();
    for (method, path, headers, what) in cases {
        let r = send(&client(), method, &tg.url(path), headers, "{}")
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        // (The 202 of a spooled request names its route by contract: `SpoolAccepted`.)
        let leaks: &[&str] = if r.status >= 400 {
            &["secret", &dead.to_string(), "127.0.0.1"]
        } else {
            &[]
        };
        for leak in leaks {
            assert!(
                !r.body.contains(leak),
                "{what}: the body names {leak:?}: {}",
                r.body
            );
        }
        statuses.push((what, r.status, r.json()["error"].clone()));
    }
    assert_eq!(
        statuses,
        vec![
            ("every backend refuses", 502, "bad_gateway".into()),
            ("the hold times out", 503, "no_available_backend".into()),
            ("forced pool", 503, "forced_pool_unavailable".into()),
            ("spooled (202)", 202, serde_json::Value::Null),
            ("the spool is full", 503, "spool_full".into()),
        ]
    );
    // The operator still reads which: the access log names route, pool and backend.
    let lines = tg.access_lines();
    assert!(
        lines
            .iter()
            .any(|l| l["route"] == "secret-route-app" && l["backend"] == "secret-backend-b1"),
        "{lines:?}"
    );
}
