//! "Drained" is never false in a fleet whose dependencies are slow or lie (issue 32, item 2).
//!
//! - A slow DNS answer (a real DNS server that answers after seconds, through a real
//!   `/etc/resolv.conf` in the proxy's own mount namespace) for a `members/*` row stalls no
//!   proxy: the one resolving it keeps heartbeating and never answers drained while a
//!   stream is open on another.
//! - A peer stopped with SIGSTOP: listed as lost after the TTL; `strict=true` (and
//!   `tidegate drain --wait --strict`) never answers drained while it is.
//! - A database restored from a backup (dump, change, restore): every proxy keeps its live
//!   state, says so in `/health`, the status and the log, and refuses changes; once the
//!   revision is moved past theirs they adopt the store's state.
//! - A row too big to read: an error, the last state kept, nothing loaded into memory.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{client::Sse, fleet::*, postgres::Postgres, *};
use serde_json::Value;

/// A DNS server on `ADDR:53` that answers every question after `DELAY` seconds: an A record
/// 127.0.0.1 for A questions, no answer for others.
const SLOW_DNS: &str = r#"
import socket, struct, sys, threading, time
addr, delay = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
print("ready", flush=True)
def answer(data, peer):
    time.sleep(delay)
    q = data[12:]
    i = 0
    while q[i] != 0:
        i += q[i] + 1
    q = q[: i + 5]
    qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
    if qtype == 1:
        rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
        n = 1
    else:
        rr, n = b"", 0
    s.sendto(data[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, n, 0, 0) + q + rr, peer)
while True:
    data, peer = s.recvfrom(512)
    threading.Thread(target=answer, args=(data, peer), daemon=True).start()
"#;

struct Dns(Child);

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn slow_dns(addr: &str, delay_s: &str) -> Dns {
    let mut c = Command::new("python3")
        .args(["-c", SLOW_DNS, addr, delay_s])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Read;
    let mut ready = [0u8; 6];
    c.stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut ready)
        .expect("dns ready");
    Dns(c)
}

async fn drain_of(tg: &Tidegate, query: &str) -> Option<Value> {
    Some(
        get(&tg.admin_url(&format!("/api/v1/pools/blue/drain{query}")))
            .await
            .ok()?
            .json(),
    )
}

