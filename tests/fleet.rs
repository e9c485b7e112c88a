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
//!   drained; that proxy killed, it is listed as lost after the TTL.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{postgres::Postgres, *};
use serde_json::Value;

fn yaml(blue: &str, green: &str, db_port: u16, node: &str) -> String {
    let db = format!("postgres://tidegate@127.0.0.1:{db_port}/postgres");
    format!(
        r#"listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
control_store:
  postgres: "{db}"
  node: {node}
  heartbeat_ttl: 3s
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    drain: {{ requests_deadline: 1m, streams_deadline: 1m }}
    backends: [{{ address: "{blue}", name: b1 }}]
  green:
    backends: [{{ address: "{green}", name: g1 }}]
"#
    )
}

async fn proxy(blue: &TestBackend, green: &TestBackend, db_port: u16, node: &str) -> Tidegate {
    let y = yaml(
        &blue.addr.to_string(),
        &green.addr.to_string(),
        db_port,
        node,
    );
    let tg = Tidegate::spawn(&y, &[]);
    tg.wait_ready().await;
    tg
}

async fn status(tg: &Tidegate) -> Option<Value> {
    Some(get(&tg.admin_url("/api/v1/status")).await.ok()?.json())
}

fn split_of(s: &Value) -> Value {
    s["routes"][0]["split"].clone()
}

async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Poll every proxy until `f` holds on each; the time each took.
async fn all_follow(fleet: &[&Tidegate], what: &str, f: impl Fn(&Value) -> bool) -> Vec<Duration> {
    let t0 = Instant::now();
    let mut took = Vec::new();
    for tg in fleet {
        wait_for(what, Duration::from_secs(10), || async {
            status(tg).await.filter(|s| f(s)).map(|_| ())
        })
        .await;
        took.push(t0.elapsed());
    }
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_change_through_one_proxy_is_applied_by_the_whole_fleet() {
    let pg = Postgres::start().await;
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let p1 = proxy(&blue, &green, pg.port, "p1").await;
    let p2 = proxy(&blue, &green, pg.port, "p2").await;
    let mut p3 = proxy(&blue, &green, pg.port, "p3").await;
    let fleet = [&p1, &p2, &p3];

    // A split through p1.
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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

/// A TCP relay to PostgreSQL the test can cut (every connection dropped, new ones refused)
/// and bring back on the same port.
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
}

impl Relay {
    async fn start(to: u16) -> Relay {
        let port = free_port();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        tokio::spawn(async move {
            loop {
                if !flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                    .await
                    .expect("relay bind");
                loop {
                    let accepted = tokio::select! {
                        a = l.accept() => a,
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {
                            if flag.load(Ordering::SeqCst) { continue } else { break }
                        }
                    };
                    let Ok((mut c, _)) = accepted else { continue };
                    let flag = flag.clone();
                    tokio::spawn(async move {
                        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut c, &mut s) => {}
                            _ = async { while flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(20)).await } } => {}
                        }
                    });
                }
            }
        });
        Relay { port, up }
    }

    fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_cut_off_from_the_store_keeps_its_state_refuses_changes_and_catches_up() {
    let pg = Postgres::start().await;
    let relay = Relay::start(pg.port).await;
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let p1 = proxy(&blue, &green, pg.port, "s1").await;
    let cut = proxy(&blue, &green, relay.port, "s2").await;
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
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
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":30,"green":70}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_at_once_through_two_proxies_both_win() {
    let pg = Postgres::start().await;
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":50,"green":50}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    let p1 = proxy(&blue, &green, pg.port, "u1").await;
    let r = api(
        &p1,
        "PUT",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    assert_eq!(r.status, 200);
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
    let r = get(&late.url("/")).await.unwrap();
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
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
