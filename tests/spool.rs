//! The durable spool, with the shipped `conf/webhooks.yaml` first: a POST that finds no
//! backend is stored and answered 202; nothing is lost across `kill -9`; items are replayed
//! in arrival order with their id and attempt headers; failures are retried with back-off or
//! kept dead for an operator; a full store, a too-large body and an unusable store get their
//! documented answers and keep nothing.

mod common;

use std::{sync::Arc, time::Duration};

use common::{recorder::Recorder, spool::*, *};

#[tokio::test]
async fn shipped_webhooks_conf_spools_and_survives_kill9() {
    let app = dead_addr();
    let state = tempfile::tempdir().expect("tempdir");
    let mut tg = Tidegate::start(&webhooks_yaml(app, state.path())).await;
    // The app is down: the hook is held for hold.timeout (5 s), then stored.
    let r = post(
        &tg.url("/hooks/github?delivery=1"),
        &[
            ("content-type", "application/json"),
            ("x-github-event", "push"),
        ],
        r#"{"ref":"main"}"#,
    )
    .await
    .expect("post");
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.headers["tidegate-spool-id"].to_str().unwrap().to_string();
    let body = r.json();
    assert_eq!(body["spooled"], true);
    assert_eq!(body["id"].to_string(), id);
    assert_eq!(body["route"], "hooks");
    // Other routes are not spooled: a GET to the app is a 503 after its hold.
    let health = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(health["spool"][0]["pending"], 1, "{health}");

    // Crash right after the 202, then the app comes up and tidegate is restarted.
    let _ = tg.child.kill();
    let _ = tg.child.wait();
    let rec = Recorder::start(app).await;
    tg.kill9_restart().await;
    let seen = wait_seen(&rec, 1, Duration::from_secs(15)).await;
    let s = &seen[0];
    assert_eq!(
        (s.method.as_str(), s.path.as_str()),
        ("POST", "/hooks/github?delivery=1")
    );
    assert_eq!(s.body, r#"{"ref":"main"}"#);
    assert_eq!(s.header("tidegate-spool-id"), id);
    assert_eq!(s.header("tidegate-spool-attempt"), "1");
    assert_eq!(s.header("x-github-event"), "push");
    assert_eq!(s.header("content-type"), "application/json");
    assert_eq!(s.header("x-forwarded-for"), "127.0.0.1");
    assert!(
        s.header("host").starts_with("127.0.0.1:"),
        "{:?}",
        s.headers
    );
    // Delivered items leave the store; the route is served directly again.
    wait_for("spool empty", Duration::from_secs(5), || async {
        let l = spool_list(&tg, "").await;
        (l["total"] == 0 && l["routes"][0]["pending"] == 0).then_some(())
    })
    .await;
    let r = post(&tg.url("/hooks/github"), &[], "direct").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.get("tidegate-spool-id").is_none());
    assert!(
        tg.logs().contains("spooled request delivered"),
        "{}",
        tg.logs()
    );
    assert!(tg.logs().contains("spool is empty again"));
}

