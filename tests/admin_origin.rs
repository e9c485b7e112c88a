//! A hostile web page cannot drive or read the admin API (shipped `conf/sidecar.yaml`:
//! loopback admin, no token). Headless Chromium opens pages of another origin that try an
//! auto-submitted form (form-encoded and `text/plain` JSON), `no-cors` fetches, a CORS fetch,
//! and a DNS-rebinding-style page whose own origin is `http://evil.test:ADMIN` (Chromium maps
//! `evil.test` to 127.0.0.1). The status is the same before and after; the status page on its
//! own origin still acts. The same requests from curl-like clients get 403/415.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{cdp::Browser, *};

fn sidecar(app: SocketAddr) -> String {
    sidecar_yaml(app, "")
}

/// What an attack could change, once nothing is in flight.
async fn state_of(tg: &Tidegate) -> serde_json::Value {
    control_state(&wait_status(tg, "nothing in flight", |s| s["in_flight"] == 0).await)
}

/// A server on 127.0.0.1 that answers every request with `page(path)` as HTML.
async fn evil_site(page: impl Fn(&str) -> String + Send + Sync + 'static) -> SocketAddr {
    use tokio::io::AsyncWriteExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let page = std::sync::Arc::new(page);
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_request(&mut c, &mut buf).await {
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let body = page(&path);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if c.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn attack_pages(admin: u16) -> impl Fn(&str) -> String {
    let a = format!("http://127.0.0.1:{admin}");
    move |path| match path {
        "/form" => format!(
            r#"<form id=f method=POST action="{a}/api/v1/maintenance"><input name="x" value="1"></form>
               <script>document.getElementById('f').submit()</script>"#
        ),
        // The classic JSON CSRF: a text/plain form whose body is valid JSON.
        "/form-json" => format!(
            r#"<form id=f method=POST enctype="text/plain" action="{a}/api/v1/routes/app/split">
               <input name='{{"split":{{"app":0}},"x":"' value='"}}'></form>
               <script>document.getElementById('f').submit()</script>"#
        ),
        _ => "<p>an innocent page</p>".to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_other_origins_change_and_read_nothing() {
    let app = TestBackend::start("app").await;
    let tg = Tidegate::start(&sidecar(app.addr)).await;
    let admin = tg.admin.port();
    let evil = evil_site(attack_pages(admin)).await;
    let before = state_of(&tg).await;
    assert_eq!(before["maintenance"]["maintenance"], false, "{before}");

    let mut b = Browser::start_with(
        1024,
        768,
        &["--host-resolver-rules=MAP evil.test 127.0.0.1"],
    )
    .await;
    // 1. Auto-submitted forms: form-encoded, and text/plain carrying JSON.
    for page in ["/form", "/form-json"] {
        b.navigate(&format!("http://evil.test:{}{page}", evil.port()))
            .await;
        b.wait_true(
            &format!("{page}: the form's answer from the admin listener"),
            &format!("location.port === '{admin}' && document.readyState === 'complete'"),
            Duration::from_secs(10),
        )
        .await;
        let text = b.eval("document.body.innerText").await;
        assert!(
            text.as_str().unwrap_or("").contains("\"status\":403")
                || text.as_str().unwrap_or("").contains("\"status\":415"),
            "{page}: {text}"
        );
        assert_eq!(state_of(&tg).await, before, "{page} changed state");
    }

    // 2. fetch from a page of another origin: no-cors with safelisted types, and CORS.
    b.navigate(&format!("http://evil.test:{}/", evil.port()))
        .await;
    b.wait_true(
        "the page",
        "document.readyState === 'complete'",
        Duration::from_secs(10),
    )
    .await;
    let a = format!("http://127.0.0.1:{admin}");
    let js = format!(
        r#"(async () => {{
          const a = {a:?}, out = [];
          const tries = [
            ['/api/v1/routes/app/split', {{method: 'POST', mode: 'no-cors',
              headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: '{{"split":{{"app":0}}}}'}}],
            ['/api/v1/pools/app/drain', {{method: 'POST', mode: 'no-cors',
              headers: {{'Content-Type': 'text/plain'}}, body: '{{}}'}}],
            ['/api/v1/maintenance', {{method: 'POST', mode: 'no-cors'}}],
            ['/api/v1/config/reload', {{method: 'POST', mode: 'no-cors'}}],
            ['/api/v1/maintenance', {{method: 'POST', headers: {{'Content-Type': 'application/json'}}, body: '{{}}'}}],
            ['/api/v1/status', {{}}],
          ];
          for (const [p, o] of tries) {{
            try {{ const r = await fetch(a + p, o); out.push(r.type + ':' + r.status + ':' + (r.type === 'opaque' ? '' : await r.text())); }}
            catch (e) {{ out.push('error:' + e.name); }}
          }}
          return out;
        }})()"#
    );
    let out = b.eval(&js).await;
    for r in out.as_array().unwrap() {
        let r = r.as_str().unwrap();
        // Opaque (no-cors) answers cannot be read; CORS ones fail: either way no status text.
        assert!(
            r.starts_with("opaque:0:") || r.starts_with("error:"),
            "a cross-origin fetch was readable: {r}"
        );
    }
    assert_eq!(state_of(&tg).await, before, "fetches changed state");

    // 3. DNS rebinding: a page whose own origin is evil.test:ADMIN, so the browser lets it
    // read and send JSON "same-origin".
    b.navigate(&format!("http://evil.test:{admin}/ui")).await;
    b.wait_true(
        "the rebound page",
        "document.readyState === 'complete'",
        Duration::from_secs(10),
    )
    .await;
    let js = r#"(async () => {
        const out = [];
        const tries = [
          ['/api/v1/status', {}],
          ['/metrics', {}],
          ['/api/v1/maintenance', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}],
          ['/api/v1/pools/app/backends', {method: 'PUT', headers: {'Content-Type': 'application/json'},
            body: '[{"address":"203.0.113.9:80"}]'}],
          ['/api/v1/pools/app/drain', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}],
        ];
        for (const [p, o] of tries) {
          try { const r = await fetch(p, o); out.push(r.status + ':' + (await r.text())); }
          catch (e) { out.push('error:' + e.name); }
        }
        return out;
      })()"#;
    let out = b.eval(js).await;
    for r in out.as_array().unwrap() {
        let r = r.as_str().unwrap();
        assert!(r.starts_with("403:"), "a rebound request was answered: {r}");
        assert!(!r.contains("\"pools\"") && !r.contains("tidegate_"), "{r}");
    }
    assert_eq!(state_of(&tg).await, before, "rebinding changed state");

    // 4. The status page on its own origin still works, and acts.
    b.navigate(&tg.admin_url("/ui")).await;
    b.wait_true(
        "the page live",
        "document.getElementById('conn').dataset.state === 'live'",
        Duration::from_secs(10),
    )
    .await;
    let r = b
        .eval(
            "fetch('/api/v1/maintenance', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'}).then(r => r.status)",
        )
        .await;
    assert_eq!(r, 200);
    let s = state_of(&tg).await;
    assert_eq!(s["maintenance"]["maintenance"], true, "{s}");
    // The page's own bodiless actions (maintenance off, undrain, back to the file's split)
    // send the JSON type too: through the page's `call`, as its buttons do.
    b.eval("call('DELETE', '/api/v1/maintenance').then(() => true)")
        .await;
    let s = state_of(&tg).await;
    assert_eq!(s["maintenance"]["maintenance"], false, "{s}");
    let r = post(&tg.admin_url("/api/v1/pools/app/drain"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 202, "{}", r.body);
    b.eval("call('POST', '/api/v1/pools/app/undrain').then(() => true)")
        .await;
    let s = state_of(&tg).await;
    assert_eq!(s["pools"]["app"]["state"], "active", "{s}");
    let notice = b
        .eval("document.getElementById('notice').textContent")
        .await;
    assert!(!notice.as_str().unwrap_or("").contains("415"), "{notice}");
}

