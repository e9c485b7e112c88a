//! The spool's promises at their edges: a client cannot forge the spool headers; a request
//! released from a hold does not overtake items spooled meanwhile; a request that reached a
//! backend is not spooled against `retry_sent`; replays wait out maintenance; an outcome the
//! store cannot write is not resent in a tight loop; bodies share a memory budget; a write
//! the store cannot commit in time keeps nothing; the store's files are private.

mod common;

use std::{os::unix::fs::PermissionsExt, time::Duration};

use common::{recorder::Recorder, spool::*, *};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn forged_spool_headers_never_reach_the_app_and_files_are_private() {
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&webhooks_yaml(app, dir.path())).await;
    let forged = [
        ("tidegate-spool-id", "999"),
        ("Tidegate-Spool-Attempt", "7"),
        ("content-type", "application/json"),
    ];
    let r = post(&tg.url("/hooks/a"), &forged, "{}").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let id = r.json()["id"].as_i64().unwrap();
    // Not even stored: the edge dropped them.
    {
        use sqlx::Connection;
        let db = dir.path().join("spool.db");
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        let (headers,): (Vec<u8>,) =
            sqlx::query_as("SELECT headers FROM tidegate_spool WHERE id = ?")
                .bind(id)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let headers = String::from_utf8_lossy(&headers).to_ascii_lowercase();
        assert!(!headers.contains("tidegate-spool"), "{headers}");
        assert!(
            headers.contains("content-type: application/json"),
            "{headers}"
        );
    }
    // The store holds bodies: owner only, the WAL too.
    for f in ["spool.db", "spool.db-wal"] {
        assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
    }
    // A drain writes the state file: owner only, no temp file left behind.
    let r = post(&tg.admin_url("/api/v1/pools/app/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let state = dir.path().join("state.json");
    wait_for("state file", Duration::from_secs(5), || async {
        state.exists().then_some(())
    })
    .await;
    assert_eq!(mode(&state), 0o600);
    let r = post(&tg.admin_url("/api/v1/pools/app/undrain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);

    let rec = Recorder::start(app).await;
    let seen = wait_seen(&rec, 1, Duration::from_secs(15)).await;
    let ids: Vec<_> = seen[0]
        .headers
        .get_all("tidegate-spool-id")
        .iter()
        .collect();
    assert_eq!(ids, [id.to_string().as_str()], "one id, the real one");
    let attempts: Vec<_> = seen[0]
        .headers
        .get_all("tidegate-spool-attempt")
        .iter()
        .collect();
    assert_eq!(attempts, ["1"]);
    // Direct traffic (nothing queued any more) does not carry forged ones either.
    wait_for("spool empty", Duration::from_secs(5), || async {
        (spool_list(&tg, "").await["total"] == 0).then_some(())
    })
    .await;
    let r = post(&tg.url("/hooks/b"), &forged, "{}").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = wait_seen(&rec, 2, Duration::from_secs(5)).await;
    assert_eq!(seen[1].path, "/hooks/b");
    assert!(seen[1].headers.get("tidegate-spool-id").is_none());
    assert!(seen[1].headers.get("tidegate-spool-attempt").is_none());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A at t=0 and B at t=2 are held (hold 5 s, shipped config); A is spooled at t=5; the app
/// comes back at once, while B still waits: B must go behind A, not straight to the app.
#[tokio::test]
async fn a_request_released_from_its_hold_queues_behind_items_spooled_meanwhile() {
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&webhooks_yaml(app, dir.path())).await;
    let a_url = tg.url("/hooks/a");
    let a = tokio::spawn(async move { post(&a_url, &[], "A").await });
    wait_for("A held", Duration::from_secs(5), || async {
        let m = get(&tg.admin_url("/metrics")).await.ok()?.body;
        m.contains("tidegate_held_requests{route=\"hooks\"} 1")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // B arrives 2 s after A (the scenario's timing)
    let b_url = tg.url("/hooks/b");
    let b = tokio::spawn(async move { post(&b_url, &[], "B").await });
    let a = a.await.unwrap().unwrap();
    assert_eq!(a.status, 202, "A is spooled after its hold: {}", a.body);
    // B is still held (its hold ends ~2 s later); the app comes back now.
    let rec = Recorder::start(app).await;
    let b = b.await.unwrap().unwrap();
    assert_eq!(b.status, 202, "B queues behind A in the spool: {}", b.body);
    let seen = wait_seen(&rec, 2, Duration::from_secs(15)).await;
    let order: Vec<_> = seen.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(order, ["A", "B"], "arrival order");
    // B was released by the app's return, not spooled at its own hold timeout: only A's
    // hold timed out.
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains("tidegate_hold_timeouts_total{route=\"hooks\"} 1\n"),
        "only A's hold timed out:\n{m}"
    );
}

/// A backend that reads a POST and closes without answering: the POST may have been
/// processed. With `retry_sent` at its default (idempotent methods only) it is not spooled.
#[tokio::test]
async fn a_post_that_reached_a_backend_is_not_spooled_against_retry_sent() {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };
    let seen = Arc::new(AtomicU32::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_request(&mut c, &mut buf).await.is_some() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
                // Dropped: the connection dies after the request arrived.
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&fast_yaml(app, dir.path(), "")).await;
    let r = post(&tg.url("/hooks/x"), &[], "pay once").await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(spool_list(&tg, "").await["total"], 0, "nothing spooled");
    // Where retry_sent allows POST, such a request may be sent again: it is spooled.
    let dir2 = tempfile::tempdir().unwrap();
    let tg2 = Tidegate::start(&fast_yaml(app, dir2.path(), "").variant(
        "hold: { timeout: 0 }",
        "hold: { timeout: 0 }\n    retry_sent: all",
    ))
    .await;
    let r = post(&tg2.url("/hooks/x"), &[], "may repeat").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
}

#[tokio::test]
async fn replays_wait_while_the_route_is_in_maintenance() {
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let yaml = fast_yaml(app, dir.path(), "")
        .variant("pools:", "  - name: web\n    split: { app: 100 }\npools:");
    assert!(yaml.contains("name: web"));
    let tg = Tidegate::start(&yaml).await;
    let r = post(&tg.url("/hooks/m"), &[], "later").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post(
        &tg.admin_url("/api/v1/maintenance"),
        &[("content-type", "application/json")],
        r#"{"routes":["hooks"]}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let rec = Recorder::start(app).await;
    // The app is up (the other route reaches it) ...
    wait_for("the app reachable", Duration::from_secs(10), || async {
        (get(&tg.url("/web")).await.ok()?.status == 200).then_some(())
    })
    .await;
    // ... and for 3 s, longer than the replayer's 1 s rounds, the item is not sent.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        assert!(
            rec.seen().iter().all(|s| s.path != "/hooks/m"),
            "replayed during maintenance"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = send(
        &client(),
        "DELETE",
        &tg.admin_url("/api/v1/maintenance"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(
        "replayed after maintenance",
        Duration::from_secs(10),
        || async {
            rec.seen()
                .iter()
                .any(|s| s.path == "/hooks/m")
                .then_some(())
        },
    )
    .await;
}

/// The store refuses to record outcomes (a trigger stands in for a full disk): the item is
/// sent, cannot be settled, and is sent again only after growing pauses.
#[tokio::test]
async fn an_outcome_that_cannot_be_written_is_not_resent_in_a_tight_loop() {
    use sqlx::Connection;
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&fast_yaml(app, dir.path(), "")).await;
    let r = post(&tg.url("/hooks/d"), &[], "once").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let db = dir.path().join("spool.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    for stmt in [
        "CREATE TRIGGER full_disk_d BEFORE DELETE ON tidegate_spool BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        "CREATE TRIGGER full_disk_u BEFORE UPDATE ON tidegate_spool BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    ] {
        sqlx::query(stmt).execute(&mut conn).await.unwrap();
    }
    let rec = Recorder::start(app).await;
    wait_seen(&rec, 1, Duration::from_secs(10)).await;
    let first = std::time::Instant::now();
    // Watch 3 s: a tight loop sends hundreds; the back-off (0.5 s doubling) a handful.
    while first.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = rec.seen().len();
    assert!(sent <= 5, "sent {sent} times in 3 s while outcomes failed");
    assert!(tg.logs().contains("could not record a replay"));
    for stmt in ["DROP TRIGGER full_disk_d", "DROP TRIGGER full_disk_u"] {
        sqlx::query(stmt).execute(&mut conn).await.unwrap();
    }
    wait_for("the item settled", Duration::from_secs(15), || async {
        (spool_list(&tg, "").await["total"] == 0).then_some(())
    })
    .await;
}

/// Bodies being spooled share `spool_buffer`: beyond it, 503 + Retry-After before reading.
#[tokio::test]
async fn spooled_bodies_share_one_memory_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("spool_buffer: 1048576\n{}", fast_yaml(app, dir.path(), ""));
    let tg = Tidegate::start(&yaml).await;
    // No backend at all (not a free port that a parallel test could take meanwhile).
    let r = post(&tg.admin_url("/api/v1/pools/app/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let big = 700 * 1024;
    // The first request declares 700 KiB and sends only part of it: its bytes are held.
    let mut first = tokio::net::TcpStream::connect(tg.listen).await.unwrap();
    let head = format!("POST /hooks/big HTTP/1.1\r\nHost: a\r\nContent-Length: {big}\r\n\r\n");
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&vec![b'a'; 1000]).await.unwrap();
    // It is being read (and holds its share) before the second one comes.
    wait_status(&tg, "the first body being read", |s| s["in_flight"] == 1).await;
    // The second does not fit beside it.
    let r = wait_for("the budget taken", Duration::from_secs(5), || async {
        let r = post(&tg.url("/hooks/second"), &[], &"b".repeat(409_600))
            .await
            .ok()?;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(r.json()["error"], "spool_busy", "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());
    // A small one still fits.
    let r = post(&tg.url("/hooks/small"), &[], "s").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // The first completes and is stored; the budget is free again.
    first.write_all(&vec![b'a'; big - 1000]).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = first.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 202"), "{text}");
    let r = post(&tg.url("/hooks/second"), &[], &"b".repeat(409_600))
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
}

/// A commit that lands after the client was told 503: the embedded store is locked by
/// another connection, the writer's deadline (4 s) answers 503, the lock is released at
/// once and the abandoned insert commits. The row is revoked: deleted, never replayed.
#[tokio::test]
async fn a_commit_landing_after_the_503_is_revoked_and_never_replayed() {
    use sqlx::Connection;
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&fast_yaml(app, dir.path(), "")).await;
    // Creates the store.
    let r = post(&tg.url("/hooks/first"), &[], "first").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let r = send(
        &client(),
        "DELETE",
        &tg.admin_url("/api/v1/spool?state=pending"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let db = dir.path().join("spool.db");
    let mut lock = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let r = post(&tg.url("/hooks/late"), &[], "late").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    // Released before the store's own busy timeout (5 s): the insert goes through now.
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    wait_for("the late row revoked", Duration::from_secs(20), || async {
        tg.logs().contains("revoked items deleted").then_some(())
    })
    .await;
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM tidegate_spool")
        .fetch_one(&mut lock)
        .await
        .unwrap();
    assert_eq!(left, 0, "the 503'd request is not stored");
    // The app comes back: the late request never reaches it; a new one goes straight there.
    let rec = Recorder::start(app).await;
    let r = wait_for("the app reachable", Duration::from_secs(10), || async {
        let r = post(&tg.url("/hooks/after"), &[], "after").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(r.status, 200);
    let bodies: Vec<String> = rec.seen().into_iter().map(|s| s.body).collect();
    assert!(!bodies.iter().any(|b| b == "late"), "{bodies:?}");
}

/// Spooled requests are replayed over plain HTTP/1.1: a split override that would send a
/// spooled route to an HTTP/2 pool is refused, and a reload that turns the pool it already
/// goes to into one leaves the item unsent (the attempt fails with the reason) instead of
/// sending it wrongly.
#[tokio::test]
async fn spooled_routes_never_replay_into_an_http2_pool() {
    let (app, green) = (dead_addr(), dead_addr());
    let dir = tempfile::tempdir().unwrap();
    let base = fast_yaml(app, dir.path(), "");
    let with = |proto: &str| {
        format!("{base}  green:\n    protocol: {proto}\n    backends: [{{ address: \"{green}\" }}]\n  grpc:\n    protocol: h2c\n    backends: [{{ address: \"{green}\" }}]\n")
    };
    let tg = Tidegate::start(&with("http1")).await;
    let split = |to: &str| {
        let (tg, body) = (&tg, format!(r#"{{"split": {{"{to}": 100}}}}"#));
        async move {
            let url = tg.admin_url("/api/v1/routes/hooks/split");
            let h = [("content-type", "application/json")];
            post(&url, &h, &body).await.unwrap()
        }
    };
    let r = split("grpc").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains(
            "pool \\\"grpc\\\" speaks h2c; spooled requests are replayed over plain HTTP/1.1 only"
        ),
        "{}",
        r.body
    );
    assert_eq!(split("green").await.status, 200);

    let r = post(&tg.url("/hooks/x"), &[], "kept").await.unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    let gen = tg.generation().await;
    tg.rewrite_config(&with("h2c"));
    wait_for("reloaded", Duration::from_secs(10), || async {
        (tg.generation().await > gen).then_some(())
    })
    .await;
    let rec = Recorder::start(green).await;
    let item = wait_for("the attempt refused", Duration::from_secs(10), || async {
        let l = spool_list(&tg, "").await;
        let item = l["items"][0].clone();
        item["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("speaks h2c"))
            .then_some(item)
    })
    .await;
    assert_eq!(item["path"], "/hooks/x", "{item}");
    assert!(rec.seen().is_empty(), "sent over HTTP/1.1 to an h2c pool");
}

/// An HTTP/2 body has no Content-Length to reserve by (issue 32): its reservation grows with
/// each chunk read, so beside a body that holds most of `spool_buffer` it is a 503 +
/// Retry-After, as over HTTP/1.1, instead of held in memory past the budget.
#[tokio::test]
async fn http2_bodies_without_a_length_are_budgeted_as_they_arrive() {
    use tokio::io::AsyncWriteExt;
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!("spool_buffer: 1048576\n{}", fast_yaml(app, dir.path(), "")).replace(
        r#"address: "{listen}" }"#,
        r#"address: "{listen}", h2c: true }"#,
    );
    let tg = Tidegate::start(&yaml).await;
    let r = post(&tg.admin_url("/api/v1/pools/app/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // An HTTP/1.1 body declares 700 KiB and sends part of it: its bytes are held.
    let big = 700 * 1024;
    let mut first = tokio::net::TcpStream::connect(tg.listen).await.unwrap();
    let head = format!("POST /hooks/big HTTP/1.1\r\nHost: a\r\nContent-Length: {big}\r\n\r\n");
    first.write_all(head.as_bytes()).await.unwrap();
    first.write_all(&vec![b'a'; 1000]).await.unwrap();
    wait_status(&tg, "the first body being read", |s| s["in_flight"] == 1).await;
    // An HTTP/2 body of 500 KiB without a length does not fit beside it.
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'x'; 500 * 1024]).unwrap();
    let url = tg.url("/hooks/h2");
    // nghttp prints the frames it gets: the answer arrives while the body is still being
    // sent (the stream is then reset, which curl reports as an error).
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("nghttp")
            .args(["-v", "--no-content-length", "-d"])
            .arg(&body)
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(out.contains(":status: 503"), "{out}");
    assert!(
        !out.contains("content-length: 512000"),
        "sent without a length: {out}"
    );
    assert!(out.contains("retry-after"), "{out}");
    assert!(tg
        .logs()
        .contains("spool buffer full while the body arrived"));
    // A small HTTP/2 body still fits.
    let url = tg.url("/hooks/small");
    let out = tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-i",
                "--http2-prior-knowledge",
                "-X",
                "POST",
                "--data-binary",
                "s",
            ])
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/2 202"), "{out}");
    drop(first);
}

/// A replayed request answered with an endless body (issue 32): a failed attempt once the
/// answer passes 1 MiB, read and thrown away, never gigabytes in memory.
#[tokio::test]
async fn an_endless_answer_to_a_replay_is_a_failed_attempt() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let tg = Tidegate::start(&fast_yaml(app, dir.path(), "")).await;
    let r = post(&tg.url("/hooks/endless"), &[], "payload")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    // Now the backend answers 200 with a chunked body that never ends.
    let l = tokio::net::TcpListener::bind(app).await.unwrap();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
                while c.write_all(chunk.as_bytes()).await.is_ok() {}
            });
        }
    });
    let item = wait_for("the attempt failed", Duration::from_secs(20), || async {
        let l = spool_list(&tg, "").await;
        let it = l["items"].as_array()?.first()?.clone();
        it["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("longer than"))
            .then_some(it)
    })
    .await;
    assert!(item["attempts"].as_u64().unwrap_or(0) >= 1, "{item}");
    server.abort();
}
