//! The status page in headless Chromium (Debian's package, driven over the DevTools
//! protocol): it asks for the token, says 401 plainly for a wrong one, shows one SSE stream
//! in flight on blue and 0 once it ends (live, no reload), and drains green after a
//! confirmation. Screenshots at laptop and phone width go to `target/ui-*.png`.

mod common;

use std::time::Duration;

use common::{cdp::Browser, *};

const TOKEN: &str = "ui-test-token";

fn yaml(
    blue: std::net::SocketAddr,
    green: std::net::SocketAddr,
    token_file: &std::path::Path,
) -> String {
    let token_file = token_file.display();
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}", token_file: {token_file} }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
pools:
  blue: {{ backends: [{{ address: "{blue}" }}] }}
  green: {{ backends: [{{ address: "{green}" }}] }}
"#
    )
}

/// Text of the element matching `selector`, as a JS expression.
fn text(selector: &str) -> String {
    format!("(document.querySelector({selector:?}) || {{}}).textContent")
}

async fn use_token(b: &mut Browser, token: &str) {
    let js = format!(
        "document.getElementById('token').value = {token:?}; \
         document.getElementById('auth-form').requestSubmit(); true"
    );
    b.eval(&js).await;
}

#[tokio::test]
async fn the_page_is_live_and_acts_with_the_token() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut tg = Tidegate::start(&yaml(blue.addr, green.addr, &token_file)).await;
    let r = get(&tg.admin_url("/ui")).await.unwrap();
    assert_eq!(r.status, 200);
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert!(!r.body.contains("<script>"), "no inline script");

    let mut b = Browser::start(1280, 900).await;
    b.navigate(&tg.admin_url("/ui")).await;
    // No token yet: the page says what is missing.
    b.wait_true(
        "the token prompt",
        "!document.getElementById('auth').hidden && document.getElementById('auth-why').textContent.includes('requires a bearer token')",
        Duration::from_secs(10),
    )
    .await;
    // A wrong token: 401, said plainly.
    use_token(&mut b, "not-the-token").await;
    b.wait_true(
        "the 401 message",
        "document.getElementById('auth-why').textContent.startsWith('401 Unauthorized')",
        Duration::from_secs(10),
    )
    .await;
    use_token(&mut b, TOKEN).await;
    b.wait_true(
        "live",
        &format!("{} === 'live'", text("#conn")),
        Duration::from_secs(10),
    )
    .await;
    // The token is in the tab's session storage, not in the URL.
    assert_eq!(b.eval("location.search + location.hash").await, "");
    assert_eq!(
        b.eval("sessionStorage.getItem('tidegate-admin-token')")
            .await,
        TOKEN
    );

    // One SSE stream through the proxy lands on blue.
    b.eval("window.__noReload = 1; true").await;
    let mut sse = Sse::open(&tg.url("/events")).await;
    assert_eq!(sse.status, 200);
    sse.next_data(Duration::from_secs(5))
        .await
        .expect("first event");
    let blue_sse = text(r#"[data-key="pool/blue/sse"]"#);
    b.wait_true(
        "blue shows 1 SSE",
        &format!("{blue_sse} === '1'"),
        Duration::from_secs(5),
    )
    .await;
    let shot = b.screenshot(1280, 900).await;
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/ui-laptop.png"),
        &shot,
    )
    .unwrap();

    // The stream ends: the proxy counts it down, and the page follows within 2 s.
    drop(sse);
    let status = tg.admin_url("/api/v1/status");
    wait_for(
        "the proxy counts the stream down",
        Duration::from_secs(10),
        || async {
            let r = send(
                &client(),
                "GET",
                &status,
                &[("authorization", &format!("Bearer {TOKEN}"))],
                "",
            )
            .await
            .ok()?;
            (r.json()["pools"]["blue"]["in_flight"]["sse"] == 0).then_some(())
        },
    )
    .await;
    b.wait_true(
        "blue shows 0 SSE",
        &format!("{blue_sse} === '0'"),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        b.eval("window.__noReload").await,
        1,
        "the page was reloaded"
    );

    // Drain green from the page: asked first, then done with the token.
    b.eval(
        r#"document.querySelector('button[data-action="drain"][data-pool="green"]').click(); true"#,
    )
    .await;
    b.wait_true(
        "the confirmation",
        "!document.getElementById('confirm').hidden && document.getElementById('confirm-text').textContent.includes('Drain pool green')",
        Duration::from_secs(5),
    )
    .await;
    let before = get_with_token(&tg, "/api/v1/pools/green/drain").await;
    assert_eq!(
        before["state"], "active",
        "nothing happens before the confirmation"
    );
    b.eval("document.getElementById('confirm-yes').click(); true")
        .await;
    wait_for(
        "green draining in the API",
        Duration::from_secs(10),
        || async {
            let s = get_with_token(&tg, "/api/v1/pools/green/drain").await;
            (s["state"] != "active").then_some(())
        },
    )
    .await;
    b.wait_true(
        "the page shows green drained",
        r#"(document.querySelector('[data-pool="green"] h3 .badge') || {}).textContent === 'drained'"#,
        Duration::from_secs(5),
    )
    .await;
    let shot = b.screenshot(390, 844).await;
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/ui-phone.png"),
        &shot,
    )
    .unwrap();
    assert!(!tg.logs().contains(TOKEN), "the token was logged");

    // The proxy restarts (green's drain was not persisted: no state_file): the page
    // reconnects by itself and shows the new process's state.
    tg.restart().await;
    b.wait_true(
        "green active again after the restart",
        r#"(document.querySelector('[data-pool="green"] h3 .badge') || {}).textContent === 'active'"#,
        Duration::from_secs(20),
    )
    .await;
    b.wait_true(
        "live again",
        &format!("{} === 'live'", text("#conn")),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        b.eval("window.__noReload").await,
        1,
        "the page was reloaded"
    );
}

