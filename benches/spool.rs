//! Spool benchmark with the real binary: write latency (POST → committed → 202) p50/p99 for
//! the embedded store and for PostgreSQL on loopback, one sender and 16 at once; then replay
//! throughput (items per second from the moment the app comes up until the last one is
//! delivered) with strict order (`concurrency: 1`) and with `concurrency: 8`.
//!
//! `cargo bench --bench spool` (full: 2,000 items per figure). Under `cargo test` it runs a
//! small smoke pass of the embedded store only.

#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use common::{postgres::Postgres, recorder::Recorder, *};

fn yaml(app: SocketAddr, store: &str, concurrency: u32) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
{store}
routes:
  - name: hooks
    split: {{ app: 100 }}
    hold: {{ timeout: 0 }}
    spool: {{ replay: {{ concurrency: {concurrency} }} }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// `senders` clients × `each` POSTs of a 1 KiB body; latencies of the 202s.
async fn write(tg: &Tidegate, senders: usize, each: usize) -> (Vec<Duration>, Duration) {
    let url = Arc::new(tg.url("/hooks/event"));
    let body = Arc::new("x".repeat(1024));
    let start = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            tokio::spawn(async move {
                let c = client();
                let mut lat = Vec::with_capacity(each);
                for _ in 0..each {
                    let t = Instant::now();
                    let r = send(&c, "POST", &url, &[], &body).await.expect("post");
                    assert_eq!(r.status, 202, "{}", r.body);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("sender"));
    }
    let took = start.elapsed();
    all.sort();
    (all, took)
}

/// One store: write figures, then replay throughput.
async fn run(name: &str, store: &str, env: &[(&str, &str)], n: usize, concurrency: u32) {
    let mut rec = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    let app = rec.addr;
    rec.stop();
    let tg = Tidegate::spawn(&yaml(app, store, concurrency), env);
    tg.wait_ready().await;
    // The first request finds the app down and marks it so.
    let _ = post(&tg.url("/hooks/warm"), &[], "warm").await;
    let (one, t1) = write(&tg, 1, n / 2).await;
    let (many, t16) = write(&tg, 16, n / 2 / 16).await;
    let total = 1 + one.len() + many.len();
    println!(
        "{name:<9} write, 1 sender:   p50 {:6.2} ms  p99 {:6.2} ms  ({:.0} items/s)",
        pct(&one, 0.5),
        pct(&one, 0.99),
        one.len() as f64 / t1.as_secs_f64()
    );
    println!(
        "{name:<9} write, 16 senders: p50 {:6.2} ms  p99 {:6.2} ms  ({:.0} items/s)",
        pct(&many, 0.5),
        pct(&many, 0.99),
        many.len() as f64 / t16.as_secs_f64()
    );
    rec.listen().await;
    // From the first delivery (the passive probe has seen the app up) to the last.
    wait_for("first replay", Duration::from_secs(60), || async {
        (!rec.seen().is_empty()).then_some(())
    })
    .await;
    let start = Instant::now();
    let first = rec.seen().len();
    wait_for("replay", Duration::from_secs(600), || async {
        (rec.seen().len() >= total).then_some(())
    })
    .await;
    let took = start.elapsed();
    let items = total - first;
    println!(
        "{name:<9} replay, concurrency {concurrency}: {items} items in {:.2} s = {:.0} items/s",
        took.as_secs_f64(),
        items as f64 / took.as_secs_f64()
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 4000 } else { 64 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        for conc in [1, 8] {
            let db = dir.path().join(format!("spool-{conc}.db"));
            let store = format!("spool_store: {{ path: {} }}", db.display());
            run("embedded", &store, &[], n, conc).await;
            if !full {
                return;
            }
        }
        let pg = Postgres::start().await;
        for conc in [1, 8] {
            pg.psql("DROP TABLE IF EXISTS tidegate_spool");
            let env = [("TIDEGATE_SPOOL_URL", pg.url())];
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run(
                "postgres",
                "spool_store: { postgres_env: TIDEGATE_SPOOL_URL }",
                &env,
                n,
                conc,
            )
            .await;
        }
    });
}
