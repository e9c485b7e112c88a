//! Runtime overrides: maintenance mode, split overrides, and drains — surviving reloads and,
//! through `state_file`, restarts.

mod common;

use std::time::Duration;

use common::*;

fn config(blue: &std::net::SocketAddr, green: &std::net::SocketAddr, state_file: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: "{state_file}"
routes:
  - name: jobs
    match: {{ path_prefix: /jobs }}
    split: {{ blue: 1 }}
    hold: {{ timeout: 0 }}
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    backends: [{{ address: "{blue}" }}]
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

async fn backend_of(tg: &Tidegate, path: &str) -> String {
    get(&tg.url(path))
        .await
        .unwrap()
        .backend()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_refuses_matching_requests_and_lets_the_rest_pass() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let sf = dir.path().join("state.json");
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, &sf.to_string_lossy())).await;
    let r = api(
        &tg,
        "POST",
        "/api/v1/maintenance",
        r#"{"routes":["jobs"],"methods":["POST"],"retry_after":"60s","message":"deploying"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let c = client();
    let r = send(&c, "POST", &tg.url("/jobs/new"), &[], "job")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("retry-after").unwrap(), "60");
    let j = r.json();
    assert_eq!(j["error"], "maintenance");
    assert_eq!(j["message"], "deploying");
    assert_eq!(j["retry_after_seconds"], 60);
    // Reads on the same route and writes elsewhere pass.
    assert_eq!(
        send(&c, "GET", &tg.url("/jobs/1"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        send(&c, "POST", &tg.url("/other"), &[], "x")
            .await
            .unwrap()
            .status,
        200
    );
    let h = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(
        api(&tg, "GET", "/api/v1/status", "").await.json()["maintenance"]["maintenance"],
        true
    );
    // Exit: everything passes again; a second exit is a conflict.
    assert_eq!(
        api(&tg, "DELETE", "/api/v1/maintenance", "").await.status,
        200
    );
    assert_eq!(
        send(&c, "POST", &tg.url("/jobs/new"), &[], "job")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        api(&tg, "DELETE", "/api/v1/maintenance", "").await.status,
        409
    );
    assert_eq!(
        get(&tg.admin_url("/health")).await.unwrap().json()["status"],
        "healthy"
    );
    // Whole-proxy maintenance (no scope) refuses everything on the data path.
    assert_eq!(
        api(&tg, "POST", "/api/v1/maintenance", "").await.status,
        200
    );
    assert_eq!(get(&tg.url("/")).await.unwrap().status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_reload_and_restart() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let sf = dir.path().join("state.json");
    let yaml = config(&blue.addr, &green.addr, &sf.to_string_lossy());
    let mut tg = Tidegate::start(&yaml).await;

    // Split override on `app`, drain on `blue` (which also serves `jobs` alone).
    let r = api(
        &tg,
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["split"]["green"], 100);
    assert_eq!(j["file_split"]["blue"], 100);
    assert_eq!(j["override"], true);
    assert_eq!(backend_of(&tg, "/").await, "green");
    assert_eq!(
        api(&tg, "POST", "/api/v1/pools/blue/drain", "")
            .await
            .status,
        202
    );
    assert_eq!(
        get(&tg.url("/jobs/x")).await.unwrap().status,
        503,
        "jobs has only blue, which is draining"
    );

    // A reload of the file keeps both.
    tg.rewrite_config(&format!("{yaml}\n# touched\n"));
    assert_eq!(
        api(&tg, "POST", "/api/v1/config/reload", "").await.status,
        200
    );
    assert_eq!(backend_of(&tg, "/").await, "green");
    assert_eq!(
        api(&tg, "GET", "/api/v1/pools/blue/drain", "").await.json()["state"],
        "drained"
    );

    // So does a restart, through the state file.
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&sf).unwrap()).unwrap();
    assert_eq!(saved["drains"][0]["pool"], "blue");
    tg.restart().await;
    let st = api(&tg, "GET", "/api/v1/status", "").await.json();
    assert_eq!(st["pools"]["blue"]["state"], "drained", "{st}");
    let app = st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app")
        .unwrap()
        .clone();
    assert_eq!(app["override"], true);
    assert_eq!(app["split"]["green"], 100);
    for _ in 0..10 {
        assert_eq!(backend_of(&tg, "/").await, "green");
    }
    let blue_hits = blue.app.hits();
    assert_eq!(get(&tg.url("/jobs/x")).await.unwrap().status, 503);
    assert_eq!(blue.app.hits(), blue_hits);

    // Undrain and clearing the override restore the file's behaviour.
    assert_eq!(
        api(&tg, "POST", "/api/v1/pools/blue/undrain", "")
            .await
            .status,
        200
    );
    assert_eq!(
        api(&tg, "DELETE", "/api/v1/routes/app/split", "")
            .await
            .status,
        200
    );
    assert_eq!(backend_of(&tg, "/").await, "blue");
    assert_eq!(backend_of(&tg, "/jobs/x").await, "blue");
    wait_for("state file updated", Duration::from_secs(5), || async {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&sf).ok()?).ok()?;
        (v["drains"].as_array()?.is_empty() && v["overrides"]["splits"].as_object()?.is_empty())
            .then_some(())
    })
    .await;
}
