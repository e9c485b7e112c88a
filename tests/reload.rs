//! Hot swap: rewriting the file under load moves the split with zero failures; invalid files
//! of every kind change nothing and are reported in the log, the reload reply and `check`.

mod common;

use std::time::Duration;

use common::*;

fn config(blue: &std::net::SocketAddr, green: &std::net::SocketAddr, wb: u32, wg: u32) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: {wb}, green: {wg} }}
    hold: {{ timeout: 5s }}
pools:
  blue:
    backends: [{{ address: "{blue}" }}]
  green:
    backends: [{{ address: "{green}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewriting_the_file_under_load_moves_the_split_without_failures() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, 100, 0)).await;

    let load = Load::start(tg.url("/"), 4);
    wait_for("traffic on blue", Duration::from_secs(10), || async {
        (blue.app.hits() > 50).then_some(())
    })
    .await;
    assert_eq!(green.app.hits(), 0);

    // Editor-style save (temp + rename): seen by the directory watch, no signal needed.
    tg.rewrite_config(&config(&blue.addr, &green.addr, 0, 100));
    wait_for("generation 2", Duration::from_secs(10), || async {
        (tg.generation().await == 2).then_some(())
    })
    .await;
    let blue_after_swap = blue.app.hits();
    wait_for("traffic on green", Duration::from_secs(10), || async {
        (green.app.hits() > 50).then_some(())
    })
    .await;
    // Once generation 2 is visible, blue gets only what was already routed: at most one
    // request per client (4 clients).
    let late_blue = blue.app.hits() - blue_after_swap;
    assert!(
        late_blue <= 4,
        "{late_blue} requests reached blue after the swap"
    );
    // Then a split change through the API path.
    tg.rewrite_config(&config(&blue.addr, &green.addr, 50, 50));
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mid = (blue.app.hits(), green.app.hits());
    wait_for("traffic on both", Duration::from_secs(10), || async {
        (blue.app.hits() > mid.0 + 20 && green.app.hits() > mid.1 + 20).then_some(())
    })
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "failed requests during reloads");
    assert!(ok > 150);
    assert!(tg.logs().contains("config reloaded"), "{}", tg.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_change_nothing_and_say_where() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let good = config(&blue.addr, &green.addr, 100, 0);
    let tg = Tidegate::start(&good).await;
    let gen0 = tg.generation().await;

    // (what is broken, replace, with, expected key path / text in the error)
    let cases: Vec<(&str, String, String, &str)> = vec![
        ("yaml syntax", "split: {".into(), "split: {{".into(), "line"),
        (
            "unknown key",
            "    hold:".into(),
            "    hodl:".into(),
            "routes[0]",
        ),
        (
            "unknown pool",
            "green: 0".into(),
            "gren: 0".into(),
            "routes[0].split.gren",
        ),
        (
            "weight out of range",
            "green: 0".into(),
            "green: 20000".into(),
            "routes[0].split.green",
        ),
        (
            "bad address",
            format!("address: \"{}\"", green.addr),
            "address: \"not-an-address\"".into(),
            "pools.green.backends[0].address",
        ),
        (
            "duplicate names",
            "  - name: app".into(),
            "  - name: app\n    split: { blue: 1 }\n  - name: app".into(),
            "routes[1].name",
        ),
        (
            "bad duration",
            "timeout: 5s".into(),
            "timeout: 5 parsecs".into(),
            "routes[0].hold.timeout",
        ),
    ];
    for (what, from, to, expect) in cases {
        assert!(good.contains(&from), "case {what} does not apply");
        let bad = good.replacen(&from, &to, 1);
        tg.rewrite_config(&bad);
        let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        let j = r.json();
        assert!(
            j["message"].as_str().unwrap().contains(expect),
            "{what}: {j}"
        );
        // The old config keeps serving: blue gets the traffic, generation unchanged.
        let resp = get(&tg.url("/")).await.unwrap();
        assert_eq!(resp.backend().as_deref(), Some("blue"), "{what}");
        assert_eq!(tg.generation().await, gen0, "{what}");
        // Logged, and `tidegate check` names the key path and exits 1.
        assert!(tg.logs().contains(expect), "{what}: log lacks {expect:?}");
        let (code, out) = check(&tg.config);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains(expect), "{what}: check output {out:?}");
        assert_eq!(out.trim().lines().count(), 1, "{what}: one line: {out:?}");
    }
    let stats = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    assert!(stats["reloads"]["failed"].as_u64().unwrap() >= 7);
    // Fixing the file applies it.
    tg.rewrite_config(&config(&blue.addr, &green.addr, 0, 100));
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
    let (code, _) = check(&tg.config);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let unwatched = |b, g| {
        format!(
            "config_watch: false\n{}",
            config(&blue.addr, &green.addr, b, g)
        )
    };
    let tg = Tidegate::start(&unwatched(100, 0)).await;
    // With the watch off, only the signal can apply the new file.
    tg.rewrite_config(&unwatched(0, 100));
    assert_eq!(tg.generation().await, 1);
    tg.signal(libc::SIGHUP);
    wait_for("green serving", Duration::from_secs(10), || async {
        (get(&tg.url("/")).await.ok()?.backend()? == "green").then_some(())
    })
    .await;
    assert_eq!(tg.generation().await, 2);
    assert!(tg.logs().contains("source=\"sighup\""), "{}", tg.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_request_finishes_on_its_snapshot() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, 100, 0)).await;
    let url = tg.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_for("slow request on blue", Duration::from_secs(5), || async {
        (blue.app.hits() == 1).then_some(())
    })
    .await;
    // The new config drops the blue pool entirely.
    let green_only = format!(
        "listeners: [{{ name: public, address: \"{{listen}}\" }}]\nadmin: {{ address: \"{{admin}}\" }}\nroutes:\n  - name: app\n    split: {{ green: 1 }}\npools:\n  green:\n    backends: [{{ address: \"{}\" }}]\n",
        green.addr
    );
    tg.rewrite_config(&green_only);
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["summary"]["pools_removed"][0], "blue");
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
    let r = slow
        .await
        .unwrap()
        .expect("the in-flight request must finish");
    assert_eq!(r.status, 200);
    assert_eq!(r.backend().as_deref(), Some("blue"));
}

