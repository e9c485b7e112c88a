//! Helpers of the fleet suites (tests/fleet.rs, tests/fleet_edges.rs): proxies on one
//! PostgreSQL `control_store`, their status, and a TCP relay to the database that a test can
//! cut.
#![allow(dead_code)]

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use super::*;

pub fn yaml(blue: &str, green: &str, db_port: u16, node: &str) -> String {
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

pub async fn proxy(blue: &TestBackend, green: &TestBackend, db_port: u16, node: &str) -> Tidegate {
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

pub async fn status(tg: &Tidegate) -> Option<Value> {
    Some(get(&tg.admin_url("/api/v1/status")).await.ok()?.json())
}

pub fn split_of(s: &Value) -> Value {
    s["routes"][0]["split"].clone()
}

pub async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Poll every proxy until `f` holds on each; the time each took.
pub async fn all_follow(
    fleet: &[&Tidegate],
    what: &str,
    f: impl Fn(&Value) -> bool,
) -> Vec<Duration> {
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

/// A TCP relay to PostgreSQL the test can cut (every connection dropped, new ones refused)
/// and bring back on the same port.
pub struct Relay {
    pub port: u16,
    up: Arc<AtomicBool>,
}

impl Relay {
    pub async fn start(to: u16) -> Relay {
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

    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }
}

/// The two app instances every fleet test routes to.
pub async fn blue_green() -> (TestBackend, TestBackend) {
    (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    )
}

/// Override route `app`'s split through `tg`; the answer must be 200.
pub async fn put_split(tg: &Tidegate, blue: u32, green: u32) {
    let body = format!(r#"{{"split":{{"blue":{blue},"green":{green}}}}}"#);
    let r = api(tg, "PUT", "/api/v1/routes/app/split", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}
