//! One fleet on a shared PostgreSQL `control_store`, with real processes: three (or four)
//! tidegate proxies and a real PostgreSQL server on 127.0.0.1.
//!
//! - a change through any proxy (split, drain, maintenance, node drain) is applied by every
//!   proxy; a proxy that restarts loads the shared state before its first request;
//! - a ramp started through one proxy is stepped by one proxy at a time; killed, another
//!   takes over from the same step; every step is recorded exactly once; a proxy started
//!   mid-ramp routes its first request on the current step;
//! - the store unreachable for one proxy (its connections cut by a relay the test owns):
//!   it keeps its last state, reports degraded, refuses changes with 503, and catches up
//!   once the store is back;
//! - a drain answers for the whole fleet: a stream on another proxy keeps it from being
//!   drained; that proxy killed, it is listed as lost after the TTL;
//! - a watched ramp rolls back on errors only another proxy saw; a clean exit leaves the
//!   fleet. (The edges: `tests/fleet_edges.rs`.)

mod common;

use std::time::Duration;

use common::{fleet::*, postgres::Postgres, *};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_proxy_is_applied_by_the_whole_fleet() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "p1").await;
    let p2 = proxy(&blue, &green, pg.port, "p2").await;
    let mut p3 = proxy(&blue, &green, pg.port, "p3").await;
    let fleet = [&p1, &p2, &p3];

    // A split through p1.
    put_split(&p1, 0, 100).await;
    let took = all_follow(&fleet, "the split on every proxy", |s| {
        split_of(s)["green"] == 100
    })
    .await;
    eprintln!("split followed by the fleet in {took:?}");
    for tg in fleet {
        let r = get(&tg.url("/")).await.unwrap();
        assert_eq!(r.backend().as_deref(), Some("green"), "{}", tg.admin);
    }

    // A drain through p2, an undrain through p3.
    let r = api(&p2, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    all_follow(&fleet, "blue drained everywhere", |s| {
        s["pools"]["blue"]["state"] == "drained"
    })
    .await;
    let r = api(&p3, "POST", "/api/v1/pools/blue/undrain", "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    all_follow(&fleet, "blue active everywhere", |s| {
        s["pools"]["blue"]["state"] == "active"
    })
    .await;

    // Maintenance through p3 stops traffic on p1.
    let r = api(
        &p3,
        "POST",
        "/api/v1/maintenance",
        r#"{"retry_after":"5s"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("maintenance on p1", Duration::from_secs(5), || async {
        (get(&p1.url("/")).await.ok()?.status == 503).then_some(())
    })
    .await;
    let r = api(&p1, "DELETE", "/api/v1/maintenance", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    all_follow(&fleet, "maintenance off everywhere", |s| {
        s["maintenance"]["maintenance"] == false
    })
    .await;

    // A crash and restart of p3: its first request after readiness follows the fleet's split.
    p3.kill9_restart().await;
    let r = get(&p3.url("/")).await.unwrap();
    assert_eq!(
        r.backend().as_deref(),
        Some("green"),
        "first request after the restart"
    );

    // The fleet in the status: three proxies, each with a fresh heartbeat.
    let s = wait_status(&p1, "three proxies heartbeating", |s| {
        s["fleet"]["proxies"]
            .as_array()
            .is_some_and(|ps| ps.len() == 3 && ps.iter().all(|p| p["lost"] == false))
    })
    .await;
    assert_eq!(s["fleet"]["store_reachable"], true);
    let (code, out) = run_cli(vec!["status".into(), "--admin".into(), p1.admin_url("")]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("fleet: node p1") && out.contains("p2") && out.contains("p3"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_maintenance_with_the_store_drains_the_host_on_every_proxy() {
    let pg = Postgres::start().await;
    // blue's backend is on "node" 127.0.0.2, green's on 127.0.0.1.
    let blue = TestBackend::start_at("blue", "127.0.0.2").await;
    let green = TestBackend::start("green").await;
    let p1 = proxy(&blue, &green, pg.port, "n1").await;
    let p2 = proxy(&blue, &green, pg.port, "n2").await;
    let r = api(
        &p1,
        "POST",
        "/api/v1/nodes/127.0.0.2/drain",
        r#"{"mode":"hard"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    all_follow(&[&p1, &p2], "blue/b1 drained on both", |s| {
        s["pools"]["blue"]["backends"][0]["state"] == "drained"
    })
    .await;
    let s = status(&p2).await.unwrap();
    assert_eq!(s["pools"]["green"]["backends"][0]["state"], "active");
    let r = api(&p2, "POST", "/api/v1/nodes/127.0.0.2/undrain", "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    all_follow(&[&p1, &p2], "blue/b1 back", |s| {
        s["pools"]["blue"]["backends"][0]["state"] == "active"
    })
    .await;
}

/// Steps recorded in the store for `route`: (ramp id, step, node).
fn steps(pg: &Postgres) -> Vec<(String, i64, String)> {
    let out = pg.psql("SELECT ramp_id, step, node FROM tidegate_ramp_steps ORDER BY ramp_id, step");
    out.lines()
        .filter_map(|l| {
            let mut f = l.split('|');
            Some((
                f.next()?.to_string(),
                f.next()?.parse().ok()?,
                f.next()?.to_string(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ramp_is_stepped_once_per_step_and_continues_when_its_stepper_dies() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "r1").await;
    let p2 = proxy(&blue, &green, pg.port, "r2").await;
    let p3 = proxy(&blue, &green, pg.port, "r3").await;
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100},"over":"8s","step":"500ms"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    // Who steps: the proxy named in the ramp. It dies.
    let s = wait_status(&p2, "a few steps", |s| {
        s["routes"][0]["ramp"]["steps_done"].as_u64() >= Some(3)
    })
    .await;
    let stepper = s["routes"][0]["ramp"]["stepped_by"]
        .as_str()
        .unwrap()
        .to_string();
    let at_kill = s["routes"][0]["ramp"]["steps_done"].as_u64().unwrap();
    let mut fleet = vec![("r1", p1), ("r2", p2), ("r3", p3)];
    let i = fleet
        .iter()
        .position(|(n, _)| *n == stepper)
        .expect("a known stepper");
    let (killed, mut victim) = fleet.remove(i);
    let _ = victim.child.kill();
    let _ = victim.child.wait();
    let survivors: Vec<&Tidegate> = fleet.iter().map(|(_, t)| t).collect();
    // A fourth proxy mid-ramp: its first request follows the current step.
    let p4 = proxy(&blue, &green, pg.port, "r4").await;
    let s4 = status(&p4).await.unwrap();
    let s_other = status(survivors[0]).await.unwrap();
    let g4 = split_of(&s4)["green"].as_u64().unwrap();
    let g_other = split_of(&s_other)["green"].as_u64().unwrap();
    assert!(
        g4 > 0 && g4.abs_diff(g_other) <= 13,
        "p4 at green={g4}, the fleet at {g_other}"
    );
    // The survivors finish the ramp.
    for tg in &survivors {
        wait_for("the ramp completed", Duration::from_secs(30), || async {
            let s = status(tg).await?;
            (s["routes"][0]["ramp"]["state"] == "completed").then_some(())
        })
        .await;
        assert_eq!(split_of(&status(tg).await.unwrap())["green"], 100);
    }
    let done = status(survivors[0]).await.unwrap();
    let by = done["routes"][0]["ramp"]["stepped_by"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(by, killed, "another proxy took over");
    let rows = steps(&pg);
    let n: Vec<i64> = rows.iter().map(|r| r.1).collect();
    assert_eq!(n, (1..=16).collect::<Vec<_>>(), "each step once: {rows:?}");
    assert!(
        rows.iter().any(|r| r.2 == killed) && rows.iter().any(|r| r.2 == by),
        "{rows:?}"
    );
    eprintln!("killed {killed} after step {at_kill}; {by} finished; steps: {rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_cut_off_from_the_store_keeps_its_state_refuses_changes_and_catches_up() {
    let pg = Postgres::start().await;
    let relay = Relay::start(pg.port).await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "s1").await;
    let cut = proxy(&blue, &green, relay.port, "s2").await;
    put_split(&p1, 0, 100).await;
    all_follow(&[&cut], "the split on s2", |s| split_of(s)["green"] == 100).await;

    relay.set(false);
    let health = wait_for("s2 degraded", Duration::from_secs(15), || async {
        let h = get(&cut.admin_url("/health")).await.ok()?.json();
        (h["status"] == "degraded").then_some(h)
    })
    .await;
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("control store unreachable"), "{reasons}");
    let m = get(&cut.admin_url("/metrics")).await.unwrap().body;
    assert!(m.contains("tidegate_control_store_up 0"), "{m}");
    // Serving with the last state, not the file's.
    for _ in 0..5 {
        assert_eq!(
            get(&cut.url("/")).await.unwrap().backend().as_deref(),
            Some("green")
        );
    }
    let r = api(&cut, "POST", "/api/v1/pools/green/drain", "{}").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "control_store_unavailable");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        r.body
    );
    assert_eq!(
        status(&cut).await.unwrap()["pools"]["green"]["state"],
        "active",
        "nothing changed"
    );
    // Meanwhile the fleet moves on.
    put_split(&p1, 30, 70).await;
    assert_eq!(split_of(&status(&cut).await.unwrap())["green"], 100);

    relay.set(true);
    let took = all_follow(&[&cut], "s2 caught up", |s| split_of(s)["green"] == 70).await;
    eprintln!("caught up {took:?} after the store came back");
    wait_for("s2 healthy", Duration::from_secs(10), || async {
        let h = get(&cut.admin_url("/health")).await.ok()?.json();
        (h["status"] == "healthy").then_some(())
    })
    .await;
    let r = api(&cut, "POST", "/api/v1/pools/green/drain", "{}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let m = get(&cut.admin_url("/metrics")).await.unwrap().body;
    assert!(m.contains("tidegate_control_store_up 1"), "{m}");
    assert!(
        m.contains("tidegate_fleet_proxies{state=\"live\"} 2"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_answers_for_the_fleet_and_lists_a_lost_proxy() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "d1").await;
    let mut p2 = proxy(&blue, &green, pg.port, "d2").await;
    let p3 = proxy(&blue, &green, pg.port, "d3").await;
    // A stream to blue through p2.
    let mut sse = Sse::open(&p2.url("/events?interval_ms=100")).await;
    assert_eq!(sse.status, 200);
    let r = api(&p1, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202);
    // Drained here (p1 holds nothing), not for the fleet: p2 holds the stream.
    let d = wait_for("p2 listed as holding", Duration::from_secs(5), || async {
        let d = get(&p1.admin_url("/api/v1/pools/blue/drain"))
            .await
            .ok()?
            .json();
        (d["fleet"]["holding"] == serde_json::json!(["d2"])).then_some(d)
    })
    .await;
    assert_eq!(d["drained"], false, "{d}");
    // `tidegate drain --wait` through p3 does not return while the stream is open.
    let (code, out) = run_cli(vec![
        "drain".into(),
        "blue".into(),
        "--wait".into(),
        "--timeout".into(),
        "2s".into(),
        "--admin".into(),
        p3.admin_url(""),
    ])
    .await;
    assert_eq!(code, 1, "not drained while d2 holds a stream: {out}");
    assert!(out.contains("not drained"), "{out}");
    assert!(sse.next_data(Duration::from_secs(5)).await.is_ok());

    // p2 dies with its stream: after the TTL the answer lists it as lost, and drained.
    let _ = p2.child.kill();
    let _ = p2.child.wait();
    let d = wait_for("d2 lost", Duration::from_secs(10), || async {
        let d = get(&p3.admin_url("/api/v1/pools/blue/drain/wait?timeout=1s"))
            .await
            .ok()?
            .json();
        (d["fleet"]["lost"] == serde_json::json!(["d2"])).then_some(d)
    })
    .await;
    assert_eq!(
        d["drained"], true,
        "lost proxies are listed, not counted: {d}"
    );
    let d2 = d["fleet"]["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node"] == "d2")
        .unwrap()
        .clone();
    assert_eq!(d2["lost"], true);
    assert_eq!(d2["in_flight"]["sse"], 1, "its last report: {d2}");
    let (code, out) = run_cli(vec![
        "drain".into(),
        "blue".into(),
        "--wait".into(),
        "--timeout".into(),
        "5s".into(),
        "--admin".into(),
        p3.admin_url(""),
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("LOST") && out.contains("d2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watched_ramp_rolls_back_on_the_fleets_errors_and_a_clean_exit_leaves_the_fleet() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    green.app.set_failing(true);
    let mut fleet = vec![
        ("w1", proxy(&blue, &green, pg.port, "w1").await),
        ("w2", proxy(&blue, &green, pg.port, "w2").await),
    ];
    let r = api(
        &fleet[0].1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100},"over":"8s","step":"1s","max_error_rate":0.1,"min_requests":5}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_status(&fleet[1].1, "the first step", |s| {
        s["routes"][0]["ramp"]["steps_done"].as_u64() >= Some(1)
    })
    .await;
    let stepper = s["routes"][0]["ramp"]["stepped_by"]
        .as_str()
        .unwrap()
        .to_string();
    // Traffic only through the other proxy: the stepper sees no failure of its own.
    let other = fleet.iter().find(|(n, _)| *n != stepper).unwrap();
    let load = Load::start(other.1.url("/"), 2);
    let done = wait_for("rolled back", Duration::from_secs(20), || async {
        let s = status(&fleet[0].1).await?;
        (s["routes"][0]["ramp"]["state"] == "rolled_back").then_some(s)
    })
    .await;
    let _ = load.stop().await;
    let ramp = &done["routes"][0]["ramp"];
    assert_eq!(ramp["stepped_by"], stepper.as_str(), "{ramp}");
    assert!(
        ramp["reason"]
            .as_str()
            .unwrap()
            .contains("fleet error rate"),
        "{ramp}"
    );
    for (_, tg) in &fleet {
        wait_status(tg, "back on blue", |s| split_of(s)["blue"] == 100).await;
    }

    // A clean exit (SIGTERM, idle) removes the proxy's row: the other does not call it lost.
    let (_, mut gone) = fleet.remove(1);
    gone.signal(libc::SIGTERM);
    gone.wait_exit(Duration::from_secs(20)).await;
    let s = wait_status(&fleet[0].1, "w2 gone from the fleet", |s| {
        s["fleet"]["proxies"]
            .as_array()
            .is_some_and(|ps| ps.len() == 1)
    })
    .await;
    assert_eq!(s["fleet"]["proxies"][0]["node"], "w1");
    assert!(gone.logs().contains("left the fleet"), "{}", gone.logs());
}
