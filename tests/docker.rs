//! The Docker image and a blue/green deploy in containers, on a real Docker engine: the image
//! builds with `scripts/docker-image` (base image from Debian packages when no registry
//! answers), `check` runs in it, the container reports healthy; under load with 20 SSE
//! streams on blue, `tidegate deploy app --to green --then "docker stop …"` loses no request
//! and stops blue only once its streams ended by themselves; a config change in the mounted
//! directory is picked up; `docker stop` of tidegate with an open stream ends it politely at
//! `shutdown.grace` and exits 1, within the stop timeout.
//!
//! Skipped, saying so on stderr, when no Docker engine answers (a developer machine without
//! one); under `CI` a missing engine fails.

mod common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{docker::*, *};

const CONFIG: &str = "listeners: [{ name: public, address: 0.0.0.0:8080 }]
admin: { address: 0.0.0.0:9901, token_env: TIDEGATE_ADMIN_TOKEN }
resolve_interval: 500ms
state_file: /var/lib/tidegate/state.json
shutdown: { delay: 1s, grace: 3s }
routes:
  - name: app
    split: { blue: 100, green: 0 }
pools:
  blue:
    backends: [{ address: \"app-blue:3000\", name: app-blue }]
  green:
    backends: [{ address: \"app-green:3000\", name: app-green }]
";

#[test]
fn the_image_runs_check_and_reports_healthy() {
    if !engine() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    image();
    let size: u64 = inspect(IMAGE, "{{.Size}}").parse().unwrap();
    eprintln!("image {IMAGE}: {:.1} MB", size as f64 / 1e6);
    let out = ok(&[
        "run",
        "--rm",
        IMAGE,
        "check",
        "-c",
        "/etc/tidegate/tidegate.yaml",
    ]);
    assert_eq!(out, "/etc/tidegate/tidegate.yaml: ok");
    assert_eq!(inspect(IMAGE, "{{.Config.User}}"), "tidegate");
    assert_eq!(inspect(IMAGE, "{{.Config.StopSignal}}"), "SIGTERM");
    // The shipped default (conf/sidecar.yaml): healthy even before its app is up.
    let mut scene = Scene::new();
    let c = scene.run("plain", &[], &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = inspect(&c, "{{.State.Health.Status}}");
        if h == "healthy" {
            break;
        }
        assert!(Instant::now() < deadline, "container health: {h}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `(events, clean end)` of one SSE stream read to its end.
async fn read_stream(url: String) -> (usize, bool) {
    let mut sse = Sse::open(&url).await;
    let mut n = 0;
    loop {
        match sse.next_data(Duration::from_secs(20)).await {
            Ok(Some(_)) => n += 1,
            Ok(None) => return (n, true),
            Err(_) => return (n, false),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
// The guard serializes the Docker scenarios of this file on purpose; nothing else takes it
// on this runtime, so holding it across awaits cannot deadlock.
#[allow(clippy::await_holding_lock)]
async fn deploy_green_under_load_then_stop_blue() {
    if !engine() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    image();
    let mut scene = Scene::new();
    let blue = scene.app("blue");
    let green = scene.app("green");
    let (tg, listen, admin) = scene.tidegate(CONFIG);
    wait_for("tidegate ready", Duration::from_secs(30), || {
        let u = format!("{admin}/readyz");
        async move { matches!(get(&u).await, Ok(r) if r.status == 200).then_some(()) }
    })
    .await;
    let load = Load::start(format!("{listen}/"), 4);
    // 20 streams on blue, 25 events 200 ms apart: each ends by itself after 5 s.
    let streams: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(read_stream(format!(
                "{listen}/events?interval_ms=200&count=25"
            )))
        })
        .collect();
    wait_for("20 streams on blue", Duration::from_secs(10), || {
        let u = format!("{admin}/api/v1/pools/blue/drain");
        async move {
            let r = send(
                &client(),
                "GET",
                &u,
                &[("authorization", &format!("Bearer {TOKEN}"))],
                "",
            )
            .await
            .ok()?;
            (r.json()["in_flight"]["sse"] == 20).then_some(())
        }
    })
    .await;
    let then = format!("docker stop {blue}");
    let args = [
        "deploy", "app", "--to", "green", "--admin", &admin, "--then", &then,
    ];
    let out = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        move || {
            Command::new(binary())
                .args(&args)
                .env("TIDEGATE_ADMIN_TOKEN", TOKEN)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let (ok_n, failed) = load.stop().await;
    assert_eq!(failed, 0, "{text}");
    assert!(ok_n > 100, "{ok_n} requests");
    for s in streams {
        let (n, clean) = s.await.unwrap();
        assert!(
            clean && n == 25,
            "a blue stream was cut: {n} events, clean {clean}"
        );
    }
    assert_eq!(inspect(&blue, "{{.State.Running}}"), "false", "{text}");
    let r = get(&format!("{listen}/")).await.unwrap();
    assert_eq!(r.backend().as_deref(), Some("green"));

    // app-green recreated with a new IP: followed without a reload.
    let old_ip = inspect(
        &green,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    ok(&["rm", "-f", &green]);
    scene.containers.retain(|c| *c != green);
    let ip = scene.ip(200);
    let green = scene.run(
        "app-green",
        &["--no-healthcheck", "--ip", &ip],
        &["backend", "--listen", "0.0.0.0:3000", "--name", "green2"],
    );
    let new_ip = inspect(
        &green,
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
    );
    assert_ne!(old_ip, new_ip);
    wait_for(
        "the recreated green followed",
        Duration::from_secs(15),
        || {
            let u = format!("{listen}/");
            async move { (get(&u).await.ok()?.backend()? == "green2").then_some(()) }
        },
    )
    .await;

    // A config change in the mounted directory is picked up.
    let gen = |admin: String| async move {
        let r = send(
            &client(),
            "GET",
            &format!("{admin}/api/v1/status"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
            "",
        )
        .await
        .ok()?;
        r.json()["generation"].as_u64()
    };
    let g0 = gen(admin.clone()).await.unwrap();
    scene.rewrite(&CONFIG.variant(
        "split: { blue: 100, green: 0 }",
        "split: { blue: 0, green: 100 }",
    ));
    wait_for(
        "reload from the mounted directory",
        Duration::from_secs(10),
        || {
            let a = admin.clone();
            async move { (gen(a).await? > g0).then_some(()) }
        },
    )
    .await;

    // docker stop with a stream open: ended politely at shutdown.grace, exit 1.
    let mut sse = Sse::open(&format!("{listen}/events?interval_ms=200&count=0")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    let t = Instant::now();
    ok(&["stop", "-t", "30", &tg]);
    let took = t.elapsed();
    let mut clean = false;
    for _ in 0..200 {
        match sse.next_data(Duration::from_secs(5)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                clean = true;
                break;
            }
            Err(_) => break,
        }
    }
    assert!(clean, "the stream did not end cleanly");
    assert_eq!(inspect(&tg, "{{.State.ExitCode}}"), "1");
    assert!(took < Duration::from_secs(15), "docker stop took {took:?}");
    eprintln!("docker stop with an open stream: {took:?}, exit 1");
}

/// The shipped compose example, started as its header says, deployed with its script.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[allow(clippy::await_holding_lock)] // serializes the Docker scenarios, as above
async fn the_compose_example_deploys_with_its_script() {
    if !engine() {
        return;
    }
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    image();
    let compose = if Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        vec!["docker", "compose"]
    } else {
        vec!["docker-compose"]
    };
    // A copy of docker/, so the example's files stay untouched.
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/docker");
    let st = Command::new("cp")
        .args(["-r", root])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let d = dir.path().join("docker");
    let project = format!("tgtest{}", std::process::id());
    let (port, admin_port) = (free_port(), free_port());
    let env = [
        ("COMPOSE_PROJECT_NAME", project.clone()),
        ("TIDEGATE_IMAGE", IMAGE.to_string()),
        ("TIDEGATE_PORT", port.to_string()),
        ("TIDEGATE_ADMIN_PORT", admin_port.to_string()),
    ];
    let run = |args: &[&str]| {
        let mut c = Command::new(compose[0]);
        c.args(&compose[1..])
            .args(["-p", &project, "-f"])
            .arg(d.join("compose.yaml"))
            .args(args);
        for (k, v) in &env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    struct Down<F: Fn(&[&str]) -> Output>(F);
    impl<F: Fn(&[&str]) -> Output> Drop for Down<F> {
        fn drop(&mut self) {
            let _ = (self.0)(&["down", "-v", "-t", "1"]);
        }
    }
    let down = Down(run);
    let o = (down.0)(&["up", "-d"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = format!("http://127.0.0.1:{port}");
    wait_for(
        "compose tidegate serves blue",
        Duration::from_secs(30),
        || {
            let u = format!("{base}/");
            async move { (get(&u).await.ok()?.backend()? == "blue").then_some(()) }
        },
    )
    .await;
    let load = Load::start(format!("{base}/"), 2);
    let mut cmd = Command::new(d.join("compose/deploy.sh"));
    cmd.arg("green");
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let (_, failed) = load.stop().await;
    assert_eq!(failed, 0, "{text}");
    assert_eq!(
        get(&format!("{base}/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
    let blue = String::from_utf8_lossy(&(down.0)(&["ps", "-q", "app-blue"]).stdout)
        .trim()
        .to_string();
    assert_eq!(inspect(&blue, "{{.State.Running}}"), "false", "{text}");
    // The demo app stops at once on SIGTERM (not killed after Docker's 10 s: exit 137).
    assert_eq!(inspect(&blue, "{{.State.ExitCode}}"), "0", "{text}");
    // The README's other compose commands work as written, without --env-file.
    for args in [&["ps"][..], &["logs", "--tail", "5", "tidegate"][..]] {
        let o = (down.0)(args);
        assert!(
            o.status.success(),
            "compose {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
