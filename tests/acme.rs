//! ACME against a real ACME server (pebble, Let's Encrypt's test CA) with its mock DNS:
//! a certificate obtained through HTTP-01 and served, kept across restarts (no new order),
//! renewed before expiry under load, a CA that goes away (the certificate keeps serving,
//! back-off, health degraded, caught up when it returns), and on-demand issuance approved by
//! an `ask` URL and rate-limited against a flood of random names.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{acme::Pebble, tls::*, *};

/// Prints tidegate's and pebble's logs when a test fails.
struct Logs<'a>(&'a Tidegate, &'a Pebble);

impl Drop for Logs<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("tidegate:\n{}\npebble:\n{}", self.0.logs(), self.1.log());
        }
    }
}

struct Setup {
    http: u16,
    tls: u16,
    pebble: Pebble,
    app: TestBackend,
    state: tempfile::TempDir,
}

async fn setup(validity_secs: u64) -> Setup {
    let (http, tls) = (free_port(), free_port());
    Setup {
        http,
        tls,
        pebble: Pebble::start(http, tls, validity_secs),
        app: TestBackend::start("app").await,
        state: tempfile::tempdir().unwrap(),
    }
}

impl Setup {
    fn yaml(&self, acme: &str) -> String {
        format!(
            r#"listeners:
  - name: plain
    address: "127.0.0.1:{http}"
    redirect_https: true
    https_port: {tls}
  - name: secure
    address: "127.0.0.1:{tls}"
    tls:
      acme: {{ directory: "{dir}", ca_file: "{ca}", email: ops@example.com, retry_min: 500ms, retry_max: 2s, {acme} }}
admin: {{ address: "{{admin}}" }}
state_file: "{state}/state.json"
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#,
            http = self.http,
            tls = self.tls,
            dir = self.pebble.directory,
            ca = self.pebble.ca_file.display(),
            state = self.state.path().display(),
            app = self.app.addr,
        )
    }

    /// Pebble's root, in a file curl can trust.
    fn root_file(&self) -> std::path::PathBuf {
        let f = self.state.path().join("pebble-root.pem");
        std::fs::write(&f, self.pebble.root()).unwrap();
        f
    }
}

