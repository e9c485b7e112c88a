//! Edge TLS from files: several certificates on one listener chosen by SNI (exact, wildcard,
//! default), pairs replaced on disk under load (rename-on-save and a Kubernetes-style
//! symlink swap) serving new handshakes while open connections stay, a mismatched pair
//! refused with the old one serving, HSTS, HTTP→HTTPS redirects, and the certificates in
//! status, health and metrics.

mod common;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{tls::*, *};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn yaml(app: std::net::SocketAddr, tls: &str, extra_listener: &str) -> String {
    format!(
        r#"listeners:
  - name: public
    address: "{{listen}}"
    tls: {tls}
{extra_listener}admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sni_picks_each_names_certificate_and_the_default_for_the_rest() {
    let app = TestBackend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new();
    let ca_file = write(d, "ca.pem", &ca.pem);
    let mut files = Vec::new();
    for (n, names) in [
        ("default", &["default.test"][..]),
        ("a", &["a.test"][..]),
        ("b", &["*.b.test"][..]),
    ] {
        let (c, k) = ca.issue(names, 90);
        files.push((
            write(d, &format!("{n}.crt"), &c),
            write(d, &format!("{n}.key"), &k),
        ));
    }
    let tls = format!(
        r#"{{ cert: "{}", key: "{}", certificates: [{{ cert: "{}", key: "{}" }}, {{ cert: "{}", key: "{}" }}], hsts: {{ max_age: 1d, include_subdomains: true }} }}"#,
        files[0].0, files[0].1, files[1].0, files[1].1, files[2].0, files[2].1
    );
    let tg = Tidegate::start(&yaml(app.addr, &tls, "")).await;
    let port = tg.listen.port();
    assert_eq!(presented(port, "a.test").await.unwrap(), ["a.test"]);
    assert_eq!(presented(port, "x.b.test").await.unwrap(), ["*.b.test"]);
    assert_eq!(presented(port, "A.TEST").await.unwrap(), ["a.test"]);
    for other in ["unknown.test", "y.x.b.test", "b.test"] {
        assert_eq!(
            presented(port, other).await.unwrap(),
            ["default.test"],
            "{other}"
        );
    }
    // A real client, verifying: each name works, with HSTS on the answer.
    for name in ["a.test", "x.b.test", "default.test"] {
        let (code, out) = curl_https(name, port, Path::new(&ca_file), "/");
        assert_eq!(code, 0, "{out}");
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/2 200"),
            "{out}"
        );
        let lower = out.to_ascii_lowercase();
        assert!(
            lower.contains("strict-transport-security: max-age=86400; includesubdomains"),
            "{out}"
        );
    }

    // Status, health and metrics list them.
    let st = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    let certs = st["certificates"].as_array().expect("certificates").clone();
    assert_eq!(certs.len(), 3, "{certs:?}");
    assert_eq!(certs[1]["names"][0], "a.test");
    assert_eq!(certs[1]["source"], "file");
    assert!(certs[1]["issuer"]
        .as_str()
        .unwrap()
        .starts_with("tidegate test CA"));
    let now = tidegate::config::unix_now();
    let not_after = certs[1]["not_after"].as_i64().unwrap();
    assert!((not_after - now - 90 * 86_400).abs() < 120, "{not_after}");
    let h = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(h["status"], "healthy", "{h}");
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    let line = m
        .lines()
        .find(|l| {
            l.starts_with("tidegate_tls_certificate_expiry_timestamp_seconds{")
                && l.contains("names=\"a.test\"")
        })
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        line.contains("listener=\"public\"") && line.contains("source=\"file\""),
        "{line}"
    );
    let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(v as i64, not_after);
}

