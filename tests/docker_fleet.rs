//! One fleet on a real network of hosts: PostgreSQL and tidegate proxies in containers built
//! from the project's image, backends in containers, the proxies on two networks the test
//! creates (the app's, and the database's, from which one proxy is cut off).
//!
//! In order, on one scene: a ramp blue → green through proxy 1 under load through all
//! three (each step followed by every proxy; 0 failed requests on proxies that stay up);
//! the proxy stepping the ramp killed (another continues from the same step; each step
//! written once); a fourth proxy started mid-ramp (its first request on the current step);
//! `drain blue --wait` through one proxy returning only when blue is idle on all; a proxy
//! disconnected from the database network (last state kept, degraded, changes refused,
//! caught up once reconnected); a proxy holding a stream killed (listed as lost after the
//! TTL); a node drain (the host of one backend of each of three pools: all three drained,
//! the others untouched).
//!
//! Skipped, saying so, when no Docker engine answers; under `CI` a missing engine fails.

mod common;

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use common::{docker::*, *};
use serde_json::Value;

const PG_IMAGE: &str = "tidegate-test-postgres:15";

/// The PostgreSQL image, built once from Debian's packages on the local base image.
fn pg_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let o = Command::new("docker")
            .args([
                "build",
                "-q",
                "-f",
                "tests/docker/postgres.Dockerfile",
                "-t",
                PG_IMAGE,
                "tests/docker",
            ])
            .env("DOCKER_BUILDKIT", "0")
            .current_dir(root)
            .output()
            .expect("docker build");
        assert!(
            o.status.success(),
            "postgres image: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    });
}

/// A network removed on drop (after the scene's containers, declared before the scene).
struct Net(String);

impl Drop for Net {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.0]);
    }
}