#[tokio::test]
async fn a_thousand_items_from_concurrent_senders_arrive_in_order() {
    let app = dead_addr();
    let state = tempfile::tempdir().expect("tempdir");
    let mut tg = Tidegate::start(&fast_yaml(app, state.path(), "")).await;
    let senders = 10;
    let per = 100;
    let url = Arc::new(tg.url("/hooks/x"));
    let tasks: Vec<_> = (0..senders)
        .map(|s| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = client();
                let mut ids = Vec::new();
                for i in 0..per {
                    let r = send(&c, "POST", &url, &[], &format!("{s}:{i}"))
                        .await
                        .expect("post");
                    assert_eq!(r.status, 202, "{}", r.body);
                    ids.push(r.json()["id"].as_i64().unwrap());
                }
                ids
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for t in tasks {
        let ids = t.await.unwrap();
        // One sender's items were accepted one after the other: ascending ids.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        accepted.extend(ids);
    }
    assert_eq!(spool_list(&tg, "?limit=1").await["total"], senders * per);
    let _ = tg.child.kill();
    let _ = tg.child.wait();
    let rec = Recorder::start(app).await;
    tg.kill9_restart().await;
    let seen = wait_seen(&rec, senders * per, Duration::from_secs(60)).await;
    let ids: Vec<i64> = seen.iter().map(|s| s.spool_id()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not in arrival order");
    accepted.sort();
    assert_eq!(ids, accepted, "every accepted item, once");
    for s in &seen {
        assert_eq!(s.header("tidegate-spool-attempt"), "1");
        let (who, i) = s.body.split_once(':').expect("body");
        assert!(who.parse::<usize>().unwrap() < senders && i.parse::<usize>().unwrap() < per);
    }
    assert!(rec.shared.overlaps.lock().unwrap().is_empty());
}

#[tokio::test]
async fn failures_are_retried_with_backoff_and_4xx_is_dead_until_an_operator_retries() {
    let mut rec = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    let app = rec.addr;
    rec.stop();
    let state = tempfile::tempdir().expect("tempdir");
    let tg = Tidegate::start(&fast_yaml(app, state.path(), "")).await;
    let r = post(&tg.url("/hooks/a"), &[], "one").await.unwrap();
    assert_eq!(r.status, 202);
    // The app is back but fails twice with 500 and 503: retried, then delivered.
    rec.fail_next(500, 1);
    rec.fail_next(503, 1);
    rec.listen().await;
    // The app is up, but "one" still waits: a new request queues behind it (order).
    let r = post(&tg.url("/hooks/a"), &[], "later").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let seen = wait_seen(&rec, 4, Duration::from_secs(10)).await;
    let attempts: Vec<(String, String)> = seen
        .iter()
        .map(|s| (s.body.clone(), s.header("tidegate-spool-attempt")))
        .collect();
    let want = [("one", "1"), ("one", "2"), ("one", "3"), ("later", "1")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(b, a)| (b.to_string(), a.to_string()))
        .collect();
    assert_eq!(attempts, want);
    wait_for("delivered", Duration::from_secs(5), || async {
        (spool_list(&tg, "").await["total"] == 0).then_some(())
    })
    .await;

    // While the spool is empty and the app is up, requests go straight through.
    let r = post(&tg.url("/hooks/a"), &[], "direct").await.unwrap();
    assert_eq!(r.status, 200);

    // A 400 is not retried: the item is dead, listed, and health is degraded.
    rec.answer(400);
    rec.stop();
    let r = post(&tg.url("/hooks/b"), &[], "two").await.unwrap();
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_i64().unwrap();
    rec.listen().await;
    let dead = wait_for("a dead item", Duration::from_secs(10), || async {
        let l = spool_list(&tg, "?state=dead").await;
        (l["items"].as_array().map(Vec::len) == Some(1)).then_some(l)
    })
    .await;
    let item = &dead["items"][0];
    assert_eq!(item["id"], id);
    assert_eq!(item["last_status"], 400);
    // A 400 is final: the app saw the item once (an attempt before it listened again may
    // have failed to connect and been retried).
    let sent = rec.seen().iter().filter(|s| s.spool_id() == id).count();
    assert_eq!(sent, 1);
    assert!(item["attempts"].as_u64().unwrap() >= 1);
    assert_eq!(item["path"], "/hooks/b");
    let h = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["reasons"].to_string().contains("dead spooled"), "{h}");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains(r#"tidegate_spool_items{route="hooks",state="dead"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tidegate_spool_replays_total{result="dead",route="hooks"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tidegate_spool_replays_total{result="retry",route="hooks"} 2"#),
        "{m}"
    );

    // The operator fixes the app and retries the dead item with the CLI.
    rec.answer(200);
    let before = rec.seen().len();
    let out = std::process::Command::new(binary())
        .args([
            "spool",
            "retry",
            &id.to_string(),
            "--admin",
            &tg.admin.to_string(),
        ])
        .output()
        .expect("cli");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 item(s) queued again"));
    let seen = wait_seen(&rec, before + 1, Duration::from_secs(10)).await;
    let last = seen.last().unwrap();
    assert_eq!((last.spool_id(), last.body.as_str()), (id, "two"));
    assert_eq!(last.header("tidegate-spool-attempt"), "1");
    wait_for("healthy again", Duration::from_secs(5), || async {
        let h = get(&tg.admin_url("/health")).await.unwrap().json();
        (h["status"] == "healthy").then_some(())
    })
    .await;
}

#[tokio::test]
async fn full_store_large_body_and_unusable_store_keep_nothing() {
    let app = dead_addr();
    let state = tempfile::tempdir().expect("tempdir");
    let tg = Tidegate::start(&fast_yaml(
        app,
        state.path(),
        ", max_items: 2, max_body: 10",
    ))
    .await;
    let r = post(&tg.url("/hooks/x"), &[], "0123456789A").await.unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("max_body"));
    for i in 0..2 {
        let r = post(&tg.url("/hooks/x"), &[], &format!("item{i}"))
            .await
            .unwrap();
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let r = post(&tg.url("/hooks/x"), &[], "item2").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.json()["error"], "spool_full");
    // A GET is not spooled (methods: [POST]).
    let r = get(&tg.url("/hooks/x")).await.unwrap();
    assert_eq!(r.status, 503);
    assert!(r.headers.get("tidegate-spool-id").is_none());
    let l = spool_list(&tg, "").await;
    assert_eq!(l["total"], 2, "{l}");
    let bodies: Vec<u64> = (0..2)
        .map(|i| l["items"][i]["body_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(bodies, [5, 5]);
    // Purging dead items leaves pending ones; purging pending empties the store.
    let r = send(&client(), "DELETE", &tg.admin_url("/api/v1/spool"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "a state is required: {}", r.body);
    let r = send(
        &client(),
        "DELETE",
        &tg.admin_url("/api/v1/spool?state=pending"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.json()["changed"], 2);

    // A store that cannot be opened: 503, logged, nothing answered 202.
    let bad = tempfile::tempdir().expect("tempdir");
    let blocker = bad.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let yaml = fast_yaml(app, state.path(), "").variant(
        "pools:",
        &format!(
            "spool_store: {{ path: {} }}\npools:",
            blocker.join("spool.db").display()
        ),
    );
    let tg2 = Tidegate::start(&yaml).await;
    let r = post(&tg2.url("/hooks/x"), &[], "lost?").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "spool_unavailable");
    assert!(
        tg2.logs().contains("cannot open the spool store"),
        "{}",
        tg2.logs()
    );
    let r = get(&tg2.admin_url("/api/v1/spool")).await.unwrap();
    assert_eq!(r.status, 503);
}