/// The review's case: a proxy applying a `members/*` row whose name answers after 8 s (the
/// heartbeat TTL is 3 s) while a stream is open on another proxy. Before, the lookup ran in
/// the fleet loop under its lock: heartbeats stopped, every peer looked lost, and the
/// proxy answered "drained". Now the row is stored unresolved and the resolver looks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_dns_answer_for_a_members_row_never_makes_a_proxy_answer_drained() {
    if !is_root("a mount namespace") {
        eprintln!("SKIPPED: a mount namespace with its own resolv.conf needs root");
        return;
    }
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let dns_ip = "127.0.0.53";
    let _dns = slow_dns(dns_ip, "8");
    let dir = tempfile::tempdir().expect("tempdir");
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {dns_ip}\noptions timeout:30 attempts:1\n"),
    )
    .expect("resolv.conf");
    // p1 sees the slow DNS server as its resolver; p2 is ordinary.
    let wrapper: Vec<String> = [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([resolv.display().to_string()])
    .collect();
    let y = yaml(
        &blue.addr.to_string(),
        &green.addr.to_string(),
        pg.port,
        "s1",
    );
    let p1 = Tidegate::start_wrapped(&y, &wrapper).await;
    let p2 = proxy(&blue, &green, pg.port, "s2").await;

    let mut sse = Sse::open(&p2.url("/events?interval_ms=100")).await;
    assert_eq!(sse.status, 200);
    let r = api(&p2, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_for("p1 sees s2 holding", Duration::from_secs(5), || async {
        let d = drain_of(&p1, "").await?;
        (d["fleet"]["holding"] == serde_json::json!(["s2"])).then_some(())
    })
    .await;

    // The members row with a name only the slow server knows.
    let body = format!(
        r#"{{"backends":[{{"address":"slow-member.tidegate.test:{}","name":"slow"}}]}}"#,
        green.addr.port()
    );
    let r = api(&p2, "PUT", "/api/v1/pools/green/backends", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // For twice the TTL: p1 answers quickly, sees s2 live and holding, never drained.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let mut asked = 0;
    while std::time::Instant::now() < until {
        let t0 = std::time::Instant::now();
        let d = drain_of(&p1, "").await.expect("p1 answers");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "p1's admin stalled {:?}",
            t0.elapsed()
        );
        assert_eq!(d["drained"], false, "p1 answered drained: {d}");
        assert_eq!(d["fleet"]["lost"], serde_json::json!([]), "{d}");
        let d2 = drain_of(&p2, "").await.expect("p2 answers");
        assert_eq!(d2["drained"], false, "p2 answered drained: {d2}");
        assert_eq!(d2["fleet"]["lost"], serde_json::json!([]), "{d2}");
        asked += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(asked > 10);
    assert!(sse.next_data(Duration::from_secs(5)).await.is_ok());

    // The row reached p1, and the resolver answers for it once the server does.
    wait_for(
        "p1 resolves the member through the slow server",
        Duration::from_secs(20),
        || async {
            let s = status(&p1).await?;
            let b = s["pools"]["green"]["backends"].as_array()?.first()?.clone();
            (b["name"] == "slow" && b["available"] == true).then_some(())
        },
    )
    .await;
    drop(sse);
}

/// A peer stopped with SIGSTOP holds a stream it cannot report. After the TTL it is lost:
/// by default listed and not counted (documented), with `strict=true` never drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_peer_is_lost_and_strict_never_answers_drained() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "t1").await;
    let p2 = proxy(&blue, &green, pg.port, "t2").await;
    let sse = Sse::open(&p2.url("/events?interval_ms=100")).await;
    assert_eq!(sse.status, 200);
    let r = api(&p1, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202);
    wait_for("t2 holding", Duration::from_secs(5), || async {
        let d = drain_of(&p1, "").await?;
        (d["fleet"]["holding"] == serde_json::json!(["t2"])).then_some(())
    })
    .await;
    p2.signal(libc::SIGSTOP);
    let d = wait_for("t2 lost", Duration::from_secs(10), || async {
        let d = drain_of(&p1, "").await?;
        (d["fleet"]["lost"] == serde_json::json!(["t2"])).then_some(d)
    })
    .await;
    assert_eq!(
        d["drained"], true,
        "default: lost is listed, not counted: {d}"
    );
    let d = drain_of(&p1, "?strict=true").await.expect("strict");
    assert_eq!(d["drained"], false, "strict: never drained while lost: {d}");
    assert_eq!(d["fleet"]["strict"], true);
    let d = get(&p1.admin_url("/api/v1/pools/blue/drain/wait?timeout=1s&strict=true"))
        .await
        .expect("wait")
        .json();
    assert_eq!(d["drained"], false, "{d}");
    let (code, out) = run_cli(vec![
        "drain".into(),
        "blue".into(),
        "--wait".into(),
        "--strict".into(),
        "--timeout".into(),
        "2s".into(),
        "--admin".into(),
        p1.admin_url(""),
    ])
    .await;
    assert_eq!(code, 1, "--strict: not drained while t2 is lost: {out}");
    assert!(out.contains("--strict"), "{out}");
    let (code, out) = run_cli(vec![
        "drain".into(),
        "blue".into(),
        "--wait".into(),
        "--timeout".into(),
        "5s".into(),
        "--admin".into(),
        p1.admin_url(""),
    ])
    .await;
    assert_eq!(code, 0, "default: drained on the live proxies: {out}");
    assert!(out.contains("LOST"), "{out}");
    // A deploy with --strict waits for the lost proxy too: its --then never runs.
    let (code, out) = run_cli(vec![
        "deploy".into(),
        "app".into(),
        "--to".into(),
        "green".into(),
        "--strict".into(),
        "--drain-timeout".into(),
        "2s".into(),
        "--then".into(),
        "echo THEN-RAN".into(),
        "--admin".into(),
        p1.admin_url(""),
    ])
    .await;
    assert_eq!(
        code, 1,
        "deploy --strict: blue is not drained while t2 is lost: {out}"
    );
    assert!(!out.contains("THEN-RAN"), "{out}");

    // Back: live and holding again, not drained even without strict.
    p2.signal(libc::SIGCONT);
    wait_for("t2 live and holding", Duration::from_secs(10), || async {
        let d = drain_of(&p1, "").await?;
        (d["fleet"]["lost"] == serde_json::json!([])
            && d["fleet"]["holding"] == serde_json::json!(["t2"])
            && d["drained"] == false)
            .then_some(())
    })
    .await;
    drop(sse);
    wait_for("drained for the fleet", Duration::from_secs(10), || async {
        let d = drain_of(&p1, "?strict=true").await?;
        (d["drained"] == true).then_some(())
    })
    .await;
}

fn blue_state(s: &Value) -> String {
    s["pools"]["blue"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Dump, change, restore: the store's revision goes back. No proxy adopts the older state
/// (blue would be drained again on every proxy at once); each says so and refuses
/// changes. Moving the revision past theirs is the documented way to adopt the store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_database_is_detected_and_the_live_state_kept() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "r1").await;
    let p2 = proxy(&blue, &green, pg.port, "r2").await;
    let r = api(&p1, "POST", "/api/v1/pools/blue/drain", "{}").await;
    assert_eq!(r.status, 202);
    all_follow(&[&p1, &p2], "blue drained", |s| blue_state(s) != "active").await;
    let backup = pg.dump(&["tidegate_control", "tidegate_control_meta"]);
    let r = api(&p2, "POST", "/api/v1/pools/blue/undrain", "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    put_split(&p2, 40, 60).await;
    all_follow(&[&p1, &p2], "undrained and split", |s| {
        blue_state(s) == "active" && split_of(s)["green"] == 60
    })
    .await;

    pg.restore(&backup);
    for tg in [&p1, &p2] {
        let s = wait_for("regression seen", Duration::from_secs(10), || async {
            let s = status(tg).await?;
            s["fleet"]["regressed"].is_string().then_some(s)
        })
        .await;
        assert_eq!(blue_state(&s), "active", "the live state is kept: {s}");
        assert_eq!(split_of(&s)["green"], 60, "{s}");
        let h = get(&tg.admin_url("/health")).await.expect("health").json();
        assert_eq!(h["status"], "degraded", "{h}");
        assert!(h.to_string().contains("older than this proxy"), "{h}");
        let r = api(tg, "POST", "/api/v1/pools/green/drain", "{}").await;
        assert_eq!(r.status, 503, "changes refused: {}", r.body);
        assert!(tg.logs().contains("the control store went back in time"));
        // Traffic is still routed by the live split.
        let r = get(&tg.url("/")).await.expect("request");
        assert_eq!(r.status, 200);
    }
    // A proxy started now has no state of its own, but the live proxies' heartbeats say how
    // far the fleet had come: it says so too, and refuses changes.
    let p3 = proxy(&blue, &green, pg.port, "r3").await;
    let s = wait_for(
        "p3 sees the regression",
        Duration::from_secs(10),
        || async {
            let s = status(&p3).await?;
            s["fleet"]["regressed"].is_string().then_some(s)
        },
    )
    .await;
    assert!(
        s["fleet"]["regressed"]
            .as_str()
            .unwrap_or_default()
            .contains("live proxies"),
        "{s}"
    );
    let r = api(&p3, "POST", "/api/v1/pools/green/drain", "{}").await;
    assert_eq!(r.status, 503, "changes refused: {}", r.body);
    // Recovery: the revision moved past the proxies' adopts the store's state (blue drained,
    // as in the backup).
    pg.psql("UPDATE tidegate_control_meta SET rev = rev + 1000");
    all_follow(&[&p1, &p2, &p3], "the store's state adopted", |s| {
        s["fleet"]["regressed"].is_null() && blue_state(s) != "active"
    })
    .await;
    let r = api(&p1, "POST", "/api/v1/pools/blue/undrain", "").await;
    assert_eq!(r.status, 200, "changes accepted again: {}", r.body);
}

/// A row bigger than an API body is not read: an error, the last state kept; once it is
/// gone the proxy follows the store again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_row_too_big_to_read_keeps_the_last_state() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "b1").await;
    put_split(&p1, 70, 30).await;
    pg.psql(
        "INSERT INTO tidegate_control (key, value, rev, updated_by) \
         SELECT 'maintenance', jsonb_build_object('message', repeat('x', 3000000)), rev, 'hand' \
         FROM tidegate_control_meta",
    );
    pg.psql("UPDATE tidegate_control_meta SET rev = rev + 1; NOTIFY tidegate_control, 'x'");
    let s = wait_for("the read refused", Duration::from_secs(10), || async {
        let s = status(&p1).await?;
        s["fleet"]["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("bytes"))
            .then_some(s)
    })
    .await;
    assert_eq!(split_of(&s)["green"], 30, "{s}");
    assert_eq!(s["maintenance"]["maintenance"], false, "{s}");
    let r = get(&p1.url("/")).await.expect("request");
    assert_eq!(r.status, 200);
    pg.psql("DELETE FROM tidegate_control WHERE key = 'maintenance'");
    wait_for("reachable again", Duration::from_secs(10), || async {
        let s = status(&p1).await?;
        s["fleet"]["store_reachable"].as_bool()?.then_some(())
    })
    .await;
    let r = api(&p1, "POST", "/api/v1/pools/green/drain", "{}").await;
    assert_eq!(r.status, 202, "{}", r.body);
}

/// Text from the database reaches the log escaped (issue 32): a row whose key and value
/// hold terminal escapes is logged with `?` in their place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn control_characters_from_the_store_are_not_logged_raw() {
    let pg = Postgres::start().await;
    let (blue, green) = blue_green().await;
    let p1 = proxy(&blue, &green, pg.port, "e1").await;
    pg.psql(
        "INSERT INTO tidegate_control (key, value, rev, updated_by) \
         SELECT E'split/\\x1b[31mred', jsonb_build_object('blue', E'\\x1b[2J'), rev + 1, 'hand' \
         FROM tidegate_control_meta",
    );
    pg.psql("UPDATE tidegate_control_meta SET rev = rev + 1; NOTIFY tidegate_control, 'x'");
    wait_for("the row refused", Duration::from_secs(10), || async {
        p1.logs()
            .contains("not applied on this proxy")
            .then_some(())
    })
    .await;
    let logs = p1.logs();
    assert!(!logs.contains('\u{1b}'), "raw escape in the log: {logs:?}");
    assert!(logs.contains("?[31mred"), "{logs}");
}
