//! Deploying without Docker, with processes on 127.0.0.1: `tidegate health`, runtime members
//! of a pool (`PUT|DELETE /api/v1/pools/{pool}/backends`: validated, persisted, kept across
//! reloads and restarts), `tidegate deploy` (members → available → shift → drain and wait →
//! `--then`) and `tidegate rollback`.

mod common;

use std::time::Duration;

use common::*;

fn config(
    blue: &std::net::SocketAddr,
    green: &std::net::SocketAddr,
    state: &std::path::Path,
) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
state_file: "{}"
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: b1 }}]
  green:
    backends: [{{ address: "{green}", name: g1 }}]
"#,
        state.display()
    )
}

async fn cli(args: &[String]) -> (i32, String) {
    run_cli(args.to_vec()).await
}

fn with_admin(tg: &Tidegate, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--admin".into());
    v.push(tg.admin_url(""));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_verb_exit_codes() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = config(&blue.addr, &green.addr, &dir.path().join("s.json"))
        .variant("admin: {", "shutdown: { delay: 3s }\nadmin: {");
    let mut tg = Tidegate::start(&yaml).await;
    let (code, out) = cli(&with_admin(&tg, &["health"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ready"), "{out}");
    tg.signal(libc::SIGTERM);
    // During shutdown.delay /readyz is 503 while traffic is still served.
    let (code, out) = cli(&with_admin(&tg, &["health"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not ready") && out.contains("shutting down"),
        "{out}"
    );
    tg.wait_exit(Duration::from_secs(20)).await;
    let (code, out) = cli(&with_admin(&tg, &["health"])).await;
    assert_eq!(code, 2, "{out}");
}

async fn status(tg: &Tidegate) -> serde_json::Value {
    get(&tg.admin_url("/api/v1/status")).await.unwrap().json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runtime_members_are_validated_persisted_and_removable() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let blue2 = TestBackend::start("blue2").await;
    let dir = tempfile::tempdir().unwrap();
    let mut tg =
        Tidegate::start(&config(&blue.addr, &green.addr, &dir.path().join("s.json"))).await;
    let url = tg.admin_url("/api/v1/pools/blue/backends");
    let before = status(&tg).await;
    let c = client();
    for (body, why) in [
        ("[]", "empty"),
        (r#"[{"address":"nonsense"}]"#, "bad address"),
        (r#"[{"address":"127.0.0.1:1","weight":0}]"#, "weight"),
        (
            r#"[{"address":"127.0.0.1:1"},{"address":"127.0.0.1:1"}]"#,
            "duplicate",
        ),
        (r#"[{"adress":"127.0.0.1:1"}]"#, "unknown key"),
        (
            r#"{"backends":[{"address":"127.0.0.1:1"}],"extra":1}"#,
            "unknown key",
        ),
        (r#""127.0.0.1:1""#, "a string"),
    ] {
        let r = send(&c, "PUT", &url, &[], body).await.unwrap();
        assert_eq!(r.status, 400, "{why}: {}", r.body);
        let mut after = status(&tg).await;
        after["reloads"] = before["reloads"].clone();
        assert_eq!(after["pools"], before["pools"], "{why} changed state");
    }
    let r = send(
        &c,
        "PUT",
        &tg.admin_url("/api/v1/pools/nope/backends"),
        &[],
        "[]",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);

    // A member set at runtime takes the traffic; the status says it is an override.
    let body = format!(r#"[{{"address":"{}","name":"b2"}}]"#, blue2.addr);
    let r = send(&c, "PUT", &url, &[], &body).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["override"], true);
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.backend().as_deref(), Some("blue2"));
    let s = status(&tg).await;
    assert_eq!(s["pools"]["blue"]["backends_override"], true);
    assert_eq!(s["pools"]["blue"]["backends"][0]["name"], "b2");

    // Kept across a reload and a restart.
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue2")
    );
    tg.restart().await;
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue2")
    );

    // A member removed with work in flight is `removed` until idle.
    let mut sse = Sse::open(&tg.url("/events?interval_ms=100&count=10")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    let r = send(&c, "DELETE", &url, &[], "").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["override"], false);
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue")
    );
    let s = status(&tg).await;
    assert_eq!(s["removed"][0]["id"], "blue/b2", "{s}");
    while let Ok(Some(_)) = sse.next_data(Duration::from_secs(5)).await {}
    wait_status(&tg, "removed member gone once idle", |s| {
        s["removed"].as_array().is_some_and(|a| a.is_empty())
    })
    .await;
    let r = send(&c, "DELETE", &url, &[], "").await.unwrap();
    assert_eq!(r.status, 409, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_shifts_drains_runs_then_and_rollback_restores() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let green2 = TestBackend::start("green2").await;
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, &dir.path().join("s.json"))).await;
    let load = Load::start(tg.url("/"), 2);
    let stream = tokio::spawn({
        let url = tg.url("/events?interval_ms=100&count=15");
        async move {
            let mut sse = Sse::open(&url).await;
            let mut n = 0;
            while let Ok(Some(_)) = sse.next_data(Duration::from_secs(5)).await {
                n += 1;
            }
            n
        }
    });
    wait_status(&tg, "stream on blue", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    let marker = dir.path().join("then.txt");
    let then = format!(
        "echo \"$TIDEGATE_DRAINED_POOLS $TIDEGATE_POOL\" > {}",
        marker.display()
    );
    let backend = green2.addr.to_string();
    let (code, out) = cli(&with_admin(
        &tg,
        &[
            "deploy",
            "app",
            "--to",
            "green",
            "--backend",
            &backend,
            "--then",
            &then,
        ],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "{out}");
    assert!(ok > 0);
    assert_eq!(stream.await.unwrap(), 15, "the blue stream ended by itself");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "blue green"
    );
    let s = status(&tg).await;
    assert_eq!(s["pools"]["blue"]["state"], "drained", "{s}");
    assert_eq!(s["routes"][0]["split"]["green"], 100);
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("green2")
    );

    let (code, out) = cli(&with_admin(&tg, &["rollback", "app"])).await;
    assert_eq!(code, 0, "{out}");
    let s = status(&tg).await;
    assert_eq!(s["pools"]["blue"]["state"], "active", "{s}");
    assert_eq!(s["routes"][0]["split"]["blue"], 100, "{s}");
    assert_eq!(s["pools"]["green"]["backends_override"], false, "{s}");
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue")
    );
    let (code, out) = cli(&with_admin(&tg, &["rollback", "app"])).await;
    assert_eq!(code, 2, "nothing left to roll back: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_to_a_pool_that_never_comes_up_exits_1() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, &dir.path().join("s.json"))).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, out) = cli(&with_admin(
        &tg,
        &[
            "deploy",
            "app",
            "--to",
            "green",
            "--backend",
            &dead,
            "--health-timeout",
            "1s",
        ],
    ))
    .await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no available backend in pool green"), "{out}");
    let s = status(&tg).await;
    assert_eq!(s["routes"][0]["split"]["blue"], 100, "nothing shifted: {s}");
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue")
    );
}

async fn backend_on(ip: &str, port: u16, name: &str) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind");
    let app = common::backend::Backend::new(name);
    tokio::spawn(app.serve(l))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_names_are_resolved_again_without_a_reload() {
    let port = free_port();
    let first = backend_on("127.0.0.1", port, "first").await;
    let second = backend_on("127.0.0.2", port, "second").await;
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 app.tidegate.test\n").unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
resolve_interval: 200ms
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    backends: [{{ address: "app.tidegate.test:{port}", name: app }}]
"#
    );
    let hosts_env = hosts.to_string_lossy().to_string();
    let tg = Tidegate::spawn(&yaml, &[("TIDEGATE_HOSTS_FILE", &hosts_env)]);
    tg.wait_ready().await;
    // The name is not in the system resolver: unavailable until the resolver's first round,
    // requests are held meanwhile.
    let r = get(&tg.url("/")).await.unwrap();
    assert_eq!(r.backend().as_deref(), Some("first"), "{}", r.body);
    let gen = tg.generation().await;
    // A stream stays on the old address while new requests follow the new one.
    let mut sse = Sse::open(&tg.url("/events?interval_ms=100&count=30")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    std::fs::write(&hosts, "127.0.0.2 app.tidegate.test\n").unwrap();
    wait_for("new address followed", Duration::from_secs(5), || {
        let u = tg.url("/");
        async move { (get(&u).await.ok()?.backend()? == "second").then_some(()) }
    })
    .await;
    assert_eq!(tg.generation().await, gen, "not a reload");
    let s = status(&tg).await;
    assert_eq!(s["pools"]["app"]["backends"][0]["id"], "app/app", "same id");
    assert_eq!(
        s["pools"]["app"]["backends"][0]["in_flight"]["sse"], 1,
        "{s}"
    );
    let mut events = 1;
    while let Ok(Some(_)) = sse.next_data(Duration::from_secs(5)).await {
        events += 1;
    }
    assert_eq!(events, 30, "the stream on the old address finished");
    // A failed lookup keeps the last good address, logged once.
    std::fs::write(&hosts, "# nothing\n").unwrap();
    // (the system resolver does not know the name either)
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_millis(800) {
        let r = get(&tg.url("/")).await.unwrap();
        assert_eq!(r.backend().as_deref(), Some("second"));
    }
    let logs = tg.logs();
    assert_eq!(
        logs.matches("backend name does not resolve").count(),
        1,
        "{logs}"
    );
    first.abort();
    second.abort();
}

/// The target of a deploy was drained before it (the previous deploy's old pool): a
/// rollback drains it again, as the checkpoint recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_drains_again_a_target_that_was_drained_before() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, &dir.path().join("s.json"))).await;
    let r = post(&tg.admin_url("/api/v1/pools/green/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&tg, "green drained", |s| {
        s["pools"]["green"]["state"] == "drained"
    })
    .await;
    let (code, out) = cli(&with_admin(&tg, &["deploy", "app", "--to", "green"])).await;
    assert_eq!(code, 0, "{out}");
    let s = status(&tg).await;
    assert_eq!(s["pools"]["green"]["state"], "active", "{s}");
    let (code, out) = cli(&with_admin(&tg, &["rollback", "app"])).await;
    assert_eq!(code, 0, "{out}");
    let s = wait_status(&tg, "green drained again", |s| {
        s["pools"]["green"]["state"] == "drained"
    })
    .await;
    assert_eq!(s["pools"]["blue"]["state"], "active", "{s}");
    assert_eq!(s["routes"][0]["split"]["blue"], 100, "{s}");
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("blue")
    );
}