fn config(node: &str) -> String {
    let pool = |name: &str| {
        format!(
            "  {name}:\n    backends: [{{ address: \"node1:3000\", name: n1 }}, {{ address: \"node2:3000\", name: n2 }}]\n"
        )
    };
    format!(
        "listeners: [{{ name: public, address: 0.0.0.0:8080 }}]
admin: {{ address: 0.0.0.0:9901, token_env: TIDEGATE_ADMIN_TOKEN }}
control_store: {{ postgres: \"postgres://tidegate@db:5432/postgres\", node: {node}, heartbeat_ttl: 3s }}
shutdown: {{ delay: 0s, grace: 2s }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
  - {{ name: a, match: {{ path_prefix: /a }}, split: {{ a: 100 }} }}
  - {{ name: b, match: {{ path_prefix: /b }}, split: {{ b: 100 }} }}
  - {{ name: c, match: {{ path_prefix: /c }}, split: {{ c: 100 }} }}
pools:
  blue:
    drain: {{ requests_deadline: 1m, streams_deadline: 1m }}
    backends: [{{ address: \"app-blue:3000\", name: app-blue }}]
  green:
    backends: [{{ address: \"app-green:3000\", name: app-green }}]
{}{}{}",
        pool("a"),
        pool("b"),
        pool("c")
    )
}

/// One proxy container: its name and published URLs.
#[derive(Clone)]
struct Proxy {
    name: &'static str,
    container: String,
    public: String,
    admin: String,
}

impl Proxy {
    async fn api(&self, method: &str, path: &str, body: &str) -> Resp {
        let auth = format!("Bearer {TOKEN}");
        send(
            &client(),
            method,
            &format!("{}{path}", self.admin),
            &[("authorization", &auth)],
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name))
    }

    async fn status(&self) -> Option<Value> {
        let auth = format!("Bearer {TOKEN}");
        let url = format!("{}/api/v1/status", self.admin);
        let r = send(&client(), "GET", &url, &[("authorization", &auth)], "")
            .await
            .ok()?;
        (r.status == 200).then(|| r.json())
    }

    async fn green(&self) -> Option<u64> {
        self.status().await?["routes"][0]["split"]["green"].as_u64()
    }
}

fn start_proxy(scene: &mut Scene, db: &str, name: &'static str) -> Proxy {
    let dir = scene.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tidegate.yaml"), config(name)).unwrap();
    let c = format!("{}-{name}", scene.name);
    let mount = format!("{}:/etc/tidegate:ro", dir.display());
    let token = format!("TIDEGATE_ADMIN_TOKEN={TOKEN}");
    ok(&[
        "create",
        "--name",
        &c,
        "--network",
        &scene.name,
        "--network-alias",
        name,
        "-v",
        &mount,
        "-e",
        &token,
        "-p",
        "127.0.0.1::8080",
        "-p",
        "127.0.0.1::9901",
        IMAGE,
    ]);
    scene.containers.push(c.clone());
    // The app's network keeps the default route and the published ports when the database's
    // is cut.
    ok(&["network", "connect", "--gw-priority", "-1", db, &c]);
    ok(&["start", &c]);
    let port = |p: &str| ok(&["port", &c, p]).lines().next().unwrap().to_string();
    Proxy {
        name,
        container: c.clone(),
        public: format!("http://{}", port("8080")),
        admin: format!("http://{}", port("9901")),
    }
}

async fn ready(p: &Proxy) {
    let url = format!("{}/readyz", p.admin);
    wait_for(
        &format!("{} ready", p.name),
        Duration::from_secs(60),
        || async { (get(&url).await.ok()?.status == 200).then_some(()) },
    )
    .await;
}

fn psql(pg: &str, sql: &str) -> String {
    ok(&[
        "exec",
        pg,
        "psql",
        "-h",
        "127.0.0.1",
        "-U",
        "tidegate",
        "-d",
        "postgres",
        "-At",
        "-c",
        sql,
    ])
}

/// Every change of the green weight each proxy showed, with when (polled every 20 ms).
type Seen = Arc<Mutex<BTreeMap<(String, u64), Instant>>>;

fn watch_split(proxies: Vec<Proxy>, seen: Seen) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            for p in &proxies {
                if let Some(g) = p.green().await {
                    seen.lock()
                        .unwrap()
                        .entry((p.name.to_string(), g))
                        .or_insert_with(Instant::now);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// For each weight seen by every proxy of `names`: last first-sight minus first first-sight.
fn spreads(seen: &Seen, names: &[&str]) -> Vec<(u64, Duration)> {
    let s = seen.lock().unwrap();
    let weights: std::collections::BTreeSet<u64> = s.keys().map(|(_, g)| *g).collect();
    weights
        .into_iter()
        .filter_map(|g| {
            let at: Vec<Instant> = names
                .iter()
                .filter_map(|n| s.get(&(n.to_string(), g)).copied())
                .collect();
            (at.len() == names.len()).then(|| {
                let (lo, hi) = (at.iter().min().unwrap(), at.iter().max().unwrap());
                (g, *hi - *lo)
            })
        })
        .collect()
}

async fn open_blue_stream(p: &Proxy) -> Sse {
    let s = Sse::open(&format!("{}/events?interval_ms=200", p.public)).await;
    assert_eq!(s.status, 200, "stream through {}", p.name);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_three_proxies_on_a_real_network() {
    if !engine() {
        return;
    }
    image();
    pg_image();
    // Named to sort after the scene's network: Docker keeps the published ports on the first
    // network by name, whatever the gateway priority says.
    let db = Net(format!("tg-zz-db-{}-{}", std::process::id(), free_port()));
    ok(&["network", "create", &db.0]);
    let mut scene = Scene::new();
    let pg = format!("{}-pg", scene.name);
    ok(&[
        "run",
        "-d",
        "--name",
        &pg,
        "--network",
        &db.0,
        "--network-alias",
        "db",
        PG_IMAGE,
    ]);
    scene.containers.push(pg.clone());
    for app in ["blue", "green"] {
        scene.app(app);
    }
    for n in ["node1", "node2"] {
        scene.run(
            n,
            &["--no-healthcheck"],
            &["backend", "--listen", "0.0.0.0:3000", "--name", n],
        );
    }
    wait_for("postgres", Duration::from_secs(60), || async {
        let o = docker(&[
            "exec",
            &pg,
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "tidegate",
            "-d",
            "postgres",
            "-c",
            "select 1",
        ]);
        o.status.success().then_some(())
    })
    .await;
    let mut proxies = vec![
        start_proxy(&mut scene, &db.0, "p1"),
        start_proxy(&mut scene, &db.0, "p2"),
        start_proxy(&mut scene, &db.0, "p3"),
    ];
    for p in &proxies {
        ready(p).await;
    }
    // One stream on blue through each proxy, before the ramp.
    let mut streams = Vec::new();
    for p in &proxies {
        streams.push((p.name, open_blue_stream(p).await));
    }

    // The ramp, through p1, under load through all three.
    let mut loads: Vec<(&str, Load)> = proxies
        .iter()
        .map(|p| (p.name, Load::start(format!("{}/", p.public), 2)))
        .collect();
    let seen: Seen = Arc::default();
    let watcher = watch_split(proxies.clone(), seen.clone());
    let r = proxies[0]
        .api(
            "PUT",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":0,"green":100},"over":"6s","step":"500ms"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_for("step 3", Duration::from_secs(20), || async {
        let s = proxies[1].status().await?;
        (s["routes"][0]["ramp"]["steps_done"].as_u64()? >= 3).then_some(s)
    })
    .await;
    let stepper = s["routes"][0]["ramp"]["stepped_by"]
        .as_str()
        .unwrap()
        .to_string();
    // Kill the stepper (its load stopped first: its requests are not the fleet's failures).
    let i = proxies
        .iter()
        .position(|p| p.name == stepper)
        .expect("a known stepper");
    let victim = proxies.remove(i);
    let l = loads.iter().position(|(n, _)| *n == victim.name).unwrap();
    let (_, vl) = loads.remove(l);
    vl.stop().await;
    streams.retain(|(n, _)| *n != victim.name);
    ok(&["kill", &victim.container]);
    let killed_at = Instant::now();
    // A fourth proxy mid-ramp: its first request follows the current step.
    let p4 = start_proxy(&mut scene, &db.0, "p4");
    ready(&p4).await;
    let g4 = p4.green().await.unwrap();
    let g_fleet = proxies[0].green().await.unwrap();
    assert!(
        g4 > 0 && g4.abs_diff(g_fleet) <= 9,
        "p4 at green={g4}, the fleet at {g_fleet}"
    );
    proxies.push(p4.clone());
    loads.push((p4.name, Load::start(format!("{}/", p4.public), 2)));
    for p in &proxies {
        wait_for("ramp completed", Duration::from_secs(40), || async {
            let s = p.status().await?;
            (s["routes"][0]["ramp"]["state"] == "completed").then_some(())
        })
        .await;
    }
    eprintln!(
        "ramp completed {:?} after the stepper {stepper} was killed",
        killed_at.elapsed()
    );
    watcher.abort();
    let survivors: Vec<&str> = proxies
        .iter()
        .filter(|p| p.name != "p4")
        .map(|p| p.name)
        .collect();
    let sp = spreads(&seen, &survivors);
    eprintln!("step followed by {survivors:?} within: {sp:?}");
    assert!(sp.len() >= 10, "steps seen by every proxy: {sp:?}");
    for (g, d) in &sp {
        assert!(
            *d < Duration::from_secs(1),
            "step green={g} took {d:?} to reach every proxy"
        );
    }
    for (name, l) in loads.drain(..) {
        let (okn, failed) = l.stop().await;
        assert_eq!(failed, 0, "{name}: {okn} ok, {failed} failed");
    }
    let steps = psql(
        &pg,
        "SELECT step || ':' || node FROM tidegate_ramp_steps ORDER BY step",
    );
    let n: Vec<u32> = steps
        .lines()
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(n, (1..=12).collect::<Vec<_>>(), "each step once: {steps}");
    assert!(steps.contains(&format!(":{stepper}")), "{steps}");
    let others = steps
        .lines()
        .filter(|l| !l.ends_with(&format!(":{stepper}")))
        .count();
    assert!(others > 0, "another proxy continued: {steps}");

    // drain blue --wait through the last proxy: not while streams are open on blue.
    let (p_a, p_b) = (proxies[0].clone(), proxies[1].clone());
    let r = p_a.api("POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    let cli = |timeout: &'static str| {
        let admin = p4.admin.clone();
        async move {
            let args = [
                "drain",
                "blue",
                "--wait",
                "--timeout",
                timeout,
                "--admin",
                &admin,
            ];
            tokio::task::spawn_blocking({
                let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
                move || {
                    let o = Command::new(binary())
                        .args(&args)
                        .env("TIDEGATE_ADMIN_TOKEN", TOKEN)
                        .output()
                        .expect("run tidegate");
                    let text = String::from_utf8_lossy(&o.stdout).to_string()
                        + &String::from_utf8_lossy(&o.stderr);
                    (o.status.code().unwrap_or(-1), text)
                }
            })
            .await
            .expect("cli task")
        }
    };
    let (code, out) = cli("2s").await;
    assert_eq!(code, 1, "streams on blue remain: {out}");
    streams.clear();
    let t0 = Instant::now();
    let (code, out) = cli("30s").await;
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "drain --wait returned {:?} after the last blue stream closed:\n{out}",
        t0.elapsed()
    );

    // p_b cut off from the database network.
    ok(&["network", "disconnect", &db.0, &p_b.container]);
    let h = wait_for("p_b degraded", Duration::from_secs(20), || async {
        let h = get(&format!("{}/health", p_b.admin)).await;
        let h = h.ok()?.json();
        (h["status"] == "degraded" && h["reasons"].to_string().contains("control store"))
            .then_some(h)
    })
    .await;
    eprintln!("cut off: {}", h["reasons"]);
    assert_eq!(p_b.green().await, Some(100));
    assert_eq!(
        p_b.status().await.unwrap()["pools"]["blue"]["state"],
        "drained"
    );
    let r = p_b.api("POST", "/api/v1/pools/blue/undrain", "{}").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = p_a.api("POST", "/api/v1/pools/blue/undrain", "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    ok(&[
        "network",
        "connect",
        "--gw-priority",
        "-1",
        &db.0,
        &p_b.container,
    ]);
    wait_for("p_b caught up", Duration::from_secs(20), || async {
        (p_b.status().await?["pools"]["blue"]["state"] == "active").then_some(())
    })
    .await;

    // A proxy holding a stream killed: lost after the TTL.
    let _s = Sse::open(&format!("{}/events?interval_ms=200", p_b.public)).await;
    wait_for("p_b's stream counted", Duration::from_secs(10), || async {
        let d = p_a.api("GET", "/api/v1/pools/green/drain", "").await.json();
        let holds = d["fleet"]["proxies"]
            .as_array()?
            .iter()
            .any(|p| p["node"] == p_b.name && p["in_flight"]["sse"] == 1);
        holds.then_some(())
    })
    .await;
    ok(&["kill", &p_b.container]);
    let d = wait_for("p_b lost", Duration::from_secs(20), || async {
        let d = p_a.api("GET", "/api/v1/pools/green/drain", "").await.json();
        let lost = d["fleet"]["lost"].as_array()?.iter().any(|n| n == p_b.name);
        lost.then_some(d)
    })
    .await;
    eprintln!("lost: {}", d["fleet"]);

    // Node drain: node1 holds one backend of each of a, b, c.
    let r = p_a
        .api("POST", "/api/v1/nodes/node1/drain", r#"{"mode":"hard"}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    for p in [&p_a, &p4] {
        let s = wait_for("node1 drained", Duration::from_secs(10), || async {
            let s = p.status().await?;
            ["a", "b", "c"]
                .iter()
                .all(|pool| s["pools"][pool]["backends"][0]["state"] == "drained")
                .then_some(s)
        })
        .await;
        for pool in ["a", "b", "c"] {
            assert_eq!(
                s["pools"][pool]["backends"][1]["state"], "active",
                "{pool}/n2 on {}",
                p.name
            );
            assert_eq!(s["pools"][pool]["state"], "active");
        }
        assert_eq!(s["pools"]["green"]["state"], "active");
    }
    for _ in 0..6 {
        let r = get(&format!("{}/a", p4.public)).await.unwrap();
        assert_eq!(r.backend().as_deref(), Some("node2"));
    }
}
