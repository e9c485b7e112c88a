//! What is sent twice: a backend that dies after reading a request (before any response
//! byte), on a fresh and on a reused keep-alive connection, for every method. Default
//! (`retry_sent: idempotent`, nginx's policy): GET, HEAD, OPTIONS, PUT and DELETE go to
//! another backend; POST and PATCH get 502 and never reach a second backend. `never` and
//! `all` change that per route.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
};

use common::*;
use tokio::io::AsyncWriteExt;

/// A backend that answers `/warm` (keep-alive) and closes the connection without a byte
/// after reading any other request. It records, per kill, the request's index on its
/// connection (1 = fresh connection).
struct Killer {
    addr: SocketAddr,
    kills: Arc<Mutex<Vec<(String, u32)>>>,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Killer {
    async fn start() -> Self {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let kills = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::new(AtomicU64::new(0));
        let (k, s) = (kills.clone(), served.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = l.accept().await {
                tokio::spawn(serve(conn, k.clone(), s.clone()));
            }
        });
        Self {
            addr,
            kills,
            served,
            task,
        }
    }
}

impl Drop for Killer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut conn: tokio::net::TcpStream,
    kills: Arc<Mutex<Vec<(String, u32)>>>,
    served: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut index = 0u32;
    loop {
        let Some(head) = read_request(&mut conn, &mut buf).await else {
            return;
        };
        index += 1;
        let mut parts = head.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("");
        if path != "/warm" {
            kills.lock().unwrap().push((method, index));
            return; // closes without a byte
        }
        served.fetch_add(1, Relaxed);
        let resp = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-backend: killer\r\n\r\nwarm";
        if conn.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn yaml(killer: SocketAddr, good: SocketAddr, policy: &str) -> String {
    // The killer has nearly all the weight: the first ~500 picks go to it.
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 100 }}
    {policy}
pools:
  app:
    backends:
      - {{ address: "{killer}", name: killer, weight: 1000 }}
      - {{ address: "{good}", name: good, weight: 1 }}
"#
    )
}

/// Send `method /kill` once on a fresh upstream connection and once on a reused one; return
/// the two statuses and which backend answered.
async fn both_ways(
    tg: &Tidegate,
    killer: &Killer,
    method: &str,
) -> [(u16, Option<String>, u32); 2] {
    let c = client();
    let mut out = Vec::new();
    for reuse in [false, true] {
        // A fresh connection that died marks the killer failing until its probe connects.
        wait_status(tg, "killer available", |s| {
            s["pools"]["app"]["backends"][0]["available"] == true
        })
        .await;
        if reuse {
            let w = send(&c, "GET", &tg.url("/warm"), &[], "").await.unwrap();
            assert_eq!(w.backend().as_deref(), Some("killer"), "{w:?}");
        }
        let before = killer.kills.lock().unwrap().len();
        let r = send(&c, method, &tg.url("/kill"), &[], "body=1")
            .await
            .unwrap();
        let kills = killer.kills.lock().unwrap()[before..].to_vec();
        let first = kills
            .first()
            .cloned()
            .unwrap_or_else(|| panic!("{method}: not sent to the killer"));
        assert_eq!(first.0, method);
        let expect_index = if reuse { 2 } else { 1 };
        assert_eq!(
            first.1, expect_index,
            "{method}: reused={reuse} but the killer saw request #{} on its connection",
            first.1
        );
        out.push((r.status, r.backend(), kills.len() as u32));
    }
    [out[0].clone(), out[1].clone()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_methods_are_retried_post_and_patch_are_not() {
    let killer = Killer::start().await;
    let good = TestBackend::start("good").await;
    let tg = Tidegate::start(&yaml(killer.addr, good.addr, "")).await;
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
        let before = good.app.hits();
        for (i, (status, backend, _)) in both_ways(&tg, &killer, method).await.iter().enumerate() {
            assert_eq!(*status, 200, "{method} (reused: {})", i == 1);
            assert_eq!(backend.as_deref(), Some("good"), "{method}");
        }
        assert_eq!(
            good.app.hits(),
            before + 2,
            "{method} resent once each time"
        );
    }
    for method in ["POST", "PATCH"] {
        let before = good.app.hits();
        for (i, (status, _, kills)) in both_ways(&tg, &killer, method).await.iter().enumerate() {
            assert_eq!(*status, 502, "{method} (reused: {})", i == 1);
            assert_eq!(*kills, 1, "{method} sent once");
        }
        assert_eq!(
            good.app.hits(),
            before,
            "{method} never reached a second backend"
        );
    }
    let retries = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        retries.contains("tidegate_retries_total{route=\"app\"}"),
        "{retries}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_sent_never_and_all() {
    let killer = Killer::start().await;
    let good = TestBackend::start("good").await;
    let tg = Tidegate::start(&yaml(killer.addr, good.addr, "retry_sent: never")).await;
    for (status, _, kills) in both_ways(&tg, &killer, "GET").await {
        assert_eq!(status, 502);
        assert_eq!(kills, 1);
    }
    assert_eq!(good.app.hits(), 0);
    drop(tg);

    let tg = Tidegate::start(&yaml(killer.addr, good.addr, "retry_sent: all")).await;
    for (status, backend, _) in both_ways(&tg, &killer, "POST").await {
        assert_eq!(status, 200);
        assert_eq!(backend.as_deref(), Some("good"));
    }
    assert_eq!(good.app.hits(), 2);
    assert_eq!(killer.served.load(Relaxed), 2, "the /warm requests");
}
