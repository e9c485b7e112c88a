//! Startup checks (port in use, bad certificate), TLS with ALPN h2, h2c, and stopping:
//! SIGTERM exits as soon as idle (not after pingora's grace sleep), SIGINT at once.

mod common;

use std::{process::Command, time::Duration};

use common::*;

fn yaml_for(addr: &std::net::SocketAddr, listeners: &str) -> String {
    format!(
        r#"
listeners: {listeners}
admin: {{ address: "{{admin}}" }}
shutdown: {{ delay: 0s, grace: 60s }}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends: [{{ address: "{addr}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_in_use_is_a_clear_startup_error() {
    let blue = TestBackend::start("blue").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml = yaml_for(
        &blue.addr,
        &format!("[{{ name: public, address: \"127.0.0.1:{port}\" }}]"),
    );
    let mut tg = Tidegate::spawn(&yaml, &[]);
    let status = tg.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success());
    let log = tg.logs();
    assert!(
        log.contains("listener public") && log.contains("cannot bind"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_or_mismatched_certificate_is_a_startup_error() {
    let blue = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("a.crt");
    let key = dir.path().join("b.key");
    std::fs::write(&cert, a.cert.pem()).unwrap();
    std::fs::write(&key, b.signing_key.serialize_pem()).unwrap();
    for (cert, key, expect) in [
        (cert.clone(), key.clone(), "listeners[0].tls.key"),
        (
            dir.path().join("missing.crt"),
            key.clone(),
            "listeners[0].tls.cert",
        ),
    ] {
        let listeners = format!(
            "[{{ name: tls, address: \"{{listen}}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]",
            cert.display(),
            key.display()
        );
        let mut tg = Tidegate::spawn(&yaml_for(&blue.addr, &listeners), &[]);
        assert!(!tg.wait_exit(Duration::from_secs(20)).await.success());
        assert!(tg.logs().contains(expect), "{}", tg.logs());
        let (code, out) = check(&tg.config);
        assert_eq!(code, 1);
        assert!(out.contains(expect), "{out}");
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl is needed for TLS/h2 tests");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_speaks_h2_and_http1_and_plain_listener_h2c() {
    let blue = TestBackend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls_port = free_port();
    let listeners = format!(
        "[{{ name: plain, address: \"{{listen}}\", h2c: true }}, {{ name: tls, address: \"127.0.0.1:{tls_port}\", tls: {{ cert: \"{}\", key: \"{}\" }} }}]",
        cert.display(),
        key.display()
    );
    let tg = Tidegate::start(&yaml_for(&blue.addr, &listeners)).await;
    let url = format!("https://localhost:{tls_port}/headers");
    let cacert = cert.to_string_lossy().into_owned();
    let out = curl(&[
        "-s",
        "--cacert",
        &cacert,
        "--http2",
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    let (body, version) = out.rsplit_once('\n').unwrap();
    assert_eq!(version, "2", "ALPN should pick h2");
    let headers: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "https");
    assert!(
        headers["host"].as_str().unwrap().starts_with("localhost"),
        "{headers}"
    );
    let out = curl(&[
        "-s",
        "--cacert",
        &cacert,
        "--http1.1",
        "-w",
        "\n%{http_version}",
        &url,
    ]);
    assert!(out.ends_with("\n1.1"), "{out}");
    let out = curl(&[
        "-s",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_version}",
        &tg.url("/"),
    ]);
    assert_eq!(out, "hello from blue\n\n2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_then_exits_promptly() {
    let blue = TestBackend::start("blue").await;
    let mut tg = Tidegate::start(&yaml_for(
        &blue.addr,
        "[{ name: public, address: \"{listen}\" }]",
    ))
    .await;
    let url = tg.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_for("slow request in flight", Duration::from_secs(5), || async {
        (blue.app.hits() == 1).then_some(())
    })
    .await;
    tg.signal(libc::SIGTERM);
    // Readiness fails while the request is still running.
    let readyz = tg.admin_url("/readyz");
    wait_for("/readyz 503", Duration::from_secs(5), || async {
        (get(&readyz).await.ok()?.status == 503).then_some(())
    })
    .await;
    assert!(
        !slow.is_finished(),
        "readiness should fail before the in-flight request ends"
    );
    let r = slow
        .await
        .unwrap()
        .expect("in-flight request must complete");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "slow hello from blue\n");
    // Idle now: the process exits 0 well before grace (60s) or pingora's default (300s).
    let status = tg.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", tg.logs());
    assert!(tg.logs().contains("idle: exiting"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once_even_with_a_stream_open() {
    let blue = TestBackend::start("blue").await;
    let mut tg = Tidegate::start(&yaml_for(
        &blue.addr,
        "[{ name: public, address: \"{listen}\" }]",
    ))
    .await;
    let mut sse = Sse::open(&tg.url("/events?interval_ms=100")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    tg.signal(libc::SIGINT);
    tg.wait_exit(Duration::from_secs(10)).await;
    // The stream is cut (not ended cleanly) by a fast stop.
    let mut ended = false;
    for _ in 0..100 {
        match sse.next_data(Duration::from_secs(5)).await {
            Ok(Some(_)) => continue,
            _ => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_serves_during_delay_then_exits_0_once_stream_and_request_end() {
    let blue = TestBackend::start("blue").await;
    let yaml = yaml_for(&blue.addr, "[{ name: public, address: \"{listen}\" }]").variant(
        "shutdown: { delay: 0s, grace: 60s }",
        "shutdown: { delay: 1500ms, grace: 60s }",
    );
    let mut tg = Tidegate::start(&yaml).await;
    let mut sse = Sse::open(&tg.url("/events/push")).await;
    let url = tg.url("/slow?ms=2500");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_for("both in flight", Duration::from_secs(5), || async {
        (blue.app.sse_open() == 1 && blue.app.hits() == 2).then_some(())
    })
    .await;
    tg.signal(libc::SIGTERM);
    let readyz = tg.admin_url("/readyz");
    wait_for("/readyz 503", Duration::from_secs(5), || async {
        (get(&readyz).await.ok()?.status == 503).then_some(())
    })
    .await;
    // During shutdown.delay new requests (new connections) are still served.
    for _ in 0..3 {
        assert_eq!(
            get(&tg.url("/")).await.expect("served during delay").status,
            200
        );
    }
    let health = get(&tg.admin_url("/health")).await.unwrap();
    assert_eq!(health.status, 503);
    // The stream keeps flowing after the listeners closed; then both end by themselves.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(blue.app.push("late"), 1);
    assert_eq!(
        sse.next_data(Duration::from_secs(5))
            .await
            .unwrap()
            .as_deref(),
        Some("late")
    );
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    assert!(
        tg.child.try_wait().unwrap().is_none(),
        "must not exit while the stream is open"
    );
    blue.app.push("__end__");
    assert_eq!(sse.next_data(Duration::from_secs(5)).await, Ok(None));
    let status = tg.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", tg.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_outliving_grace_ends_cleanly_and_exit_is_1() {
    let blue = TestBackend::start("blue").await;
    let yaml = yaml_for(&blue.addr, "[{ name: public, address: \"{listen}\" }]").variant(
        "shutdown: { delay: 0s, grace: 60s }",
        "shutdown: { delay: 0s, grace: 2s }",
    );
    let mut tg = Tidegate::start(&yaml).await;
    let mut sse = Sse::open(&tg.url("/events?interval_ms=200")).await;
    assert!(sse
        .next_data(Duration::from_secs(5))
        .await
        .unwrap()
        .is_some());
    tg.signal(libc::SIGTERM);
    let ended = loop {
        match sse.next_data(Duration::from_secs(15)).await {
            Ok(Some(_)) => continue,
            Ok(None) => break true,
            Err(e) => panic!("stream was cut, not ended cleanly: {e}"),
        }
    };
    assert!(ended);
    let status = tg.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(1));
    let logs = tg.logs();
    assert!(
        logs.contains("abandoned at shutdown.grace")
            && logs.contains("kind=\"sse\"")
            && logs.contains("path=/events"),
        "{logs}"
    );
    assert!(logs.contains("sse=1"), "{logs}");
}
