//! The fleet's promises at their edges, with real processes and a real PostgreSQL: two
//! writers at once through two proxies, rows written by hand into the database, a proxy
//! started while the store is down, a drain its own config file declares, two proxies
//! under one node name, and the status page's Fleet table in Chromium.

mod common;

use std::time::{Duration, Instant};

use common::{fleet::*, postgres::Postgres, *};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_at_once_through_two_proxies_both_win() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "c1").await;
    let p2 = proxy(&blue, &green, pg.port, "c2").await;
    for round in 0..10u64 {
        let w = 10 + round;
        let split = format!(r#"{{"split":{{"blue":{},"green":{w}}}}}"#, 100 - w);
        let drain_path = if round % 2 == 0 { "drain" } else { "undrain" };
        let path = format!("/api/v1/pools/green/backends/g1/{drain_path}");
        let t0 = Instant::now();
        let (a, b) = tokio::join!(
            api(&p1, "PUT", "/api/v1/routes/app/split", &split),
            api(&p2, "POST", &path, "{}"),
        );
        eprintln!("round {round}: answered in {:?}", t0.elapsed());
        assert_eq!(
            (a.status, b.status / 100),
            (200, 2),
            "{} {}",
            a.body,
            b.body
        );
        let want = if round % 2 == 0 { "drained" } else { "active" };
        let t = Instant::now();
        loop {
            let (s1, s2) = (status(&p1).await.unwrap(), status(&p2).await.unwrap());
            let good = |s: &Value| {
                split_of(s)["green"] == w && s["pools"]["green"]["backends"][0]["state"] == want
            };
            if good(&s1) && good(&s2) {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let brief = |s: &Value| {
                    format!(
                        "{} {} rev {}",
                        split_of(s),
                        s["pools"]["green"]["backends"][0]["state"],
                        s["fleet"]["rev"]
                    )
                };
                panic!(
                    "round {round}: want green={w} {want}; p1: {}; p2: {}; store: {}",
                    brief(&s1),
                    brief(&s2),
                    pg.psql("SELECT key, value, rev, updated_by FROM tidegate_control")
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The store holds both, as the proxies do.
    let rows = pg.psql("SELECT key FROM tidegate_control ORDER BY key");
    assert!(rows.contains("split/app"), "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_written_by_hand_are_checked_like_input_and_nothing_breaks() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "g1").await;
    // A database writer who is not tidegate: a time past the clock's range, weights past the
    // split range, a ramp of four billion steps, a kind nobody knows, a drain of a pool this
    // proxy does not have, a heartbeat at minus infinity. Then a notification.
    pg.psql(
        r#"INSERT INTO tidegate_control (key, value, rev, updated_by) VALUES
        ('drain/blue', '{"pool":"blue","backend":null,"started_at":1e300,"requests_deadline_ms":null,"streams_deadline_ms":null,"close_spread_ms":0}', 90, 'x'),
        ('split/app', '{"blue":4000000000,"green":3999999999}', 90, 'x'),
        ('ramp/app', '{"state":"running","from":{"blue":100},"to":{"green":100},"over_seconds":1,"step_seconds":0.0,"steps_done":0,"steps_total":4000000000,"started_at":0,"reason":null,"id":"evil"}', 90, 'x'),
        ('bogus/x', '[1,2,3]', 90, 'x'),
        ('drain/purple', '{"pool":"purple","backend":null,"started_at":1,"requests_deadline_ms":null,"streams_deadline_ms":null,"close_spread_ms":0}', 90, 'x');
        UPDATE tidegate_control_meta SET rev = 90;
        INSERT INTO tidegate_heartbeats (node, instance, admin, rev, counts, outcomes, heartbeat)
            VALUES ('ghost', 'i', 'x', 0, '{"blue/b1":{"sse":7}}', '[]', '-infinity');
        SELECT pg_notify('tidegate_control', '90 x');"#,
    );
    wait_for(
        "the rows read and refused",
        Duration::from_secs(10),
        || async { (p1.logs().matches("not applied on this proxy").count() >= 3).then_some(()) },
    )
    .await;
    let s = wait_status(&p1, "the ghost listed", |s| {
        s["fleet"]["proxies"]
            .as_array()
            .is_some_and(|ps| ps.len() == 2)
    })
    .await;
    assert_eq!(
        split_of(&s),
        serde_json::json!({"blue": 100, "green": 0}),
        "the file's split"
    );
    assert_eq!(s["pools"]["blue"]["state"], "active");
    assert_eq!(
        get(&p1.url("/")).await.unwrap().backend().as_deref(),
        Some("blue")
    );
    let ghost = s["fleet"]["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "ghost")
        .cloned();
    assert_eq!(
        ghost.map(|g| g["lost"].clone()),
        Some(Value::Bool(true)),
        "{}",
        s["fleet"]
    );
    assert_eq!(s["fleet"]["store_reachable"], true);
    // Valid changes still flow, and the row of a pool this proxy lacks stays in the store.
    put_split(&p1, 50, 50).await;
    let r = api(&p1, "POST", "/api/v1/config/reload", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    tokio::time::sleep(Duration::from_secs(3)).await; // a resync and a prune pass
    let keys = pg.psql("SELECT key FROM tidegate_control ORDER BY key");
    assert!(keys.contains("drain/purple"), "{keys}");
    assert!(!p1.logs().contains("panicked"), "{}", p1.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_started_while_the_store_is_down_routes_nothing_until_it_has_loaded() {
    let pg = Postgres::start().await;
    let relay = Relay::start(pg.port).await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "u1").await;
    put_split(&p1, 0, 100).await;
    relay.set(false);
    let y = yaml(
        &blue.addr.to_string(),
        &green.addr.to_string(),
        relay.port,
        "u2",
    );
    let late = Tidegate::spawn(&y, &[]);
    let r = wait_for("u2 answering", Duration::from_secs(10), || async {
        get(&late.admin_url("/readyz")).await.ok()
    })
    .await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("loading the shared state"), "{}", r.body);
    // The admin listener may answer before the public one is bound.
    let r = wait_for("u2's listener", Duration::from_secs(10), || async {
        get(&late.url("/")).await.ok()
    })
    .await;
    assert_eq!(
        r.status, 503,
        "no request is routed before the shared state: {}",
        r.body
    );
    assert_eq!(
        r.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    let r = api(&late, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 503, "{}", r.body);
    relay.set(true);
    late.wait_ready().await;
    assert_eq!(
        get(&late.url("/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_the_config_file_declares_stays_that_proxys_own() {
    let pg = Postgres::start().await;
    let relay = Relay::start(pg.port).await;
    let (blue, green) = blue_green().await;
    let plain = yaml(
        &blue.addr.to_string(),
        &green.addr.to_string(),
        pg.port,
        "f1",
    );
    let p1 = Tidegate::start(&plain).await;
    let declared = yaml(
        &blue.addr.to_string(),
        &green.addr.to_string(),
        relay.port,
        "f2",
    )
    .replace("  green:\n", "  green:\n    state: draining\n");
    let p2 = Tidegate::start(&declared).await;
    assert_eq!(
        status(&p2).await.unwrap()["pools"]["green"]["state"],
        "drained"
    );
    // Not the fleet's: p1 keeps green active, the store has no row for it.
    let r = api(&p1, "PUT", "/api/v1/maintenance", r#"{"retry_after":"1s"}"#).await;
    assert_eq!(r.status, 200);
    all_follow(&[&p2], "p2 in step", |s| {
        s["maintenance"]["maintenance"] == true
    })
    .await;
    assert_eq!(
        status(&p1).await.unwrap()["pools"]["green"]["state"],
        "active"
    );
    assert!(!pg
        .psql("SELECT key FROM tidegate_control")
        .contains("drain/green"));
    // A reconnect of p2 takes the fleet's state and keeps its own file's drain.
    relay.set(false);
    wait_for("p2 cut off", Duration::from_secs(15), || async {
        (get(&p2.admin_url("/health"))
            .await
            .ok()?
            .body
            .contains("control store unreachable"))
        .then_some(())
    })
    .await;
    relay.set(true);
    wait_for("p2 back", Duration::from_secs(15), || async {
        let h = get(&p2.admin_url("/health")).await.ok()?;
        (!h.body.contains("control store unreachable")).then_some(())
    })
    .await;
    assert_eq!(
        status(&p2).await.unwrap()["pools"]["green"]["state"],
        "drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_under_one_node_name_are_told() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let mut a = proxy(&blue, &green, pg.port, "twin").await;
    let b = proxy(&blue, &green, pg.port, "twin").await;
    // Both are counted (one row per process), and both say the name is not theirs alone.
    let mut sse = Sse::open(&b.url("/events?interval_ms=100")).await;
    assert_eq!(sse.status, 200);
    for tg in [&a, &b] {
        wait_for(
            "the name clash reported",
            Duration::from_secs(15),
            || async {
                let h = get(&tg.admin_url("/health")).await.ok()?;
                h.body
                    .contains("heartbeats under this node name")
                    .then_some(())
            },
        )
        .await;
    }
    let d = wait_for("b's stream seen by a", Duration::from_secs(10), || async {
        let d = get(&a.admin_url("/api/v1/pools/blue/drain"))
            .await
            .ok()?
            .json();
        (d["fleet"]["holding"] == serde_json::json!(["twin"])).then_some(d)
    })
    .await;
    assert_eq!(d["drained"], false, "{d}");
    assert!(a.logs().contains("set control_store.node"), "{}", a.logs());
    assert!(sse.next_data(Duration::from_secs(5)).await.is_ok());
    // One leaves cleanly: the other's warning ends.
    a.signal(libc::SIGTERM);
    a.wait_exit(Duration::from_secs(20)).await;
    wait_for("the clash over", Duration::from_secs(15), || async {
        let h = get(&b.admin_url("/health")).await.ok()?;
        (!h.body.contains("node name")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_the_fleet_and_a_lost_proxy() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "u1").await;
    let mut p2 = proxy(&blue, &green, pg.port, "u2").await;
    let mut b = common::cdp::Browser::start(1280, 900).await;
    b.navigate(&p1.admin_url("/ui")).await;
    b.wait_true(
        "both proxies on the page",
        "!document.getElementById('fleet').hidden && !!document.querySelector('[data-proxy=\"u1\"]') \
         && document.querySelector('[data-proxy=\"u2\"]')?.dataset.lost === 'false'",
        Duration::from_secs(15),
    )
    .await;
    let text = b.eval("document.getElementById('fleet').textContent").await;
    assert!(text.as_str().unwrap().contains("reachable"), "{text}");
    let _ = p2.child.kill();
    let _ = p2.child.wait();
    b.wait_true(
        "u2 shown lost",
        "document.querySelector('[data-proxy=\"u2\"]')?.dataset.lost === 'true'",
        Duration::from_secs(15),
    )
    .await;
}