/// The ACME certificate the status lists for `name`: its not-after.
async fn acme_cert(tg: &Tidegate, name: &str) -> Option<i64> {
    let st = get(&tg.admin_url("/api/v1/status")).await.ok()?.json();
    st["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["source"] == "acme" && c["names"][0] == name)
        .and_then(|c| c["not_after"].as_i64())
}

async fn wait_cert(tg: &Tidegate, name: &str, newer_than: i64) -> i64 {
    wait_for("an ACME certificate", Duration::from_secs(60), || async {
        acme_cert(tg, name).await.filter(|n| *n > newer_than)
    })
    .await
}

fn modes_under(dir: &Path, out: &mut Vec<(String, u32)>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            modes_under(&p, out);
        } else {
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            out.push((p.display().to_string(), mode));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http01_obtains_a_certificate_and_a_restart_orders_none() {
    let s = setup(30 * 86_400).await;
    let mut tg = Tidegate::start(&s.yaml("domains: [a.test]")).await;
    wait_cert(&tg, "a.test", 0).await;
    let root = s.root_file();
    let (code, out) = curl_https("a.test", s.tls, &root, "/");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 200"), "{out}");
    assert_eq!(s.pebble.issued(), 1, "{}", s.pebble.log());
    // The challenge was answered before routing (the plain listener redirects the rest).
    assert!(
        tg.access_lines()
            .iter()
            .any(|l| l["outcome"] == "acme_challenge" && l["status"] == 200),
        "{}",
        tg.logs()
    );
    // Account key and certificate key are private.
    let mut modes = Vec::new();
    modes_under(&s.state.path().join("acme"), &mut modes);
    assert!(modes.len() >= 3, "{modes:?}");
    assert!(modes.iter().all(|(_, m)| *m == 0o600), "{modes:?}");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains(r#"tidegate_acme_orders_total{listener="secure",names="a.test",result="ok"} 1"#),
        "{m}"
    );

    // After a restart the stored certificate serves from the first handshake (loaded
    // before the listeners open); the ACME service takes it over and, having logged so,
    // has decided not to order until renewal is due.
    tg.restart().await;
    let (code, out) = curl_https("a.test", s.tls, &root, "/");
    assert_eq!(code, 0, "{out}");
    wait_for(
        "the stored certificate taken over",
        Duration::from_secs(10),
        || async {
            (tg.logs()
                .matches("ACME certificate loaded from storage")
                .count()
                == 1)
                .then_some(())
        },
    )
    .await;
    assert_eq!(s.pebble.issued(), 1, "a new order after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn renewed_before_expiry_under_load_with_open_connections_untouched() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // 24 s certificates: renewed 16 s into their lifetime (8 s to spare on a slow machine).
    let s = setup(24).await;
    let tg = Tidegate::start(&s.yaml("domains: [a.test]")).await;
    let first = wait_cert(&tg, "a.test", 0).await;
    let root = s.pebble.root();
    let mut ws = wss_connect(s.tls, "a.test", &root, "/ws").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, root) = (stop.clone(), ok.clone(), failed.clone(), root.clone());
        let port = s.tls;
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match https_status(port, "a.test", &root, "/").await {
                    Ok(200) => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    let second = wait_cert(&tg, "a.test", first).await;
    assert!(second > first);
    // Renewed before the first one expired.
    let now = tidegate::config::unix_now();
    assert!(now < first, "renewed only after expiry ({now} >= {first})");
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    assert!(ok.load(Ordering::SeqCst) > 10);
    ws.send(Message::Ping(b"open".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(&pong, Ok(Some(Ok(Message::Pong(p)))) if &p[..] == b"open"),
        "{pong:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_that_goes_away_leaves_the_certificate_serving_and_is_caught_up_with() {
    // 45 s certificates: renewal due 30 s in, three failures well before expiry.
    let mut s = setup(45).await;
    let tg = Tidegate::start(&s.yaml("domains: [a.test]")).await;
    let first = wait_cert(&tg, "a.test", 0).await;
    let root = s.pebble.root();
    s.pebble.stop();
    // Renewal is due 30 s in: it fails, is logged once per attempt, with growing pauses.
    let lines = wait_for("three failed attempts", Duration::from_secs(45), || async {
        let logs = tg.logs();
        let v: Vec<String> = logs
            .lines()
            .filter(|l| l.contains("ACME order failed"))
            .map(str::to_string)
            .collect();
        (v.len() >= 3).then_some(v)
    })
    .await;
    let pauses: Vec<u64> = lines
        .iter()
        .filter_map(|l| {
            l.split("retry_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(pauses.len() >= 3 && pauses[2] > pauses[0], "{pauses:?}");
    // The old certificate serves; health says why it is degraded.
    assert_eq!(acme_cert(&tg, "a.test").await, Some(first));
    assert_eq!(https_status(s.tls, "a.test", &root, "/").await, Ok(200));
    let h = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"]
            .to_string()
            .contains("ACME renewal for a.test is failing"),
        "{h}"
    );

    // The CA returns (a new pebble: it forgot the account): tidegate makes a new account
    // and catches up; health recovers.
    s.pebble.resume();
    let second = wait_cert(&tg, "a.test", first).await;
    assert!(second > first);
    wait_for("healthy again", Duration::from_secs(10), || async {
        let h = get(&tg.admin_url("/health")).await.ok()?.json();
        (h["status"] == "healthy").then_some(())
    })
    .await;
}

/// An `ask` endpoint approving names under `.ok.test`, counting the questions.
async fn ask_server() -> (std::net::SocketAddr, Arc<AtomicU64>) {
    ask_server_with(Arc::new(AtomicBool::new(false)), Duration::ZERO).await
}

/// [`ask_server`], refusing names that start with `x.` while `refuse_x` is set, and taking
/// `slow` to answer each question.
async fn ask_server_with(
    refuse_x: Arc<AtomicBool>,
    slow: Duration,
) -> (std::net::SocketAddr, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let asked = Arc::new(AtomicU64::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let (count, refuse_x) = (count.clone(), refuse_x.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(slow).await;
                let line = req.lines().next().unwrap_or("");
                let ok = (line.contains(".ok.test ") || line.contains(".ok.test&"))
                    && !(refuse_x.load(Ordering::SeqCst) && line.contains("domain=x."));
                let status = if ok { "200 OK" } else { "403 Forbidden" };
                let resp =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = c.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_orders_only_approved_names_and_at_most_the_limit() {
    let s = setup(30 * 86_400).await;
    let (ask, asked) = ask_server().await;
    let od = format!(r#"on_demand: {{ ask: "http://{ask}/ask", max_orders: 3, per: 1h }}"#);
    let tg = Tidegate::start(&s.yaml(&od)).await;
    let root = s.pebble.root();
    // An approved name: the first handshake has no certificate; one soon after does.
    let _ = https_status(s.tls, "x.ok.test", &root, "/").await;
    wait_for("x.ok.test served", Duration::from_secs(60), || async {
        https_status(s.tls, "x.ok.test", &root, "/")
            .await
            .ok()
            .filter(|c| *c == 200)
    })
    .await;
    assert_eq!(s.pebble.issued(), 1);
    // A refused name never gets one.
    let _ = https_status(s.tls, "bad.test", &root, "/").await;
    wait_for("the refusal", Duration::from_secs(10), || async {
        tg.logs()
            .contains("on-demand certificate refused by ask")
            .then_some(())
    })
    .await;
    assert!(acme_cert(&tg, "bad.test").await.is_none());

    // 1,000 random names in a burst: at most 2 more orders (3 in all).
    let mut burst = Vec::new();
    for i in 0..1000 {
        let (port, root) = (s.tls, root.clone());
        burst.push(tokio::spawn(async move {
            let _ = presented(port, &format!("r{i}-{}.ok.test", fastrand::u32(..))).await;
            let _ = root;
        }));
        if burst.len() >= 50 {
            for b in burst.drain(..) {
                let _ = b.await;
            }
        }
    }
    for b in burst {
        let _ = b.await;
    }
    wait_for("the rate limit logged", Duration::from_secs(30), || async {
        tg.logs().contains("rate limit reached").then_some(())
    })
    .await;
    // Orders in flight finish; none beyond the limit starts.
    wait_for("orders settled", Duration::from_secs(60), || async {
        (s.pebble.issued() == 3).then_some(())
    })
    .await;
    let started = tg
        .logs()
        .matches("on-demand certificate approved by ask; ordering")
        .count();
    assert_eq!(started, 3, "{}", tg.logs());
    assert_eq!(s.pebble.issued(), 3, "{}", tg.logs());
    assert!(
        asked.load(Ordering::SeqCst) < 1000,
        "every name was asked about"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_demand_names_are_asked_again_before_renewal() {
    // 24 s certificates: renewal is due 16 s in.
    let s = setup(24).await;
    let refuse_x = Arc::new(AtomicBool::new(false));
    let (ask, _) = ask_server_with(refuse_x.clone(), Duration::ZERO).await;
    let od = format!(r#"on_demand: {{ ask: "http://{ask}/ask", max_orders: 10, per: 1h }}"#);
    let tg = Tidegate::start(&s.yaml(&od)).await;
    let _logs = Logs(&tg, &s.pebble);
    let root = s.pebble.root();
    for name in ["x.ok.test", "y.ok.test"] {
        let _ = https_status(s.tls, name, &root, "/").await;
    }
    let x1 = wait_cert(&tg, "x.ok.test", 0).await;
    let y1 = wait_cert(&tg, "y.ok.test", 0).await;
    // The ask's owner no longer wants x: it is not renewed; y still is.
    refuse_x.store(true, Ordering::SeqCst);
    let y2 = wait_cert(&tg, "y.ok.test", y1).await;
    assert!(y2 > y1);
    wait_for(
        "x refused before renewal",
        Duration::from_secs(30),
        || async {
            tg.logs()
                .contains("no longer approved by ask: not renewed")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        acme_cert(&tg, "x.ok.test").await,
        Some(x1),
        "x kept its certificate"
    );
    assert_eq!(s.pebble.issued(), 3, "x once, y twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_made_up_names_does_not_keep_a_real_one_waiting() {
    let s = setup(30 * 86_400).await;
    // Each question takes 300 ms: the made-up names alone are minutes of asking.
    let (ask, asked) =
        ask_server_with(Arc::new(AtomicBool::new(false)), Duration::from_millis(300)).await;
    let od = format!(r#"on_demand: {{ ask: "http://{ask}/ask", max_orders: 10, per: 1h }}"#);
    let tg = Tidegate::start(&s.yaml(&od)).await;
    let _logs = Logs(&tg, &s.pebble);
    let root = s.pebble.root();
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = Vec::new();
    for c in 0..20 {
        let (port, stop) = (s.tls, stop.clone());
        flood.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 5000 {
                let _ = presented(port, &format!("made-up-{c}-{i}.flood.test")).await;
                i += 1;
            }
        }));
    }
    // The flood is being asked about (its names came first) when real clients arrive.
    wait_for("the flood asked about", Duration::from_secs(10), || async {
        (asked.load(Ordering::SeqCst) >= 4).then_some(())
    })
    .await;
    // Real clients of real.ok.test keep coming while the flood goes on: served soon.
    let served = wait_for("real.ok.test served", Duration::from_secs(30), || async {
        match https_status(s.tls, "real.ok.test", &root, "/").await {
            Ok(200) => Some(()),
            _ => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        }
    });
    served.await;
    let asked_then = asked.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    for f in flood {
        let _ = f.await;
    }
    assert!(
        asked_then < 1500,
        "the real name waited for the made-up ones ({asked_then} asked)"
    );
    assert_eq!(s.pebble.issued(), 1, "only the real name was ordered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_alpn01_obtains_a_certificate_on_the_tls_listener() {
    let s = setup(30 * 86_400).await;
    let tg = Tidegate::start(&s.yaml("domains: [b.test], challenge: tls-alpn-01")).await;
    let _logs = Logs(&tg, &s.pebble);
    wait_cert(&tg, "b.test", 0).await;
    assert!(
        tg.logs().contains("ACME tls-alpn-01 challenge answered"),
        "{}",
        tg.logs()
    );
    assert!(
        !tg.access_lines()
            .iter()
            .any(|l| l["outcome"] == "acme_challenge"),
        "HTTP-01 was used"
    );
    let (code, out) = curl_https("b.test", s.tls, &s.root_file(), "/");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(" 200"), "{out}");
    // Ordinary clients were never held up: with no challenge pending nothing is peeked,
    // and a client that offers h2 and http/1.1 gets the normal handshake.
    assert!(presented(s.tls, "b.test").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_account_binding_when_the_ca_requires_it() {
    let (http, tls) = (free_port(), free_port());
    // A 32-byte HMAC key, base64url as CAs hand it out.
    let key = "dGlkZWdhdGUtdGVzdC1obWFjLWtleS0zMi1ieXRlcyE";
    let pebble = Pebble::start_with(http, tls, 30 * 86_400, Some(("kid-1", key)));
    let s = Setup {
        http,
        tls,
        pebble,
        app: TestBackend::start("app").await,
        state: tempfile::tempdir().unwrap(),
    };
    // Without the binding the CA refuses the account: logged, retried, nothing served.
    let tg = Tidegate::start(&s.yaml("domains: [e.test]")).await;
    wait_for("the refusal", Duration::from_secs(20), || async {
        tg.logs().contains("externalAccountRequired").then_some(())
    })
    .await;
    assert!(acme_cert(&tg, "e.test").await.is_none());
    drop(tg);
    let eab = "domains: [e.test], eab: { kid: kid-1, hmac_key_env: TEST_EAB_KEY }";
    let tg = Tidegate::spawn(&s.yaml(eab), &[("TEST_EAB_KEY", key)]);
    tg.wait_ready().await;
    wait_cert(&tg, "e.test", 0).await;
    assert!(!tg.logs().contains(key), "the HMAC key is never logged");
}
