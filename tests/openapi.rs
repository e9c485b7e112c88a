//! The admin API's OpenAPI 3.1 document (`GET /api/v1/openapi.json`), and schemathesis (from
//! PyPI) against a live tidegate with the token: no 5xx, every answer matches the document,
//! input the document refuses is refused, and the calls the document says only read change
//! nothing.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;

const TOKEN: &str = "openapi-test-token";

fn yaml(
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    gone: u16,
    state: &Path,
) -> String {
    let state = state.display();
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}", token_env: TG_TEST_TOKEN }}
state_file: "{state}"
routes:
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ gone: 100 }}
    hold: {{ timeout: 500ms }}
    spool: {{}}
  - name: app
    split: {{ blue: 90, green: 10 }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: b1 }}]
  green:
    backends: [{{ address: "{green}", name: g1 }}]
  gone:
    backends: [{{ address: "127.0.0.1:{gone}", name: x1 }}]
"#
    )
}

/// A proxy with a token, three pools (one whose backend is down) and one spooled request.
struct Setup {
    tg: Tidegate,
    state: tempfile::TempDir,
    spooled: i64,
    _backends: [TestBackend; 2],
}

async fn proxy() -> Setup {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let gone = free_port();
    let state = tempfile::tempdir().expect("state dir");
    let file = state.path().join("state.json");
    let tg = Tidegate::spawn(
        &yaml(blue.addr, green.addr, gone, &file),
        &[("TG_TEST_TOKEN", TOKEN)],
    );
    tg.wait_ready().await;
    let r = post(
        &tg.url("/hooks/x"),
        &[("content-type", "application/json")],
        "{}",
    )
    .await
    .expect("spool a request");
    assert_eq!(r.status, 202, "{}", r.body);
    let spooled = r.json()["id"].as_i64().expect("spooled id");
    Setup {
        tg,
        state,
        spooled,
        _backends: [blue, green],
    }
}

async fn api(tg: &Tidegate, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let bearer = format!("Bearer {TOKEN}");
    let mut h = vec![("authorization", bearer.as_str())];
    h.extend_from_slice(headers);
    send_exact(&client(), method, &tg.admin_url(path), &h, "")
        .await
        .expect("admin call")
}

