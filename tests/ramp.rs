//! Split ramps (`over`/`step`) and slow start move the distribution as configured
//! (shortened windows, tolerant bounds).

mod common;

use std::time::Duration;

use common::*;

fn config(blue: &std::net::SocketAddr, green: &std::net::SocketAddr, pool_extra: &str) -> String {
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
    backends: [{{ address: "{blue}" }}]
  green:
    backends: [{{ address: "{green}" }}]{pool_extra}
"#
    )
}

async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .expect("admin request")
}

async fn ramp(tg: &Tidegate) -> serde_json::Value {
    let st = api(tg, "GET", "/api/v1/status", "").await.json();
    st["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app")
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ramp_moves_the_split_in_steps_and_completes() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, "")).await;
    let r = api(
        &tg,
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100},"over":"2s","step":"500ms"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let j = r.json();
    assert_eq!(j["ramp"]["state"], "running");
    assert_eq!(j["ramp"]["steps_total"], 4);
    assert_eq!(
        j["split"]["blue"], 100,
        "the first step applies after one step"
    );
    // Mid-way the split is between the ends.
    let mid = wait_for("step 2", Duration::from_secs(10), || async {
        let r = ramp(&tg).await;
        (r["ramp"]["steps_done"] == 2).then_some(r)
    })
    .await;
    let gw = mid["split"]["green"].as_u64().unwrap();
    assert!((25..=75).contains(&gw), "mid-ramp split {mid}");
    let done = wait_for("ramp completed", Duration::from_secs(10), || async {
        let r = ramp(&tg).await;
        (r["ramp"]["state"] == "completed").then_some(r)
    })
    .await;
    assert_eq!(done["split"]["green"], 100);
    assert_eq!(done["split"]["blue"], 0);
    assert_eq!(done["override"], true);
    for _ in 0..10 {
        assert_eq!(
            get(&tg.url("/")).await.unwrap().backend().as_deref(),
            Some("green")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ramp_is_cancelled_by_a_new_split_a_drain_or_a_reload() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, "")).await;
    let slow = r#"{"split":{"blue":0,"green":100},"over":"1h","step":"10m"}"#;
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":50,"green":50}}"#,
            "replaced by a new split request",
        ),
        (
            "POST",
            "/api/v1/pools/green/drain",
            "",
            "pool green was drained",
        ),
        (
            "POST",
            "/api/v1/config/reload",
            "",
            "a config reload changed the route",
        ),
    ];
    for (method, path, body, reason) in cases {
        if path.ends_with("/reload") {
            std::fs::write(
                &tg.config,
                config(&blue.addr, &green.addr, "")
                    .variant("blue: 100, green: 0", "blue: 90, green: 10")
                    .variant("{listen}", &tg.listen.to_string())
                    .variant("{admin}", &tg.admin.to_string()),
            )
            .unwrap();
        }
        assert_eq!(
            api(&tg, "POST", "/api/v1/routes/app/split", slow)
                .await
                .status,
            202
        );
        assert_eq!(ramp(&tg).await["ramp"]["state"], "running");
        let r = api(&tg, method, path, body).await;
        assert!(r.status < 300, "{path}: {}", r.body);
        let j = ramp(&tg).await;
        assert_eq!(j["ramp"]["state"], "cancelled", "{path}: {j}");
        assert_eq!(j["ramp"]["reason"], reason);
        if path.ends_with("/drain") {
            assert_eq!(
                api(&tg, "POST", "/api/v1/pools/green/undrain", "")
                    .await
                    .status,
                200
            );
        }
    }
    // Bad ramp requests change nothing.
    for body in [
        r#"{"split":{"green":1},"over":"1s","step":"10ms"}"#,
        r#"{"split":{"green":1},"step":"1s"}"#,
        r#"{"split":{"green":1},"over":"later"}"#,
    ] {
        assert_eq!(
            api(&tg, "POST", "/api/v1/routes/app/split", body)
                .await
                .status,
            400,
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_start_ramps_a_returning_backend_from_a_small_share() {
    let a = TestBackend::start("a").await;
    let b = TestBackend::start("b").await;
    let yaml = format!(
        r#"
config_watch: false
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends:
      - {{ address: "{}", name: a }}
      - {{ address: "{}", name: b }}
    slow_start: 6s
"#,
        a.addr, b.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let share_of_b = |n: usize| {
        let url = tg.url("/");
        async move {
            let c = client();
            let mut hits = 0;
            for _ in 0..n {
                if send(&c, "GET", &url, &[], "")
                    .await
                    .unwrap()
                    .backend()
                    .as_deref()
                    == Some("b")
                {
                    hits += 1;
                }
            }
            hits as f64 / n as f64
        }
    };
    // Backends present at start take their full share at once.
    let s = share_of_b(200).await;
    assert!((0.4..=0.6).contains(&s), "even split at start: {s}");
    assert_eq!(
        api(&tg, "POST", "/api/v1/pools/blue/backends/b/drain", "")
            .await
            .status,
        202
    );
    assert_eq!(
        api(&tg, "POST", "/api/v1/pools/blue/backends/b/undrain", "")
            .await
            .status,
        200
    );
    // Right after undrain b gets 10 %..~30 % of its weight: well under an even share.
    let early = share_of_b(100).await;
    assert!(early < 0.3, "b took {early} right after undrain");
    assert!(early > 0.0, "b must get some traffic while ramping");
    // After the window, an even split again.
    tokio::time::sleep(Duration::from_secs(6)).await; // the slow_start window itself
    let late = share_of_b(200).await;
    assert!((0.4..=0.6).contains(&late), "b after slow start: {late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_server_rolls_a_ramp_back_on_errors() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&config(&blue.addr, &green.addr, "")).await;
    green.app.set_failing(true);
    let load = Load::start(tg.url("/"), 2);
    let r = api(
        &tg,
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100},"over":"2s","step":"500ms","max_error_rate":0.1,"min_requests":5}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["ramp"]["max_error_rate"], 0.1);
    let url = tg.admin_url("/api/v1/routes/app/split");
    let done = wait_for("ramp rolled back", Duration::from_secs(10), || {
        let url = url.clone();
        async move {
            let j = get(&url).await.ok()?.json();
            (j["ramp"]["state"] == "rolled_back").then_some(j)
        }
    })
    .await;
    let _ = load.stop().await;
    assert_eq!(done["split"]["blue"], 100, "{done}");
    assert_eq!(done["split"]["green"], 0, "{done}");
    let reason = done["ramp"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("green") && reason.contains("over 10.0%"),
        "{reason}"
    );
    assert!(tg.logs().contains("split ramp rolled back"));
    // Bad values are refused before anything moves.
    for body in [
        r#"{"split":{"green":100},"max_error_rate":0.1}"#,
        r#"{"split":{"green":100},"over":"2s","max_error_rate":2}"#,
    ] {
        let r = api(&tg, "POST", "/api/v1/routes/app/split", body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["field"], "max_error_rate");
    }
}

/// A backend that failed connects is removed during a watched ramp and pruned with its
/// counters: the ramp's error window must not underflow (a panic in debug builds, a false
/// rollback in release); the ramp completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_a_failing_backend_during_a_watched_ramp_does_not_break_it() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let with_dead = config(&blue.addr, &green.addr, "").variant(
        &format!("backends: [{{ address: \"{}\" }}]\n", green.addr),
        &format!(
            "backends: [{{ address: \"{}\" }}, {{ address: \"{dead}\" }}]\n",
            green.addr
        ),
    );
    assert!(with_dead.contains(&dead), "the green pool was found");
    let tg = Tidegate::start(&with_dead).await;
    let r = api(
        &tg,
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100},"over":"4s","step":"400ms","max_error_rate":0.99}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Traffic until the dead backend has counted connect failures.
    wait_for(
        "connect failures on the dead backend",
        Duration::from_secs(10),
        || async {
            let _ = get(&tg.url("/")).await;
            let s = api(&tg, "GET", "/api/v1/status", "").await.json();
            let b = s["pools"]["green"]["backends"]
                .as_array()?
                .iter()
                .find(|b| b["address"] == dead.as_str())?
                .clone();
            (b["connect_failures"].as_u64()? > 0).then_some(())
        },
    )
    .await;
    // The dead backend leaves with its counts.
    let r = api(
        &tg,
        "PUT",
        "/api/v1/pools/green/backends",
        &format!(r#"[{{"address":"{}"}}]"#, green.addr),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = wait_for("ramp completed", Duration::from_secs(15), || async {
        let _ = get(&tg.url("/")).await;
        let r = ramp(&tg).await;
        (r["ramp"]["state"] != "running").then_some(r)
    })
    .await;
    assert_eq!(done["ramp"]["state"], "completed", "{done}");
    assert_eq!(done["split"]["green"], 100);
}