/// Requests on fresh connections (a handshake each) until stopped.
struct HandshakeLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HandshakeLoad {
    /// Stop, wait for the requests in flight, then count: (ok, failed).
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn handshake_load(port: u16, ca: String) -> HandshakeLoad {
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (stop, ok, failed, ca) = (stop.clone(), ok.clone(), failed.clone(), ca.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match https_status(port, "a.test", &ca, "/").await {
                    Ok(200) => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed under load: {other:?}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    HandshakeLoad {
        stop,
        ok,
        failed,
        tasks,
    }
}

/// The not-after of the certificate a new handshake for `a.test` is given.
async fn not_after_now(tg: &Tidegate) -> i64 {
    presented_cert(tg.listen.port(), "a.test")
        .await
        .expect("handshake")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaced_pairs_serve_new_handshakes_under_load_and_a_mismatch_is_refused() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let app = TestBackend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new();
    // Kubernetes mounts a Secret as `cert.pem -> ..data/cert.pem`, `..data -> ..v1`, and
    // swaps `..data` to a new directory in one rename.
    let version = |name: &str, days: i64| {
        let v = d.join(name);
        std::fs::create_dir(&v).unwrap();
        let (c, k) = ca.issue(&["a.test"], days);
        write(&v, "cert.pem", &c);
        write(&v, "key.pem", &k);
    };
    version("..v1", 30);
    std::os::unix::fs::symlink("..v1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cert.pem", d.join("cert.pem")).unwrap();
    std::os::unix::fs::symlink("..data/key.pem", d.join("key.pem")).unwrap();
    let tls = format!(
        r#"{{ cert: "{0}/cert.pem", key: "{0}/key.pem" }}"#,
        d.display()
    );
    let tg = Tidegate::start(&yaml(app.addr, &tls, "")).await;
    let port = tg.listen.port();
    let first = not_after_now(&tg).await;

    let mut ws = wss_connect(port, "a.test", &ca.pem, "/ws").await;
    let load = handshake_load(port, ca.pem.clone());

    // 1. Symlink swap.
    version("..v2", 60);
    std::os::unix::fs::symlink("..v2", d.join("..data.tmp")).unwrap();
    std::fs::rename(d.join("..data.tmp"), d.join("..data")).unwrap();
    let second = wait_for(
        "the swapped certificate",
        Duration::from_secs(3),
        || async {
            let n = not_after_now(&tg).await;
            (n > first).then_some(n)
        },
    )
    .await;
    assert!((second - first - 30 * 86_400).abs() < 120);

    // 2. Rename-on-save of both files (an editor, certbot's deploy hook).
    let (c, k) = ca.issue(&["a.test"], 120);
    for (name, text) in [("key.pem", &k), ("cert.pem", &c)] {
        let tmp = d.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::remove_file(d.join(name)).unwrap();
        std::fs::rename(&tmp, d.join(name)).unwrap();
    }
    let third = wait_for("the saved certificate", Duration::from_secs(3), || async {
        let n = not_after_now(&tg).await;
        (n > second).then_some(n)
    })
    .await;

    // 3. A mismatched pair: refused, logged, the third keeps serving; health says so.
    let (_, other_key) = ca.issue(&["a.test"], 200);
    let tmp = d.join(".key.tmp");
    std::fs::write(&tmp, &other_key).unwrap();
    std::fs::rename(&tmp, d.join("key.pem")).unwrap();
    wait_for("the refusal logged", Duration::from_secs(3), || async {
        tg.logs()
            .contains("certificate reload refused; the old certificate keeps serving")
            .then_some(())
    })
    .await;
    assert!(tg.logs().contains("do not form a pair"), "{}", tg.logs());
    assert_eq!(not_after_now(&tg).await, third);
    let h = get(&tg.admin_url("/health")).await.unwrap().json();
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(
        h["reasons"].to_string().contains("could not be reloaded"),
        "{h}"
    );
    let (served_ok, failed) = load.finish().await;
    assert_eq!(failed, 0, "failed handshakes or requests");
    assert!(served_ok > 10, "only {served_ok} requests under load");

    // The WebSocket opened before the first swap is still open and carries messages.
    ws.send(Message::Ping(b"still".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(&pong, Ok(Some(Ok(Message::Pong(p)))) if &p[..] == b"still"),
        "{pong:?}"
    );
    let m = get(&tg.admin_url("/metrics")).await.unwrap().body;
    assert!(
        m.contains("tidegate_tls_certificate_reloads_total{listener=\"public\",result=\"ok\"} 2"),
        "{m}"
    );
    // At least the mismatch; a writer stalled between renaming key and cert is refused
    // once more, which is right (the pair on disk did not match for a moment).
    let errors: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "tidegate_tls_certificate_reloads_total{listener=\"public\",result=\"error\"} ",
            )
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_http_is_redirected_to_https_except_acme_challenges() {
    let app = TestBackend::start("app").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (c, k) = ca.issue(&["a.test"], 90);
    let (cf, kf) = (
        write(dir.path(), "c.pem", &c),
        write(dir.path(), "k.pem", &k),
    );
    let tls_port = free_port();
    let yaml = format!(
        r#"listeners:
  - name: plain
    address: "{{listen}}"
    redirect_https: true
    https_port: {tls_port}
  - name: secure
    address: "127.0.0.1:{tls_port}"
    tls: {{ cert: "{cf}", key: "{kf}" }}
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    backends: [{{ address: "{}" }}]
"#,
        app.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let r = send(
        &client(),
        "POST",
        &tg.url("/orders/7?x=1&y=%20"),
        &[("host", "a.test")],
        "body",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 308, "{}", r.body);
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("https://a.test:{tls_port}/orders/7?x=1&y=%20").as_str())
    );
    assert_eq!(
        app.app.hits(),
        0,
        "a redirected request never reaches the app"
    );
    // ACME HTTP-01 challenges are answered over plain HTTP: not redirected.
    let r = send(
        &client(),
        "GET",
        &tg.url("/.well-known/acme-challenge/tok"),
        &[("host", "a.test")],
        "",
    )
    .await
    .unwrap();
    assert_ne!(r.status, 308, "{}", r.body);
    // A Host that is not a plain host name gets a 400, not a redirect elsewhere.
    let r = send_exact(
        &client(),
        "GET",
        &tg.url("/"),
        &[("host", "a.test/evil")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    // The redirect target works, and the access log says what happened.
    let (code, out) = curl_https(
        "a.test",
        tls_port,
        &dir.path().join("ca.pem").tap(&ca.pem),
        "/orders/7",
    );
    assert_eq!(code, 0, "{out}");
    let l = tg
        .access_line("redirected", |l| l["outcome"] == "redirected")
        .await;
    assert_eq!(l["status"], 308, "{l}");
}

trait Tap {
    fn tap(self, text: &str) -> std::path::PathBuf;
}

impl Tap for std::path::PathBuf {
    /// Write `text` to this path and hand it back.
    fn tap(self, text: &str) -> std::path::PathBuf {
        std::fs::write(&self, text).unwrap();
        self
    }
}

#[test]
fn check_validates_every_pair_and_warns_about_near_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new();
    let (c, k) = ca.issue(&["soon.test"], 5);
    let (_, other) = ca.issue(&["x.test"], 90);
    let (cf, kf, of) = (
        write(d, "c.pem", &c),
        write(d, "k.pem", &k),
        write(d, "o.pem", &other),
    );
    let conf = |cert: &str, key: &str| {
        let p = d.join("t.yaml");
        let tls = format!(
            r#"{{ cert: "{cf}", key: "{kf}", certificates: [{{ cert: "{cert}", key: "{key}" }}] }}"#
        );
        std::fs::write(
            &p,
            yaml("127.0.0.1:3000".parse().unwrap(), &tls, "")
                .replace("{listen}", "127.0.0.1:8443")
                .replace("{admin}", "127.0.0.1:9901"),
        )
        .unwrap();
        check(&p)
    };
    let (code, out) = conf(&cf, &kf);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: listeners[0].tls: certificate for soon.test expires in "),
        "{out}"
    );
    let (code, out) = conf(&cf, &of);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "listeners[0].tls.certificates[0].key: certificate and key do not form a pair"
        ),
        "{out}"
    );
}
