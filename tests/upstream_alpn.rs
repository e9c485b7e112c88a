//! `protocol: auto` learns what the backend's ALPN chose from its answers: over HTTP/1.1 each
//! call has a connection of its own, so connection set-ups run side by side (they used to
//! take HTTP/2's one-at-a-time turn); over HTTP/2 calls keep taking turns on shared
//! connections.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{grpc::ca_and_cert, *};
use http_body_util::Full;
use hyper::{body::Bytes, service::service_fn, Response};
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;

/// An HTTPS backend that offers only `http/1.1`, waits `delay` before each handshake (a slow
/// connection set-up) and before each answer (`alpn-h1`).
/// Handshakes under way now, and the most there were at once.
#[derive(Default)]
struct Handshakes {
    now: AtomicUsize,
    most: AtomicUsize,
}

async fn slow_h1_backend(
    cert: &str,
    key: &str,
    delay: Duration,
    seen: Arc<Handshakes>,
) -> SocketAddr {
    let certs = certs(cert);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("cert");
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let now = seen.now.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                let accepted = acceptor.accept(tcp).await;
                seen.now.fetch_sub(1, Ordering::SeqCst);
                let Ok(stream) = accepted else {
                    return;
                };
                // Busy for as long again: a connection is not free for the next call.
                let svc = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        "alpn-h1",
                    ))))
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificates")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_to_an_http1_backend_sets_up_connections_side_by_side() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = ca_and_cert(&["api.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca).expect("write ca");
    // A handshake takes a second, so does an answer: the calls of a burst each need a
    // connection, and the backend counts the handshakes under way at once.
    let seen = Arc::new(Handshakes::default());
    let backend = slow_h1_backend(&cert, &key, Duration::from_millis(1000), seen.clone()).await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
timeouts: {{ connect: 1800ms }}
routes:
  - name: app
    split: {{ app: 100 }}
    hold: {{ timeout: 0 }}
    retries: 0
pools:
  app:
    protocol: auto
    tls: {{ sni: api.internal, ca_file: "{}" }}
    backends: [{{ address: "{backend}", name: b1 }}]
"#,
        dir.path().join("ca.pem").display()
    );
    let tg = Tidegate::start(&yaml).await;
    // The first answer tells the proxy what ALPN chose.
    let first = get(&tg.url("/")).await.expect("first call");
    assert_eq!((first.status, first.body.as_str()), (200, "alpn-h1"));
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let url = tg.url(&format!("/burst/{i}"));
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    let mut answers = Vec::new();
    for c in calls {
        let r = c.await.expect("task").expect("call");
        answers.push((r.status, r.body));
    }
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "alpn-h1"),
        "{answers:?}\n{}",
        tg.logs()
    );
    // The calls that found no free connection set theirs up together (at least two of the
    // four: one may take the first call's connection once it is free).
    let most = seen.most.load(Ordering::SeqCst);
    assert!(
        most >= 2,
        "connections were set up one at a time (at most {most} at once)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_to_an_h2_backend_keeps_taking_turns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = ca_and_cert(&["api.internal"]);
    std::fs::write(dir.path().join("ca.pem"), &ca).expect("write ca");
    let backend = common::grpc::GrpcBackend::start_tls("h2", &cert, &key);
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}", h2c: true }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    protocol: auto
    tls: {{ sni: api.internal, ca_file: "{}" }}
    backends: [{{ address: "{}", name: b1 }}]
"#,
        dir.path().join("ca.pem").display(),
        backend.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let ch = common::grpc::channel(&format!("http://{}", tg.listen), None)
        .await
        .expect("channel");
    assert_eq!(common::grpc::unary(&ch, "x").await.expect("unary"), "h2");
    let logs = tg.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("ALPN chose h2") && l.contains("app/b1")),
        "{logs}"
    );
    assert!(!logs.contains("ALPN chose http/1.1"), "{logs}");
}