async fn get_with_token(tg: &Tidegate, path: &str) -> serde_json::Value {
    let r = send(
        &client(),
        "GET",
        &tg.admin_url(path),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
    )
    .await
    .expect("api");
    r.json()
}

/// Wait for the token prompt, then give the token.
async fn sign_in(b: &mut Browser) {
    b.wait_true(
        "the token prompt",
        "!document.getElementById('auth').hidden",
        Duration::from_secs(10),
    )
    .await;
    use_token(b, TOKEN).await;
}

#[tokio::test]
async fn a_deploy_is_drawn_with_its_marks_and_every_column_is_reachable_on_a_phone() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let tg = Tidegate::start(&yaml(blue.addr, green.addr, &token_file)).await;
    let auth = format!("Bearer {TOKEN}");
    let api = |method: &'static str, path: &'static str, body: &'static str| {
        let (url, auth) = (tg.admin_url(path), auth.clone());
        async move {
            let r = send(&client(), method, &url, &[("authorization", &auth)], body)
                .await
                .unwrap();
            assert!(r.status < 300, "{method} {path}: {}", r.body);
        }
    };
    // A deploy before the page is opened: traffic on blue, a shift to green, blue drained.
    let load = Load::start(tg.url("/"), 2);
    let history = || async {
        let r = send(
            &client(),
            "GET",
            &tg.admin_url("/api/v1/history"),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
        r.json()
    };
    wait_for("samples with traffic", Duration::from_secs(20), || async {
        let h = history().await;
        let busy = h["samples"]
            .as_array()?
            .iter()
            .any(|s| s["pools"]["blue"]["rps"].as_f64() > Some(1.0));
        busy.then_some(())
    })
    .await;
    api(
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":0,"green":100}}"#,
    )
    .await;
    api("POST", "/api/v1/pools/blue/drain", "").await;
    let h = wait_for(
        "marks of the shift and the drain",
        Duration::from_secs(20),
        || async {
            let h = history().await;
            let texts: Vec<String> = h["marks"]
                .as_array()?
                .iter()
                .map(|m| m["text"].as_str().unwrap_or("").to_string())
                .collect();
            let ok = texts.iter().any(|t| t == "app: blue 0, green 100")
                && texts.iter().any(|t| t == "pool blue drained");
            ok.then_some(h)
        },
    )
    .await;
    assert_eq!(h["interval_seconds"], 2.0);

    // Opened afterwards, the page draws the minutes before, with the marks, and keeps
    // drawing while the traffic goes on (the status changes at every check then).
    let mut b = Browser::start(1280, 900).await;
    b.navigate(&tg.admin_url("/ui")).await;
    sign_in(&mut b).await;
    b.wait_true(
        "blue's request line drawn",
        r#"(() => { const p = document.querySelector('[data-charts="blue"] polyline[data-series="rps"]');
            return !!p && p.getAttribute('points').split(' ').length >= 2; })()"#,
        Duration::from_secs(15),
    )
    .await;
    b.wait_true(
        "the shift and the drain marked on the time axis",
        r#"(() => { const t = [...document.querySelectorAll('[data-charts="green"] line.mark title')].map(e => e.textContent);
            return t.some(s => s.endsWith('app: blue 0, green 100')) && t.some(s => s.endsWith('pool blue drained')); })()"#,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        b.eval(
            r#"document.querySelectorAll('[data-charts="blue"] li[data-mark="drain"]').length > 0"#
        )
        .await,
        true
    );
    let points = r#"document.querySelector('[data-charts="green"] polyline[data-series="rps"]').getAttribute('points').split(' ').length"#;
    let n = b.eval(points).await.as_u64().unwrap();
    b.wait_true(
        "a new sample drawn under traffic",
        &format!("{points} > {n}"),
        Duration::from_secs(10),
    )
    .await;
    let (ok, failed) = load.stop().await;
    assert_eq!(failed, 0, "{ok} ok");
    let shot = b.screenshot(1280, 900).await;
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/ui-charts-laptop.png"),
        &shot,
    )
    .unwrap();

    // A 390 px phone: nothing sticks out of the page, and each table scrolls sideways to
    // show its last column.
    let mut phone = Browser::start(390, 844).await;
    phone.navigate(&tg.admin_url("/ui")).await;
    sign_in(&mut phone).await;
    phone
        .wait_true(
            "the backend tables",
            r#"document.querySelectorAll('[data-pool] table').length === 2"#,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        phone
            .eval("document.documentElement.scrollWidth <= window.innerWidth")
            .await,
        true,
        "the page is wider than the phone"
    );
    let reachable = phone
        .eval(
            r#"[...document.querySelectorAll('table')].every(t => {
                const box = t.closest('.scroll');
                if (!box) return false;
                box.scrollLeft = box.scrollWidth;
                const ths = t.querySelectorAll('thead th, tbody tr:first-child td');
                const last = ths[ths.length - 1];
                if (!last) return true;
                const r = last.getBoundingClientRect();
                return r.right <= window.innerWidth + 1 && r.width > 0;
            })"#,
        )
        .await;
    assert_eq!(reachable, true, "a column cannot be reached");
    let headers = phone
        .eval(r#"[...document.querySelector('[data-pool="blue"] thead tr').children].filter(th => th.getBoundingClientRect().width > 0).length"#)
        .await;
    // backend, address, state, health, weight, one per kind (http, sse, websocket, grpc),
    // oldest stream, connect fails.
    assert_eq!(headers, 11, "every backend column is shown");
    let grpc = phone
        .eval(r#"[...document.querySelector('[data-pool="blue"] thead tr').children].some(th => th.textContent === "grpc")"#)
        .await;
    assert_eq!(grpc, true, "a grpc column, from the kinds the server sends");
    phone
        .eval("document.querySelectorAll('.scroll').forEach(b => b.scrollLeft = 0); true")
        .await;
    let shot = phone.screenshot(390, 844).await;
    std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/ui-charts-phone.png"),
        &shot,
    )
    .unwrap();
}
