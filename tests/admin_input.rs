//! Admin input: only what is documented changes state. Bodies that are not one JSON object,
//! or repeat a key, are a 400 naming the body; a non-JSON Content-Type is a 415; in every
//! case the status, the split and maintenance are exactly as before.

mod common;

use common::*;

fn yaml(blue: std::net::SocketAddr, green: std::net::SocketAddr) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: b1 }}]
  green:
    backends: [{{ address: "{green}", name: g1 }}]
"#
    )
}

/// (method, path, headers, body, expected status).
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str, u16);

/// The status once the last proxied request has finished (its guard drops just after the
/// client has the answer), without the fields that move by themselves.
async fn state_of(tg: &Tidegate) -> serde_json::Value {
    control_state(&wait_status(tg, "nothing in flight", |s| s["in_flight"] == 0).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_one_json_object_change_nothing() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(blue.addr, green.addr)).await;
    let before = state_of(&tg).await;
    let c = client();
    let json_ct = [("content-type", "application/json")];
    let cases: &[Case] = &[
        (
            "POST",
            "/api/v1/pools/blue/drain",
            &[],
            r#"["1s","1h","10s"]"#,
            400,
        ),
        (
            "POST",
            "/api/v1/pools/blue/backends/b1/drain",
            &[],
            "[]",
            400,
        ),
        ("POST", "/api/v1/maintenance", &[], "[]", 400),
        ("POST", "/api/v1/maintenance", &json_ct, "null", 400),
        (
            "POST",
            "/api/v1/routes/app/split",
            &[],
            r#"[{"green":100}]"#,
            400,
        ),
        (
            "PUT",
            "/api/v1/routes/app/split",
            &[],
            r#"[{"green":100}]"#,
            400,
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            &json_ct,
            r#"{"split":{"blue":0,"green":100},"split":{"blue":100}}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            &json_ct,
            r#"{"split":{"green":100,"green":0}}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            &json_ct,
            r#"{"streams_deadline":"1s","streams_deadline":"1h"}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            &json_ct,
            r#"{} {}"#,
            400,
        ),
        (
            "POST",
            "/api/v1/pools/blue/drain",
            &json_ct,
            "\"drain\"",
            400,
        ),
        (
            "POST",
            "/api/v1/routes/app/split",
            &[("content-type", "text/plain")],
            r#"{"split":{"green":100}}"#,
            415,
        ),
        (
            "POST",
            "/api/v1/maintenance",
            &[("content-type", "multipart/form-data; boundary=x")],
            "{}",
            415,
        ),
    ];
    for (method, path, headers, body, want) in cases {
        let r = send(&c, method, &tg.admin_url(path), headers, body)
            .await
            .unwrap();
        assert_eq!(r.status, *want, "{method} {path} {body}: {}", r.body);
        let j = r.json();
        if *want == 400 {
            assert_eq!(j["field"], "body", "{j}");
        }
        assert!(!j["message"].as_str().unwrap_or("").is_empty(), "{j}");
        assert_eq!(
            state_of(&tg).await,
            before,
            "{method} {path} {body} changed state"
        );
        let r = get(&tg.url("/")).await.unwrap();
        assert_eq!(r.status, 200, "{method} {path} {body}: traffic");
        assert_eq!(r.backend().as_deref(), Some("blue"));
    }

    // What `curl -d` and a web form send (form content type) is refused: a page of another
    // origin could send it. So is a mutation without any content type, body or not.
    for (headers, body) in [
        (
            &[("content-type", "application/x-www-form-urlencoded")][..],
            r#"{"split":{"blue":0,"green":100}}"#,
        ),
        (
            &[("content-type", "text/plain")][..],
            r#"{"split":{"blue":0}}"#,
        ),
        (&[][..], r#"{"split":{"blue":0,"green":100}}"#),
        (&[][..], ""),
    ] {
        let r = send_exact(
            &c,
            "POST",
            &tg.admin_url("/api/v1/routes/app/split"),
            headers,
            body,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 415, "{headers:?} {body}: {}", r.body);
        assert_eq!(
            state_of(&tg).await,
            before,
            "{headers:?} {body} changed state"
        );
    }
    let r = send_exact(&c, "POST", &tg.admin_url("/api/v1/maintenance"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 415, "{}", r.body);
    assert_eq!(r.json()["error"], "json_required");
    assert_eq!(state_of(&tg).await, before);
    // With the JSON content type the same call works.
    let r = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/routes/app/split"),
        &[("content-type", "application/json")],
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        get(&tg.url("/")).await.unwrap().backend().as_deref(),
        Some("green")
    );
}
