//! The spool in PostgreSQL fleet mode, against a real PostgreSQL server from Debian's
//! packages: two proxies share one spool; one is killed mid-replay; every item is
//! delivered, in order, and never to two places at once. And an unreachable database is a
//! 503 that keeps nothing.

mod common;

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use common::{postgres::Postgres, recorder::Recorder, *};

fn fleet_yaml(app: SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
spool_store: {{ postgres_env: TIDEGATE_SPOOL_URL }}
routes:
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ app: 100 }}
    hold: {{ timeout: 0 }}
    spool: {{ replay: {{ backoff: 100ms, max_backoff: 400ms }} }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#
    )
}

async fn start(yaml: &str, url: &str) -> Tidegate {
    let tg = Tidegate::spawn(yaml, &[("TIDEGATE_SPOOL_URL", url)]);
    tg.wait_ready().await;
    tg
}

#[tokio::test]
async fn two_proxies_share_a_spool_and_survive_one_killed_mid_replay() {
    let pg = Postgres::start().await;
    let mut rec = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    let app = rec.addr;
    rec.stop();
    let yaml = fleet_yaml(app);
    let mut a = start(&yaml, &pg.url()).await;
    let b = start(&yaml, &pg.url()).await;
    let c = client();
    let n = 200;
    let mut accepted = Vec::new();
    for i in 0..n {
        let tg = if i % 2 == 0 { &a } else { &b };
        let r = send(&c, "POST", &tg.url("/hooks/x"), &[], &format!("item {i}"))
            .await
            .expect("post");
        assert_eq!(r.status, 202, "{}", r.body);
        accepted.push(r.json()["id"].as_i64().unwrap());
    }
    assert!(
        accepted.windows(2).all(|w| w[0] < w[1]),
        "one shared sequence"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM tidegate_spool"),
        n.to_string()
    );
    // Both proxies see the shared depth.
    wait_for("depth on b", Duration::from_secs(5), || async {
        let s = get(&b.admin_url("/api/v1/status")).await.ok()?.json();
        (s["spool"][0]["pending"] == n).then_some(())
    })
    .await;

    // The app comes back, slowly; one proxy dies while items are being replayed.
    rec.shared.delay_ms.store(10, Ordering::SeqCst);
    rec.listen().await;
    wait_for("replay under way", Duration::from_secs(20), || async {
        (rec.seen().len() >= n / 4).then_some(())
    })
    .await;
    let _ = a.child.kill();
    let _ = a.child.wait();
    let seen = wait_for("every item delivered", Duration::from_secs(60), || async {
        let seen = rec.seen();
        let mut ids: Vec<i64> = seen.iter().map(|s| s.spool_id()).collect();
        ids.sort();
        ids.dedup();
        (ids == accepted).then_some(seen)
    })
    .await;
    let ids: Vec<i64> = seen.iter().map(|s| s.spool_id()).collect();
    // Strict order across the fleet; only the item in flight at the kill may be sent again
    // (at least once), by the surviving proxy, while the app may still be answering the
    // dead proxy's copy. Any other overlap would be two live proxies sending one item.
    let mut repeated: Vec<i64> = ids.clone();
    repeated.sort();
    let repeated: Vec<i64> = repeated
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(
        repeated.len() <= 1,
        "more than the killed proxy's item repeated: {repeated:?}"
    );
    let overlaps = rec.shared.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.iter().all(|o| repeated.contains(o)),
        "sent twice at once: {overlaps:?}"
    );
    let mut expected = accepted.clone();
    if let Some(r) = repeated.first() {
        // The resend comes right after the dead proxy's copy (nothing overtakes it).
        let at = expected.iter().position(|x| x == r).unwrap();
        expected.insert(at, *r);
    }
    assert_eq!(ids, expected, "not in arrival order");
    wait_for("store empty", Duration::from_secs(10), || async {
        (pg.psql("SELECT count(*) FROM tidegate_spool") == "0").then_some(())
    })
    .await;
    drop(a);
}

#[tokio::test]
async fn an_unreachable_database_is_a_503_and_keeps_nothing() {
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let closed = format!("postgres://tidegate@127.0.0.1:{}/postgres", free_port());
    let tg = start(&fleet_yaml(app), &closed).await;
    let r = post(&tg.url("/hooks/x"), &[], "payload")
        .await
        .expect("post");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "spool_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    assert!(tg.logs().contains("spool write failed"), "{}", tg.logs());
    // The URL (which may hold a password) is never logged.
    assert!(!tg.logs().contains(&closed));
    let r = get(&tg.admin_url("/api/v1/spool")).await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
}

