//! The CLI's client verbs against running proxies: output, exit codes, `--json`, a fleet.

mod common;

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;

/// Run `tidegate ARGS` off the async runtime: (exit code, stdout, stderr).
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(binary())
            .args(&args)
            .env_remove("TIDEGATE_ADMIN_TOKEN")
            .output()
            .expect("run tidegate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(v: &[&str], tg: &Tidegate) -> Vec<String> {
    let mut a: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    a.push("--admin".into());
    a.push(tg.admin.to_string());
    a
}

fn config(blue: &std::net::SocketAddr, green: &std::net::SocketAddr) -> String {
    format!(
        r#"
config_watch: false
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: b1 }}]
  green:
    backends: [{{ address: "{green}", name: g1 }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reload_maintenance_and_errors() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr)).await;
    let (code, out, _) = cli(args(&["status"], &tg)).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("blue/b1")
            && out.contains("green/g1")
            && out.contains("route app")
            && out.contains("blue=100"),
        "{out}"
    );
    let (code, out, _) = cli(args(&["status", "--json"], &tg)).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json parses");
    assert_eq!(v[0]["generation"], 1);

    // reload prints what changed; a broken file is refused with exit 1.
    std::fs::write(
        &tg.config,
        config(&blue.addr, &green.addr)
            .variant("blue: 100, green: 0", "blue: 50, green: 50")
            .variant("{listen}", &tg.listen.to_string())
            .variant("{admin}", &tg.admin.to_string()),
    )
    .unwrap();
    let (code, out, _) = cli(args(&["reload"], &tg)).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("generation 2") && out.contains("routes changed: app"),
        "{out}"
    );
    std::fs::write(&tg.config, "listeners: [").unwrap();
    let (code, out, _) = cli(args(&["reload"], &tg)).await;
    assert_eq!(code, 1);
    assert!(out.contains("refused"), "{out}");

    let (code, _, _) = cli(args(
        &[
            "maintenance",
            "on",
            "--method",
            "POST",
            "--retry-after",
            "20s",
        ],
        &tg,
    ))
    .await;
    assert_eq!(code, 0);
    assert_eq!(post(&tg.url("/x"), &[], "").await.unwrap().status, 503);
    assert_eq!(get(&tg.url("/x")).await.unwrap().status, 200);
    let (code, _, _) = cli(args(&["maintenance", "off"], &tg)).await;
    assert_eq!(code, 0);
    assert_eq!(post(&tg.url("/x"), &[], "").await.unwrap().status, 200);

    // Errors: one line, exit 2.
    let (code, _, err) = cli(args(&["drain", "gren"], &tg)).await;
    assert_eq!(code, 2);
    assert!(err.contains("404") && err.contains("gren"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = cli(vec!["status".into(), "--admin".into(), dead]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unauthorized_is_a_clear_error() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = config(&blue.addr, &green.addr).variant(
        "admin: { address: \"{admin}\" }",
        "admin: { address: \"{admin}\", token_env: TG_CLI_TOKEN }",
    );
    let tg = Tidegate::spawn(&yaml, &[("TG_CLI_TOKEN", "tok")]);
    tg.wait_ready().await;
    let (code, _, err) = cli(args(&["status"], &tg)).await;
    assert_eq!(code, 2);
    assert!(err.contains("unauthorized"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let tf = dir.path().join("token");
    std::fs::write(&tf, "tok\n").unwrap();
    let mut a = args(&["status", "--token-file"], &tg);
    a.insert(2, tf.to_string_lossy().into_owned());
    let (code, out, err) = cli(a).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue/b1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_wait_exits_0_when_the_last_stream_ends_and_1_on_timeout() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr)).await;
    let mut sse = Sse::open(&tg.url("/events/push")).await;
    wait_status(&tg, "stream counted", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    let (code, out, err) = cli(args(&["drain", "blue", "--wait", "--timeout", "1s"], &tg)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("not drained") && out.contains("sse 1"),
        "{out}"
    );
    assert!(err.contains("sse 1"), "progress lines on stderr: {err}");
    let wait = tokio::spawn(cli(args(
        &["drain", "blue", "--wait", "--timeout", "30s", "--json"],
        &tg,
    )));
    tokio::time::sleep(Duration::from_millis(500)).await; // let the waiter start; not a proof
    blue.app.push("__end__");
    assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
    let (code, out, _) = wait.await.unwrap();
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["drained"], true);
    let (code, out, _) = cli(args(&["undrain", "blue"], &tg)).await;
    assert_eq!(code, 0);
    assert!(out.contains("active"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shift_rolls_back_on_errors_and_completes_when_healthy() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr)).await;
    // Steady traffic during the shift.
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, url) = (stop.clone(), tg.url("/"));
    let load = tokio::spawn(async move {
        let c = client();
        while !s2.load(Ordering::Relaxed) {
            let _ = send(&c, "GET", &url, &[], "").await;
        }
    });
    green.app.set_failing(true);
    let shift = [
        "shift",
        "app",
        "green=100",
        "blue=0",
        "--over",
        "2s",
        "--step",
        "500ms",
        "--max-error-rate",
        "0.1",
        "--min-requests",
        "5",
    ];
    let (code, out, err) = cli(args(&shift, &tg)).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("rolled back") && out.contains("green"),
        "{out}"
    );
    let st = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    assert_eq!(
        st["routes"][0]["split"]["blue"], 100,
        "split restored: {st}"
    );
    assert_eq!(st["routes"][0]["split"]["green"], 0);
    green.app.set_failing(false);
    let (code, out, err) = cli(args(&shift, &tg)).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("shifted to") && out.contains("step 4/4"),
        "{out}"
    );
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_two_proxies() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let a = Tidegate::start(&config(&blue.addr, &green.addr)).await;
    let b = Tidegate::start(&config(&blue.addr, &green.addr)).await;
    let fleet = |v: &[&str]| {
        let mut x: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        x.extend([
            "--admin".to_string(),
            a.admin.to_string(),
            "--admin".to_string(),
            b.admin.to_string(),
        ]);
        x
    };
    let (code, out, _) = cli(fleet(&["status"])).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.matches("blue/b1").count(),
        2,
        "one row per proxy: {out}"
    );
    // A stream through proxy b only: drain --wait must wait for b too.
    let mut sse = Sse::open(&b.url("/events/push")).await;
    wait_status(&b, "stream on b", |s| {
        s["pools"]["blue"]["in_flight"]["sse"] == 1
    })
    .await;
    let (code, _, _) = cli(fleet(&["drain", "blue", "--wait", "--timeout", "1s"])).await;
    assert_eq!(code, 1, "proxy a is drained but b is not");
    blue.app.push("__end__");
    assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
    let (code, _, _) = cli(fleet(&["drain", "blue", "--wait", "--timeout", "10s"])).await;
    assert_eq!(code, 0);
    let (code, _, _) = cli(fleet(&["shift", "app", "green=100", "blue=0"])).await;
    assert_eq!(code, 0);
    for tg in [&a, &b] {
        assert_eq!(
            get(&tg.url("/")).await.unwrap().backend().as_deref(),
            Some("green")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_script_exits_0() {
    let (code, out, err) = cli(vec![
        "demo".into(),
        "--script".into(),
        "--port".into(),
        "0".into(),
        "--admin-port".into(),
        "0".into(),
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("blue is drained"), "{out}");
    assert!(out.contains("stream open on blue"), "{out}");
}