/// Status and metrics without what moves by itself or counts the refusal itself.
async fn observable(tg: &Tidegate) -> (serde_json::Value, String) {
    // Once the last proxied request's guard has dropped (just after its answer).
    let mut s = wait_status(tg, "nothing in flight", |s| s["in_flight"] == 0).await;
    s.as_object_mut().unwrap().remove("reloads");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    let m = m
        .lines()
        // Access log lines are written a moment after their request: they move by themselves.
        .filter(|l| {
            !l.contains("process_")
                && !l.contains("tidegate_config_reloads_total")
                && !l.contains("tidegate_access_log_lines_total")
        })
        .collect::<Vec<_>>()
        .join("\n");
    (s, m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_reload_leaves_nothing_behind() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let good = config(&blue.addr, &green.addr, 100, 0);
    let tg = Tidegate::start(&good).await;
    assert_eq!(get(&tg.url("/")).await.unwrap().status, 200);
    let before = observable(&tg).await;
    // A new pool and a new backend, in a file refused for another reason.
    let bad = good
        .variant(
            "pools:\n",
            "pools:\n  phantom:\n    backends: [{ address: \"127.0.0.1:9\" }]\n",
        )
        .variant(
            &format!("[{{ address: \"{}\" }}]", green.addr),
            &format!(
                "[{{ address: \"{}\" }}, {{ address: \"127.0.0.1:8\" }}]",
                green.addr
            ),
        )
        .variant(
            "split: { blue: 100, green: 0 }",
            "split: { blue: 100, gren: 0 }",
        );
    tg.rewrite_config(&bad);
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["kind"], "unknown_pool");
    let after = observable(&tg).await;
    assert_eq!(before.0, after.0, "status changed");
    assert_eq!(before.1, after.1, "metrics changed");
    assert!(!after.1.contains("phantom") && !after.1.contains("127.0.0.1:8"));
    let r = get(&tg.admin_url("/api/v1/pools/phantom/drain"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    let out = std::process::Command::new(binary())
        .args(["drain", "phantom", "--wait", "--timeout", "2s", "--admin"])
        .arg(tg.admin_url(""))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let r = get(&tg.admin_url("/api/v1/pools/green/backends/127.0.0.1%3A8/drain"))
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    // The failure is counted where it should be.
    let s = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    assert_eq!(s["reloads"]["failed"], 1);
}