/// What the calls can change: the control state, the spool, the saved overrides.
async fn everything(tg: &Tidegate, state: &Path) -> serde_json::Value {
    let status = api(tg, "GET", "/api/v1/status", &[]).await.json();
    let spool = api(tg, "GET", "/api/v1/spool", &[]).await.json();
    let saved = std::fs::read_to_string(state.join("state.json")).ok();
    serde_json::json!({
        "control": control_state(&status),
        "spool": spool["items"].as_array().map(|items| items
            .iter()
            // Not `attempts`: replays of the item go on in the background, reads or not.
            .map(|i| serde_json::json!([i["id"], i["state"]]))
            .collect::<Vec<_>>()),
        "saved": saved,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_needs_the_token_and_lists_every_call() {
    let Setup {
        tg,
        _backends: _keep,
        ..
    } = proxy().await;
    let anonymous = get(&tg.admin_url("/api/v1/openapi.json")).await.unwrap();
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let r = api(&tg, "GET", "/api/v1/openapi.json", &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let calls = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/health"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/status"),
        ("get", "/api/v1/events"),
        ("get", "/api/v1/history"),
        ("post", "/api/v1/config/reload"),
        ("get", "/api/v1/pools/{pool}/drain"),
        ("post", "/api/v1/pools/{pool}/drain"),
        ("post", "/api/v1/pools/{pool}/undrain"),
        ("get", "/api/v1/pools/{pool}/drain/wait"),
        ("get", "/api/v1/pools/{pool}/backends"),
        ("put", "/api/v1/pools/{pool}/backends"),
        ("delete", "/api/v1/pools/{pool}/backends"),
        ("get", "/api/v1/pools/{pool}/backends/{backend}/drain"),
        ("post", "/api/v1/pools/{pool}/backends/{backend}/drain"),
        ("post", "/api/v1/pools/{pool}/backends/{backend}/undrain"),
        ("get", "/api/v1/pools/{pool}/backends/{backend}/drain/wait"),
        ("get", "/api/v1/routes/{route}/split"),
        ("post", "/api/v1/routes/{route}/split"),
        ("put", "/api/v1/routes/{route}/split"),
        ("delete", "/api/v1/routes/{route}/split"),
        ("put", "/api/v1/routes/{route}/checkpoint"),
        ("post", "/api/v1/routes/{route}/rollback"),
        ("get", "/api/v1/nodes/{host}/drain"),
        ("post", "/api/v1/nodes/{host}/drain"),
        ("post", "/api/v1/nodes/{host}/undrain"),
        ("get", "/api/v1/nodes/{host}/drain/wait"),
        ("get", "/api/v1/spool"),
        ("delete", "/api/v1/spool"),
        ("post", "/api/v1/spool/retry"),
        ("delete", "/api/v1/spool/{id}"),
        ("post", "/api/v1/spool/{id}/retry"),
        ("post", "/api/v1/maintenance"),
        ("put", "/api/v1/maintenance"),
        ("delete", "/api/v1/maintenance"),
    ];
    let mut listed = 0;
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            listed += 1;
            let id = op["operationId"].as_str().expect("operationId").to_string();
            assert!(ids.insert(id.clone()), "operationId {id} twice");
            assert!(
                calls.contains(&(method.as_str(), path.as_str())),
                "{method} {path} is documented but not expected here"
            );
            let security = &op["security"];
            if path.starts_with("/api/") {
                assert_eq!(security, &serde_json::json!([{"token": []}]), "{path}");
                assert!(op["responses"]["401"].is_object(), "{method} {path}: 401");
            }
        }
    }
    assert_eq!(listed, calls.len(), "every call is documented once");
    // The document's own answers are the server's types: the drain status has its kinds.
    let in_flight = &doc["components"]["schemas"]["InFlight"];
    assert_eq!(
        in_flight["required"],
        serde_json::json!(["http", "sse", "websocket", "grpc"])
    );
    // A method a path lacks is a 405 with Allow, even without a JSON Content-Type (the
    // JSON-only check runs once a handler matched).
    for (method, path) in [
        ("PATCH", "/api/v1/routes/app/split"),
        ("POST", "/api/v1/status"),
        ("TRACE", "/api/v1/history"),
        ("POST", "/healthz"),
    ] {
        let r = api(&tg, method, path, &[]).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.body);
        assert!(r.headers.contains_key("allow"), "{method} {path}");
    }
    // A documented mutation without it is still a 415.
    let r = api(&tg, "DELETE", "/api/v1/routes/app/split", &[]).await;
    assert_eq!(r.status, 415, "{}", r.body);
}