/// The spool table is locked by another session for 12 s (a stalled store): the write is
/// abandoned before the client's 5 s, the client gets a 503, and after the lock is released
/// nothing of it is stored (the next write is the only item). Later writes are not stuck
/// behind it.
#[tokio::test]
async fn a_write_the_store_cannot_commit_in_time_keeps_nothing() {
    let pg = Postgres::start().await;
    let app: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let tg = start(&fleet_yaml(app), &pg.url()).await;
    let c = client();
    // Creates the table.
    let r = send(&c, "POST", &tg.url("/hooks/first"), &[], "first")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(
        &c,
        "DELETE",
        &tg.admin_url("/api/v1/spool?state=pending"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let mut locker = pg.psql_background(
        "BEGIN; LOCK TABLE tidegate_spool IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(12); COMMIT;",
    );
    wait_for("the lock held", Duration::from_secs(5), || async {
        let n = pg.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'tidegate_spool' AND l.mode = 'AccessExclusiveLock' AND l.granted");
        (n == "1").then_some(())
    })
    .await;
    // Two writes one after the other while the store is stalled: each gets its own 503
    // within the client's wait; the second is not queued behind the first's stalled commit.
    for body in ["stalled", "stalled again"] {
        let started = std::time::Instant::now();
        let r = send(&c, "POST", &tg.url("/hooks/stalled"), &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }
    let _ = locker.wait();
    let r = send(&c, "POST", &tg.url("/hooks/after"), &[], "after")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let rows = pg.psql("SELECT string_agg(target, ',' ORDER BY id) FROM tidegate_spool");
    assert_eq!(rows, "/hooks/after", "the 503'd write must not be stored");
}

/// A commit whose answer comes too late (issue 32): the database commits the row but the
/// writer's deadline passes first, so its client got a 503 (here: a synchronous standby
/// that never answers holds every commit's reply; the row is committed and visible). Another
/// proxy sharing the spool must never deliver it: the row stays invisible to every replayer
/// while its writer settles it (its session ended, the row deleted). A row whose client got
/// its 202 is replayed at once.
#[tokio::test]
async fn a_commit_answered_too_late_is_never_delivered_by_another_proxy() {
    let pg = Postgres::start().await;
    let rec = Recorder::start("127.0.0.1:0".parse().unwrap()).await;
    let yaml = fleet_yaml(rec.addr);
    let a = start(&yaml, &pg.url()).await;
    let b = start(&yaml, &pg.url()).await;
    let c = client();
    // a spools everything (its pool is drained); b replays what the spool holds.
    let r = send(&c, "POST", &a.admin_url("/api/v1/pools/app/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(&c, "POST", &a.url("/hooks/warm"), &[], "warm")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for("warm delivered", Duration::from_secs(10), || async {
        rec.seen().iter().any(|s| s.body == "warm").then_some(())
    })
    .await;

    // Every commit's answer now waits for a standby that does not exist.
    pg.psql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    pg.psql("SELECT pg_reload_conf()");
    let r = send(&c, "POST", &a.url("/hooks/late"), &[], "too late")
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    // The row is committed (visible to other sessions) though its writer gave up.
    wait_for("the committed row", Duration::from_secs(5), || async {
        (pg.psql("SELECT count(*) FROM tidegate_spool WHERE target = '/hooks/late'") == "1")
            .then_some(())
    })
    .await;
    wait_for(
        "the writer ends the stuck session",
        Duration::from_secs(15),
        || async {
            a.logs()
                .contains("ending its database session")
                .then_some(())
        },
    )
    .await;
    // Commits answer again; the writer's delete goes through.
    pg.psql("ALTER SYSTEM RESET synchronous_standby_names");
    pg.psql("SELECT pg_reload_conf()");
    wait_for("the 503'd row deleted", Duration::from_secs(20), || async {
        (pg.psql("SELECT count(*) FROM tidegate_spool WHERE target = '/hooks/late'") == "0")
            .then_some(())
    })
    .await;
    assert!(
        !rec.seen().iter().any(|s| s.body == "too late"),
        "a 503'd request was delivered"
    );
    // A 202'd row is replayed at once, not after the margin.
    let t0 = std::time::Instant::now();
    let r = send(&c, "POST", &a.url("/hooks/next"), &[], "next")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for("next delivered", Duration::from_secs(10), || async {
        rec.seen().iter().any(|s| s.body == "next").then_some(())
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert!(!rec.seen().iter().any(|s| s.body == "too late"));
    drop(b);
}
