//! Admin API: bearer-token auth on every /api/v1 endpoint, open health endpoints, refusing
//! to start off loopback without a token, and bad input answered with 4xx JSON that changes
//! nothing.

mod common;

use common::*;

const TOKEN: &str = "s3cret-token-for-tests";

fn config(blue: &std::net::SocketAddr, admin: &str, token: bool) -> String {
    let token = if token {
        "\n  token_env: TG_TEST_TOKEN"
    } else {
        ""
    };
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin:
  address: "{admin}"{token}
routes:
  - name: app
    split: {{ blue: 1 }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: b1 }}]
"#
    )
}

/// Every /api/v1 endpoint with a method it accepts and a body that would be valid.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("GET", "/api/v1/status", ""),
    ("POST", "/api/v1/config/reload", ""),
    ("GET", "/api/v1/pools/blue/drain", ""),
    ("GET", "/api/v1/pools/blue/drain/wait?timeout=0", ""),
    ("POST", "/api/v1/pools/blue/drain", "{}"),
    ("POST", "/api/v1/pools/blue/undrain", ""),
    ("GET", "/api/v1/pools/blue/backends/b1/drain", ""),
    (
        "GET",
        "/api/v1/pools/blue/backends/b1/drain/wait?timeout=0",
        "",
    ),
    ("POST", "/api/v1/pools/blue/backends/b1/drain", "{}"),
    ("POST", "/api/v1/pools/blue/backends/b1/undrain", ""),
    (
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":1}}"#,
    ),
    ("DELETE", "/api/v1/routes/app/split", ""),
    ("POST", "/api/v1/maintenance", "{}"),
    ("DELETE", "/api/v1/maintenance", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_endpoint_needs_the_token() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::spawn(
        &config(&blue.addr, "{admin}", true),
        &[("TG_TEST_TOKEN", TOKEN)],
    );
    tg.wait_ready().await;
    let c = client();
    for (method, path, body) in ENDPOINTS {
        let url = tg.admin_url(path);
        for auth in [None, Some("Bearer wrong-token"), Some("Basic czNjcmV0")] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let r = send(&c, method, &url, &headers, body).await.unwrap();
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert!(r
                .headers
                .get("www-authenticate")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            assert_eq!(r.json()["error"], "unauthorized");
        }
        let bearer = format!("Bearer {TOKEN}");
        let r = send(&c, method, &url, &[("authorization", &bearer)], body)
            .await
            .unwrap();
        assert!(
            r.status < 300,
            "{method} {path} with the token: {} {}",
            r.status,
            r.body
        );
    }
    // Health endpoints stay open.
    for p in ["/healthz", "/readyz", "/health"] {
        assert_eq!(get(&tg.admin_url(p)).await.unwrap().status, 200, "{p}");
    }
    assert!(!tg.logs().contains(TOKEN), "the token must never be logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_without_token_refuses_to_start() {
    let blue = TestBackend::start("blue").await;
    let port = free_port();
    let mut tg = Tidegate::spawn(&config(&blue.addr, &format!("0.0.0.0:{port}"), false), &[]);
    let status = tg.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(!status.success());
    assert!(
        tg.logs().contains("admin.address") && tg.logs().contains("token"),
        "{}",
        tg.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_json_and_changes_nothing() {
    let blue = TestBackend::start("blue").await;
    let tg = Tidegate::start(&config(&blue.addr, "{admin}", false)).await;
    let before = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    let cases: &[(&str, &str, &str, u16, &str)] = &[
        ("POST", "/api/v1/pools/blue/drain", "{not json", 400, "body"),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            r#"{"requests_deadline":"-5s"}"#,
            400,
            "requests_deadline",
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            r#"{"streams_deadline":"400d"}"#,
            400,
            "streams_deadline",
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            r#"{"close_spread":"soon"}"#,
            400,
            "close_spread",
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            r#"{"deadline":"5s"}"#,
            400,
            "body",
        ),
        ("POST", "/api/v1/pools/gren/drain", "{}", 404, ""),
        (
            "POST",
            "/api/v1/pools/blue/backends/nope/drain",
            "{}",
            404,
            "",
        ),
        ("POST", "/api/v1/pools/blue/undrain", "", 409, ""),
        (
            "GET",
            "/api/v1/pools/blue/drain/wait?timeout=forever",
            "",
            400,
            "timeout",
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"gren":1}}"#,
            400,
            "",
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":-1}}"#,
            400,
            "",
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            r#"{"split":{"blue":1}"#,
            400,
            "body",
        ),
        (
            "POST",
            "/api/v1/routes/nope/split",
            r#"{"split":{"blue":1}}"#,
            404,
            "",
        ),
        (
            "POST",
            "/api/v1/maintenance",
            r#"{"methods":["G E T"]}"#,
            400,
            "methods",
        ),
        (
            "POST",
            "/api/v1/maintenance",
            r#"{"routes":["nope"]}"#,
            400,
            "",
        ),
        ("DELETE", "/api/v1/maintenance", "", 409, ""),
        ("PUT", "/api/v1/status", "", 405, ""),
        ("GET", "/api/v1/config/reload", "", 405, ""),
        ("GET", "/api/v1/nothing-here", "", 404, ""),
    ];
    let c = client();
    for (method, path, body, code, field) in cases {
        let r = send(&c, method, &tg.admin_url(path), &[], body)
            .await
            .unwrap();
        assert_eq!(r.status, *code, "{method} {path} {body}: {}", r.body);
        assert_eq!(
            r.headers.get("content-type").unwrap(),
            "application/json",
            "{method} {path}"
        );
        let j = r.json();
        assert!(j["error"].is_string(), "{j}");
        if !field.is_empty() {
            assert_eq!(j["field"], *field, "{method} {path} {body}: {j}");
        }
    }
    let after = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    assert_eq!(before["pools"], after["pools"]);
    assert_eq!(before["routes"], after["routes"]);
    assert_eq!(after["maintenance"]["maintenance"], false);
    assert_eq!(get(&tg.url("/")).await.unwrap().status, 200);
}
