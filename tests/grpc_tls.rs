//! gRPC over TLS both ways (tonic on each side): a TLS listener in front of a TLS backend
//! verified against a CA file, clear errors for a wrong CA or server name, and mutual TLS
//! with a client certificate.

mod common;

use common::{grpc::*, *};
use tonic::Code;

/// A TLS listener (its own CA) in front of a TLS gRPC backend (another CA), `tls` being the
/// pool's `tls:` block.
fn tls_yaml(
    dir: &std::path::Path,
    listener: &(String, String, String),
    backend: &GrpcBackend,
    tls: &str,
) -> String {
    std::fs::write(dir.join("l.crt"), &listener.1).unwrap();
    std::fs::write(dir.join("l.key"), &listener.2).unwrap();
    format!(
        r#"listeners:
  - name: public
    address: "{{listen}}"
    tls: {{ cert: "{d}/l.crt", key: "{d}/l.key" }}
admin: {{ address: "{{admin}}" }}
routes:
  - name: api
    split: {{ secure: 100 }}
    hold: {{ timeout: 0 }}
pools:
  secure:
    protocol: h2
    tls: {tls}
    backends: [{{ address: "{}", name: secure }}]
"#,
        backend.addr,
        d = dir.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_listener_to_a_tls_backend_verified_with_a_ca_file_and_clear_errors_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let listener = ca_and_cert(&["localhost"]);
    let (bca, bcert, bkey) = ca_and_cert(&["api.internal"]);
    std::fs::write(dir.path().join("backend-ca.pem"), &bca).unwrap();
    std::fs::write(dir.path().join("other-ca.pem"), &listener.0).unwrap();
    let backend = GrpcBackend::start_tls("secure", &bcert, &bkey);
    let d = dir.path().display();
    let good = format!(r#"{{ sni: api.internal, ca_file: "{d}/backend-ca.pem" }}"#);
    let tg = Tidegate::start(&tls_yaml(dir.path(), &listener, &backend, &good)).await;
    let url = format!("https://localhost:{}", tg.listen.port());
    let ch = channel(&url, Some((&listener.0, "localhost")))
        .await
        .expect("TLS channel");
    assert_eq!(
        unary(&ch, "x").await.expect("unary over TLS both ways"),
        "secure"
    );
    let mut s = stream(&ch, 20).await.expect("stream");
    for i in 0..3 {
        let m = s.message().await.expect("message").expect("some");
        assert_eq!(String::from_utf8_lossy(&m), format!("secure:{i}"));
    }
    drop(s);

    // The wrong CA, then the wrong server name: refused, a gRPC status to the client and a
    // log line that names the cause.
    for (tls, cause) in [
        (
            format!(r#"{{ sni: api.internal, ca_file: "{d}/other-ca.pem" }}"#),
            "UnknownIssuer",
        ),
        (
            format!(r#"{{ sni: wrong.internal, ca_file: "{d}/backend-ca.pem" }}"#),
            "not valid for name",
        ),
    ] {
        let tg = Tidegate::start(&tls_yaml(dir.path(), &listener, &backend, &tls)).await;
        let url = format!("https://localhost:{}", tg.listen.port());
        let ch = channel(&url, Some((&listener.0, "localhost")))
            .await
            .expect("channel");
        let err = unary(&ch, "x")
            .await
            .expect_err("must not reach the backend");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let logs = tg.logs();
        let line = logs
            .lines()
            .find(|l| l.contains("upstream connect failed"))
            .unwrap_or_else(|| panic!("no connect failure logged:\n{logs}"));
        assert!(line.contains("TLS") && line.contains(cause), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_to_the_backend_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let listener = ca_and_cert(&["localhost"]);
    let (bca, bcert, bkey) = ca_and_cert(&["api.internal"]);
    let (cca, ccert, ckey) = ca_and_cert(&["tidegate.client"]);
    for (f, v) in [
        ("backend-ca.pem", &bca),
        ("client.pem", &ccert),
        ("client.key", &ckey),
    ] {
        std::fs::write(dir.path().join(f), v).unwrap();
    }
    let backend = GrpcBackend::start_mtls("secure", &bcert, &bkey, &cca);
    let d = dir.path().display();
    let with_cert = format!(
        r#"{{ sni: api.internal, ca_file: "{d}/backend-ca.pem", client_cert: "{d}/client.pem", client_key: "{d}/client.key" }}"#
    );
    let tg = Tidegate::start(&tls_yaml(dir.path(), &listener, &backend, &with_cert)).await;
    let url = format!("https://localhost:{}", tg.listen.port());
    let ch = channel(&url, Some((&listener.0, "localhost")))
        .await
        .expect("channel");
    assert_eq!(unary(&ch, "x").await.expect("mTLS call"), "secure");

    // Without the client certificate the backend refuses; with verify: false tidegate
    // says so at start.
    let without = r#"{ sni: api.internal, verify: false }"#;
    let tg = Tidegate::start(&tls_yaml(dir.path(), &listener, &backend, without)).await;
    assert!(
        tg.logs().contains("pools.secure.tls.verify is false"),
        "{}",
        tg.logs()
    );
    let url = format!("https://localhost:{}", tg.listen.port());
    let ch = channel(&url, Some((&listener.0, "localhost")))
        .await
        .expect("channel");
    let err = unary(&ch, "x").await.expect_err("no client certificate");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