/// Run schemathesis against the proxy; its output when it finds something.
fn schemathesis(dir: &Path, tg: &Tidegate, config: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("schemathesis");
    if let Some(c) = config {
        let file = dir.join("schemathesis.toml");
        std::fs::write(&file, c).expect("write schemathesis.toml");
        cmd.arg("--config-file").arg(&file);
    }
    let bearer = format!("Authorization: Bearer {TOKEN}");
    cmd.current_dir(dir)
        .args(["run", "openapi.json", "--url"])
        .arg(tg.admin_url(""))
        .args(["-H", &bearer])
        // The JSON-only rule (a mutation says so, with or without a body) is in the
        // document's words: OpenAPI cannot declare a Content-Type header parameter.
        .args(["-H", "Content-Type: application/json"])
        // Not checked: that every well-shaped body is taken (a body naming a pool the config
        // lacks is well-shaped and a 400), and that a DELETE removes a resource (DELETE …/split
        // and …/backends return to the file's value, which is still there).
        .args(["--checks", "all"])
        .args([
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        .args(["--max-examples", "40", "--seed", "7", "--workers", "1"])
        .args(["--request-timeout", "15", "--no-color"])
        .args(args)
        .env("NO_COLOR", "1");
    let out = cmd.output().expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis {args:?} found something:\n{text}\n--- tidegate log:\n{}",
        tg.logs()
    );
    assert!(text.contains("passed"), "{text}");
}

/// Validate `value` against the document's schema `name` (Python's jsonschema, which
/// schemathesis brings): what schemathesis cannot call, an endless event stream.
fn matches(doc: &Path, name: &str, value: &serde_json::Value) {
    const CHECK: &str = "import json, sys, jsonschema\n\
        doc = json.load(open(sys.argv[1]))\n\
        schema = {'$ref': '#/components/schemas/' + sys.argv[2], 'components': doc['components']}\n\
        jsonschema.Draft202012Validator(schema).validate(json.load(sys.stdin))\n";
    let mut child = Command::new("python3")
        .args(["-c", CHECK])
        .arg(doc)
        .arg(name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(value.to_string().as_bytes())
            .expect("write value");
    }
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "{name} does not match the document: {}\n{value}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_schemathesis() -> bool {
    let found = Command::new("schemathesis")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("schemathesis is missing (scripts/deps installs it from PyPI)");
    }
    if !found {
        eprintln!("skipped: schemathesis is not installed (pip install schemathesis)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_and_reads_change_nothing() {
    if !have_schemathesis() {
        return;
    }
    let Setup {
        tg,
        state,
        spooled,
        _backends: _keep,
    } = proxy().await;
    let id = spooled;
    let dir = tempfile::tempdir().expect("tempdir");
    let doc = api(&tg, "GET", "/api/v1/openapi.json", &[]).await;
    std::fs::write(dir.path().join("openapi.json"), &doc.body).expect("write document");
    // Names that exist, so calls reach their handlers (a drain wait returns at once).
    let known = format!(
        "[parameters]\npool = \"blue\"\nbackend = \"b1\"\nroute = \"app\"\n\
         host = \"127.0.0.1\"\nid = {id}\ntimeout = \"0\"\n"
    );
    // The event stream: its `status` and `history` events are the document's types.
    let doc_file = dir.path().join("openapi.json");
    let bearer = format!("Bearer {TOKEN}");
    let mut events = Sse::open_with(
        &tg.admin_url("/api/v1/events"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(events.status, 200);
    let (mut status, mut history) = (false, false);
    while !(status && history) {
        let data = events
            .next_data(Duration::from_secs(10))
            .await
            .expect("an event")
            .expect("the stream stays open");
        let v: serde_json::Value = serde_json::from_str(&data).expect("JSON event");
        if v.get("generation").is_some() {
            matches(&doc_file, "StatusEvent", &v);
            status = true;
        } else if v.get("interval_seconds").is_some() {
            matches(&doc_file, "History", &v);
            history = true;
        }
    }
    drop(events);
    let before = everything(&tg, state.path()).await;
    // 1. Only what the document says reads (GET), over names that exist: nothing changes.
    schemathesis(
        dir.path(),
        &tg,
        Some(&known),
        &[
            "--include-method",
            "GET",
            "--exclude-path",
            "/api/v1/events",
        ],
    );
    let after = everything(&tg, state.path()).await;
    assert_eq!(before, after, "a read changed state");
    assert!(
        !tg.logs().contains("result=\"ok\""),
        "a read was audited as a change:\n{}",
        tg.logs()
    );
    // 2. Every call, over names that exist, then over names the generator makes up.
    schemathesis(
        dir.path(),
        &tg,
        Some(&known),
        &["--exclude-path", "/api/v1/events"],
    );
    schemathesis(
        dir.path(),
        &tg,
        None,
        &["--exclude-path-regex", "(/events|/wait)$"],
    );
    // Still serving, and nothing panicked on the way.
    let r = get(&tg.admin_url("/healthz")).await.unwrap();
    assert_eq!(r.status, 200);
    wait_for("the proxy answers", Duration::from_secs(10), || async {
        get(&tg.url("/")).await.ok().map(|_| ())
    })
    .await;
    assert!(!tg.logs().contains("panicked"), "{}", tg.logs());
}