/// Method, headers, wanted status.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], u16);

/// The same attacks without a browser, by their headers (what the browser sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_headers_from_elsewhere_are_refused() {
    let app = TestBackend::start("app").await;
    let tg = Tidegate::start(&sidecar(app.addr)).await;
    let before = state_of(&tg).await;
    let c = client();
    let url = tg.admin_url("/api/v1/maintenance");
    let host = format!("evil.example:{}", tg.admin.port());
    let cases: &[Case] = &[
        // The issue's reproduction: a form POST from another site.
        (
            "POST",
            &[
                ("origin", "http://evil.example"),
                ("sec-fetch-site", "cross-site"),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            403,
        ),
        // Same, from an old browser that sends no Sec-Fetch-*: the content type alone.
        (
            "POST",
            &[("content-type", "application/x-www-form-urlencoded")],
            415,
        ),
        ("POST", &[("content-type", "text/plain")], 415),
        ("POST", &[], 415),
        ("DELETE", &[], 415),
        // Another port on localhost is another origin.
        (
            "POST",
            &[
                ("origin", "http://localhost:3000"),
                ("sec-fetch-site", "same-site"),
                ("content-type", "application/json"),
            ],
            403,
        ),
        (
            "POST",
            &[("origin", "null"), ("content-type", "application/json")],
            403,
        ),
        // DNS rebinding: the browser sends the attacker's name as Host.
        (
            "POST",
            &[("host", &host), ("content-type", "application/json")],
            403,
        ),
        ("GET", &[("host", &host)], 403),
    ];
    for (method, headers, want) in cases {
        for path in ["/api/v1/maintenance", "/api/v1/status"] {
            if *method != "GET" && path.ends_with("status") {
                continue;
            }
            let u = tg.admin_url(path);
            let r = send_exact(&c, method, &u, headers, "").await.unwrap();
            // A refusal comes before routing (GET is not a route on maintenance).
            assert_eq!(r.status, *want, "{method} {path} {headers:?}: {}", r.body);
        }
    }
    for path in ["/metrics", "/health", "/ui"] {
        let r = send_exact(&c, "GET", &tg.admin_url(path), &[("host", &host)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{path} under a rebound Host");
    }
    // Probes answer whatever the Host (they say one bit, and load balancers send any).
    for path in ["/healthz", "/readyz"] {
        let r = send_exact(&c, "GET", &tg.admin_url(path), &[("host", &host)], "")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(state_of(&tg).await, before, "refused calls changed state");
    // curl -H 'Content-Type: application/json' and the CLI keep working.
    let r = send_exact(
        &c,
        "POST",
        &url,
        &[("content-type", "application/json")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let out = std::process::Command::new(binary())
        .args(["maintenance", "off", "--admin", &tg.admin_url("")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(state_of(&tg).await["maintenance"]["maintenance"], false);
    // A name listed in admin.allowed_hosts is trusted.
    let listed =
        sidecar(app.addr).variant("admin:\n", "admin:\n  allowed_hosts: [tidegate.internal]\n");
    assert_ne!(listed, sidecar(app.addr), "the admin key was found");
    let tg2 = Tidegate::start(&listed).await;
    let named = format!("tidegate.internal:{}", tg2.admin.port());
    let r = send_exact(
        &c,
        "GET",
        &tg2.admin_url("/api/v1/status"),
        &[("host", &named)],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

/// With a token, every path under /api/ asks for it before routing says anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_api_paths_need_the_token_too() {
    let app = TestBackend::start("app").await;
    let yaml = sidecar(app.addr).variant("admin:\n", "admin:\n  token_env: TG_TEST_TOKEN\n");
    let tg = Tidegate::spawn(&yaml, &[("TG_TEST_TOKEN", "t0ken")]);
    tg.wait_ready().await;
    let c = client();
    for path in [
        "/api/v1/nonexistent",
        "/api/v1/",
        "/api/v1",
        "/api",
        "/api/v2/x",
    ] {
        for method in ["GET", "POST"] {
            let r = send_exact(&c, method, &tg.admin_url(path), &[], "")
                .await
                .unwrap();
            assert_eq!(r.status, 401, "{method} {path}: {}", r.body);
        }
        let r = send_exact(
            &c,
            "GET",
            &tg.admin_url(path),
            &[("authorization", "Bearer t0ken")],
            "",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 404, "{path} with the token");
    }
}

async fn generation(tg: &Tidegate) -> u64 {
    let r = send_exact(
        &client(),
        "GET",
        &tg.admin_url("/api/v1/status"),
        &[("authorization", "Bearer t0ken")],
        "",
    )
    .await
    .unwrap();
    r.json()["generation"].as_u64().expect("generation")
}

/// A reload cannot take the token away from an admin listener bound off loopback, even when
/// the new file names a loopback address (the listener keeps its start address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_drop_the_token_of_a_listener_bound_off_loopback() {
    let app = TestBackend::start("app").await;
    let port = free_port();
    let with_token = sidecar(app.addr).variant(
        "admin:\n  address: {admin}",
        &format!("admin:\n  address: 0.0.0.0:{port}\n  token_env: TG_TEST_TOKEN"),
    );
    assert!(
        with_token.contains("0.0.0.0:"),
        "the admin address was found"
    );
    let mut tg = Tidegate::spawn(&with_token, &[("TG_TEST_TOKEN", "t0ken")]);
    tg.admin = format!("127.0.0.1:{port}").parse().unwrap();
    tg.wait_ready().await;
    let gen = generation(&tg).await;
    // The file now says loopback and no token.
    tg.rewrite_config(&sidecar(app.addr).variant("{admin}", &format!("127.0.0.1:{port}")));
    let c = client();
    let auth = [("authorization", "Bearer t0ken")];
    let r = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/config/reload"),
        &auth,
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.contains("cannot remove its token"), "{}", r.body);
    assert_eq!(generation(&tg).await, gen);
    let r = send_exact(&c, "GET", &tg.admin_url("/api/v1/status"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "the token is still required");
}
