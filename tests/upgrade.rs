//! Graceful upgrade: a new process started with `--upgrade` takes the listening sockets when
//! the old one gets SIGQUIT; under steady load no request fails and no connection is refused;
//! the old process exits once idle.
//!
//! One known pingora 0.9.1 limitation is tolerated, narrowly: 5 s after the hand-off the old
//! process drops connections still parked in `read_request` (pingora-proxy
//! `handle_new_request`), so a fresh connection it accepted in that same instant can be reset.
//! Resets of fresh connections within ±300 ms of that moment are counted and reported, at
//! most 2; any other failure, or any failure on a kept-alive connection, fails the test.

mod common;

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigquit_upgrade_under_load_loses_nothing() {
    let blue = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    // The upgrade socket's directory must be private.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let sock = dir.path().join("upgrade.sock");
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
server: {{ upgrade_sock: "{}", threads: 1 }}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends: [{{ address: "{}" }}]
"#,
        sock.display(),
        blue.addr
    );
    let mut old = Tidegate::start(&yaml).await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // (when, fresh connection?, error) of every failure.
    let failures = Arc::new(std::sync::Mutex::new(Vec::<(
        std::time::Instant,
        bool,
        String,
    )>::new()));
    let mut load = Vec::new();
    for i in 0..4 {
        let (url, stop, ok, failed, failures) = (
            old.url("/"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            failures.clone(),
        );
        load.push(tokio::spawn(async move {
            // Half the workers keep connections alive, half open a new one per request
            // (those would see any refused connection).
            let keepalive = client();
            while !stop.load(Ordering::Relaxed) {
                let r = if i % 2 == 0 {
                    send(&keepalive, "GET", &url, &[], "").await
                } else {
                    get(&url).await
                };
                match r {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    other => {
                        failures.lock().unwrap().push((
                            std::time::Instant::now(),
                            i % 2 == 1,
                            format!("{other:?}"),
                        ));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    wait_for("load running", Duration::from_secs(5), || async {
        (ok.load(Ordering::Relaxed) > 100).then_some(())
    })
    .await;

    // New process first (it waits on the upgrade socket), then SIGQUIT to the old one.
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(&old.log)
        .unwrap();
    let mut new = Command::new(binary())
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("upgrade socket", Duration::from_secs(10), || async {
        sock.exists().then_some(())
    })
    .await;
    let sigquit_at = std::time::Instant::now();
    old.signal(libc::SIGQUIT);
    let status = old.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "old process exit; log:\n{}",
        old.logs()
    );
    let after_old = ok.load(Ordering::Relaxed);
    wait_for(
        "load served by the new process",
        Duration::from_secs(10),
        || async { (ok.load(Ordering::Relaxed) > after_old + 100).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new process must keep running"
    );
    let r = get(&old.admin_url("/readyz")).await.unwrap();
    assert_eq!(r.status, 200, "the new process's admin answers");
    let _ = new.kill();
    let _ = new.wait();
    let failures = failures.lock().unwrap().clone();
    let handoff_close = sigquit_at + Duration::from_secs(5);
    let in_window = |t: std::time::Instant| {
        let d = if t > handoff_close {
            t - handoff_close
        } else {
            handoff_close - t
        };
        d <= Duration::from_millis(300)
    };
    for (t, fresh, e) in &failures {
        eprintln!(
            "failure {:?} after SIGQUIT (fresh connection: {fresh}): {e}",
            t.duration_since(sigquit_at)
        );
    }
    let unexplained: Vec<_> = failures
        .iter()
        .filter(|(t, fresh, e)| {
            !(*fresh
                && in_window(*t)
                && [
                    "ConnectionReset",
                    "IncompleteMessage",
                    "connection was not ready",
                ]
                .iter()
                .any(|s| e.contains(s)))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "requests failed during the upgrade: {unexplained:?}"
    );
    assert!(
        failures.len() <= 2,
        "too many resets at the old process's close: {failures:?}"
    );
    assert_eq!(failed.load(Ordering::Relaxed) as usize, failures.len());
    assert!(ok.load(Ordering::Relaxed) > after_old);
}
