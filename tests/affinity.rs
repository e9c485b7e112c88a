//! Pool affinity through a ramp (cookie, header, client address), drains mid-ramp, streams
//! reconnecting by affinity, and what status, metrics and the access log say about picks.

mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::*;

/// Blue and green behind route `app` with `affinity`. Plain successes are logged one in a
/// thousand (the ramps send 110,000 requests).
fn yaml(blue: SocketAddr, green: SocketAddr, affinity: &str) -> String {
    yaml_logged(blue, green, affinity, 0.001)
}

fn yaml_logged(blue: SocketAddr, green: SocketAddr, affinity: &str, sample: f64) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
access_log: {{ sample: {sample} }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
    affinity: {affinity}
pools:
  blue:
    backends: [{{ address: "{blue}", name: blue }}]
    drain: {{ requests_deadline: 0, streams_deadline: 300ms }}
  green:
    backends: [{{ address: "{green}", name: green }}]
    drain: {{ requests_deadline: 0, streams_deadline: 300ms }}
"#
    )
}

async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .expect("admin call")
}

async fn set_split(tg: &Tidegate, blue: u32, green: u32) {
    let body = format!(r#"{{"split":{{"blue":{blue},"green":{green}}}}}"#);
    let r = api(tg, "POST", "/api/v1/routes/app/split", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Which backend each key reached: `headers(i)` are the request's headers for key `i`, sent
/// from 16 keep-alive clients at once.
async fn sweep(url: &str, keys: usize, headers: fn(usize) -> (String, String)) -> Vec<String> {
    let mut tasks = Vec::new();
    let workers = 16;
    for w in 0..workers {
        let url = url.to_string();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut out = Vec::new();
            for i in (w..keys).step_by(workers) {
                let (k, v) = headers(i);
                let r = send(&c, "GET", &url, &[(&k, &v)], "")
                    .await
                    .expect("request");
                assert_eq!(r.status, 200, "{}", r.body);
                out.push((i, r.backend().expect("x-backend")));
            }
            out
        }));
    }
    let mut seen = vec![String::new(); keys];
    for t in tasks {
        for (i, b) in t.await.expect("worker") {
            seen[i] = b;
        }
    }
    seen
}

/// Ten steps blue → green (what a ramp does, one split per step, so each step is measured
/// on all keys): every key changes pool at most once and never back, and the share on green
/// is within `tolerance` points of its weight at every step.
fn assert_ramp(steps: &[(u32, Vec<String>)], tolerance: f64) {
    let keys = steps[0].1.len();
    let mut moved = vec![0; keys];
    for w in steps.windows(2) {
        for (i, m) in moved.iter_mut().enumerate() {
            if w[0].1[i] != w[1].1[i] {
                assert_eq!(
                    w[1].1[i], "green",
                    "key {i} moved back to blue at green={}",
                    w[1].0
                );
                *m += 1;
            }
        }
    }
    assert!(moved.iter().all(|m| *m <= 1));
    for (green, seen) in steps {
        let on = seen.iter().filter(|b| *b == "green").count() as f64 / keys as f64 * 100.0;
        assert!(
            (on - f64::from(*green)).abs() <= tolerance,
            "green={green}: {on:.2}% of keys on green"
        );
    }
}

async fn ramp_with(key_header: fn(usize) -> (String, String), affinity: &str) {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(blue.addr, green.addr, affinity)).await;
    let mut steps = Vec::new();
    for step in 0..=10u32 {
        let g = step * 10;
        set_split(&tg, 100 - g, g).await;
        steps.push((g, sweep(&tg.url("/"), 10_000, key_header).await));
    }
    assert_ramp(&steps, 2.0);
    // Once every request has ended, from one snapshot: all were picked by affinity.
    let picks = wait_picking(&tg, |p| p["affinity"] == 110_000).await["picks"].clone();
    assert_eq!(picks["split"], 0, "{picks}");
    assert_eq!(picks["redealt"], 0, "{picks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_cookies_through_a_ten_step_ramp_move_once_and_keep_the_shares() {
    ramp_with(
        |i| {
            (
                "cookie".into(),
                format!("other=1; tidegate_affinity=user-{i}"),
            )
        },
        "{ key: cookie }",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_header_keys_through_a_ten_step_ramp_move_once_and_keep_the_shares() {
    ramp_with(
        |i| ("x-user".into(), format!("tenant-{i}")),
        "{ key: header, header: X-User }",
    )
    .await;
}

/// A GET from source address `src` on a fresh connection: the backend that answered.
async fn from_address(url: &str, src: std::net::IpAddr) -> String {
    let uri: http::Uri = url.parse().expect("url");
    let addr: SocketAddr = uri
        .authority()
        .expect("authority")
        .as_str()
        .parse()
        .expect("addr");
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(src, 0)).expect("bind source");
    let mut conn = sock.connect(addr).await.expect("connect");
    let req = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("x-backend: "))
        .map(|b| b.trim().to_string())
        .expect("x-backend")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_addresses_through_a_ten_step_ramp_move_once_and_keep_the_shares() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(blue.addr, green.addr, "{ key: client_ip }")).await;
    // 2,000 source addresses of 127/8 (all loopback on Linux).
    let sources: Arc<Vec<std::net::IpAddr>> = Arc::new(
        (0..2_000u32)
            .map(|i| std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8).into())
            .collect(),
    );
    let mut steps = Vec::new();
    for step in 0..=10u32 {
        let g = step * 10;
        set_split(&tg, 100 - g, g).await;
        let mut tasks = Vec::new();
        for w in 0..16 {
            let (url, sources) = (tg.url("/"), sources.clone());
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in (w..sources.len()).step_by(16) {
                    out.push((i, from_address(&url, sources[i]).await));
                }
                out
            }));
        }
        let mut seen = vec![String::new(); sources.len()];
        for t in tasks {
            for (i, b) in t.await.expect("worker") {
                seen[i] = b;
            }
        }
        steps.push((g, seen));
    }
    // 2,000 keys: the shares are within 4 points (about 2.5 standard deviations).
    assert_ramp(&steps, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_mid_ramp_redeals_blues_keys_and_the_reversed_ramp_brings_them_back() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(blue.addr, green.addr, "{ key: cookie }")).await;
    let key = |i: usize| ("cookie".to_string(), format!("tidegate_affinity=k{i}"));
    set_split(&tg, 50, 50).await;
    let mid = sweep(&tg.url("/"), 4_000, key).await;
    let r = api(&tg, "POST", "/api/v1/pools/blue/drain", "").await;
    assert!(r.status < 300, "{}", r.body);
    let before = blue.app.hits();
    let drained = sweep(&tg.url("/"), 4_000, key).await;
    assert!(
        drained.iter().all(|b| b == "green"),
        "a sticky request reached blue"
    );
    assert_eq!(
        blue.app.hits(),
        before,
        "blue got a request after its drain began"
    );
    let blues = mid.iter().filter(|b| *b == "blue").count() as u64;
    let picks = wait_picking(&tg, |p| {
        p["affinity"].as_u64().unwrap_or(0) + p["redealt"].as_u64().unwrap_or(0) == 8_000
    })
    .await["picks"]
        .clone();
    assert_eq!(picks["redealt"], blues, "{picks}");
    // Undrain, then reverse the ramp: keys return as the weights say, each once.
    api(&tg, "POST", "/api/v1/pools/blue/undrain", "").await;
    let again = sweep(&tg.url("/"), 4_000, key).await;
    assert_eq!(
        again, mid,
        "after the undrain every key is back where it was"
    );
    let mut steps = vec![(50, again)];
    for g in [40, 30, 20, 10, 0] {
        set_split(&tg, 100 - g, g).await;
        steps.push((g, sweep(&tg.url("/"), 4_000, key).await));
    }
    for w in steps.windows(2) {
        for i in 0..w[0].1.len() {
            if w[0].1[i] != w[1].1[i] {
                assert_eq!(w[1].1[i], "blue", "key {i} moved against the change");
            }
        }
    }
    for (g, seen) in &steps {
        let on = seen.iter().filter(|b| *b == "green").count() as f64 / 40.0;
        assert!((on - f64::from(*g)).abs() <= 3.0, "green={g}: {on:.1}%");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_client_gets_a_cookie_and_keeps_its_pool_and_a_drained_stream_reconnects_by_it() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml_logged(
        blue.addr,
        green.addr,
        "{ key: cookie, max_age: 2h }",
        1.0,
    ))
    .await;
    set_split(&tg, 50, 50).await;
    let c = client();
    let r = send(&c, "GET", &tg.url("/"), &[], "")
        .await
        .expect("request");
    let set = r
        .headers
        .get("set-cookie")
        .expect("set-cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(set.starts_with("tidegate_affinity="), "{set}");
    for part in ["Path=/", "Max-Age=7200", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(part), "{part} missing: {set}");
    }
    assert!(!set.contains("Secure"), "a plain listener: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let first = r.backend().expect("x-backend");
    for _ in 0..50 {
        let r = send(&c, "GET", &tg.url("/"), &[("cookie", &cookie)], "")
            .await
            .unwrap();
        assert_eq!(r.backend().as_deref(), Some(first.as_str()));
        assert!(
            r.headers.get("set-cookie").is_none(),
            "the cookie is set once"
        );
    }
    let line = tg
        .access_line("a request with the cookie", |l| l["pick"] == "affinity")
        .await;
    assert_eq!(line["pool"], first.as_str());

    // A stream on the key's pool, that pool drained: the stream ends politely and its
    // reconnect (same cookie) lands on the other pool, every time.
    let other = if first == "blue" { "green" } else { "blue" };
    let mut sse = Sse::open_with(&tg.url("/events"), &[("cookie", &cookie)]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.headers["x-backend"], first.as_str());
    let r = api(&tg, "POST", &format!("/api/v1/pools/{first}/drain"), "").await;
    assert!(r.status < 300, "{}", r.body);
    let end = async {
        loop {
            match sse.next_data(Duration::from_secs(10)).await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    };
    assert!(
        matches!(end.await, Ok(None)),
        "the stream ended cleanly at the deadline"
    );
    for _ in 0..3 {
        let again = Sse::open_with(&tg.url("/events"), &[("cookie", &cookie)]).await;
        assert_eq!(again.headers["x-backend"], other);
    }
    // The three reconnects are counted when they end (they were dropped above).
    let url = tg.admin_url("/metrics");
    wait_for(
        "three re-dealt picks in /metrics",
        Duration::from_secs(10),
        || {
            let url = url.clone();
            async move {
                let m = get(&url).await.ok()?.body;
                m.lines()
                    .find(|l| {
                        l.starts_with("tidegate_route_picks_total")
                            && l.contains(r#"how="redealt""#)
                            && l.contains(r#"route="app""#)
                    })
                    .filter(|l| l.ends_with(" 3"))
                    .map(|_| ())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_each_routes_affinity_mode() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(
        blue.addr,
        green.addr,
        "{ key: header, header: X-User, scope: backend }",
    ))
    .await;
    let s = api(&tg, "GET", "/api/v1/status", "").await.json();
    let p = &s["routes"][0]["picking"];
    assert_eq!(p["affinity"], "header");
    assert_eq!(p["key_name"], "x-user");
    assert_eq!(p["sticky_backends"], true);
    let mut b = cdp::Browser::start(1200, 900).await;
    b.navigate(&tg.admin_url("/ui")).await;
    b.wait_true(
        "the route's affinity row",
        r#"(() => { const r = document.querySelector('[data-route="app"] [data-affinity="header"]');
                    return !!r && r.textContent.includes('header x-user, sticky backends'); })()"#,
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_of_a_drained_pool_reconnect_to_their_keys_next_pool_every_time() {
    let (blue, green, red) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
        TestBackend::start("red").await,
    );
    let pool = |name: &str, addr: SocketAddr| {
        format!("  {name}:\n    backends: [{{ address: \"{addr}\", name: {name} }}]\n    drain: {{ requests_deadline: 0, streams_deadline: 300ms }}\n")
    };
    let yaml = format!(
        "listeners: [{{ name: public, address: \"{{listen}}\" }}]\nadmin: {{ address: \"{{admin}}\" }}\nroutes:\n  - name: app\n    split: {{ blue: 1, green: 1, red: 1 }}\n    affinity: {{ key: cookie }}\npools:\n{}{}{}",
        pool("blue", blue.addr),
        pool("green", green.addr),
        pool("red", red.addr)
    );
    let tg = Tidegate::start(&yaml).await;
    let c = client();
    let mut on_blue = Vec::new();
    for i in 0..200 {
        let cookie = format!("tidegate_affinity=s{i}");
        let r = send(&c, "GET", &tg.url("/"), &[("cookie", &cookie)], "")
            .await
            .unwrap();
        if r.backend().as_deref() == Some("blue") {
            on_blue.push(cookie);
        }
    }
    assert!(on_blue.len() >= 40, "{} of 200 keys on blue", on_blue.len());
    on_blue.truncate(12);
    let mut streams = Vec::new();
    for cookie in &on_blue {
        let s = Sse::open_with(&tg.url("/events"), &[("cookie", cookie)]).await;
        assert_eq!(s.headers["x-backend"], "blue");
        streams.push(s);
    }
    let r = api(&tg, "POST", "/api/v1/pools/blue/drain", "").await;
    assert!(r.status < 300, "{}", r.body);
    for s in &mut streams {
        loop {
            match s.next_data(Duration::from_secs(10)).await {
                Ok(Some(_)) => continue,
                other => {
                    assert!(matches!(other, Ok(None)), "ended cleanly: {other:?}");
                    break;
                }
            }
        }
    }
    // Each key's reconnects land on one pool (its next-best, the same every time), and the
    // keys spread over both remaining pools: dealt by affinity, not at random.
    let mut landed = Vec::new();
    for cookie in &on_blue {
        let first = Sse::open_with(&tg.url("/events"), &[("cookie", cookie)]).await;
        let to = first.headers["x-backend"].to_str().unwrap().to_string();
        assert_ne!(to, "blue");
        for _ in 0..3 {
            let again = Sse::open_with(&tg.url("/events"), &[("cookie", cookie)]).await;
            assert_eq!(again.headers["x-backend"], to.as_str(), "{cookie}");
        }
        landed.push(to);
    }
    assert!(
        landed.iter().any(|p| p == "green") && landed.iter().any(|p| p == "red"),
        "{landed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_listener_sets_a_secure_cookie() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let yaml = yaml(blue.addr, green.addr, "{ key: cookie }").variant(
        r#"listeners: [{ name: public, address: "{listen}" }]"#,
        &format!(
            r#"listeners: [{{ name: public, address: "{{listen}}", tls: {{ cert: "{}", key: "{}" }} }}]"#,
            cert.display(),
            key.display()
        ),
    );
    let tg = Tidegate::start(&yaml).await;
    let url = format!("https://localhost:{}/", tg.listen.port());
    let out = std::process::Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(&cert)
        .arg(&url)
        .output()
        .expect("run curl");
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    let set = head
        .lines()
        .find(|l| l.starts_with("set-cookie: tidegate_affinity="))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(set.contains("; secure"), "{set}");
    assert!(
        set.contains("httponly") && set.contains("samesite=lax"),
        "{set}"
    );
}

/// The backend a WebSocket upgrade with `cookie` reached (from the 101's headers).
async fn ws_backend(url: &str, cookie: &str) -> String {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().expect("ws request");
    req.headers_mut()
        .insert("cookie", cookie.parse().expect("cookie value"));
    let (_ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("ws connect timed out")
    .expect("ws connect failed");
    assert_eq!(resp.status().as_u16(), 101);
    resp.headers()["x-backend"].to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrades_land_by_affinity_and_reconnect_to_the_other_pool_after_a_drain() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&yaml(blue.addr, green.addr, "{ key: cookie }")).await;
    set_split(&tg, 50, 50).await;
    let ws_url = format!("ws://{}/ws", tg.listen);
    let c = client();
    let mut by_key = Vec::new();
    for i in 0..16 {
        let cookie = format!("tidegate_affinity=ws{i}");
        let r = send(&c, "GET", &tg.url("/"), &[("cookie", &cookie)], "")
            .await
            .unwrap();
        let pool = r.backend().expect("x-backend");
        for _ in 0..2 {
            assert_eq!(ws_backend(&ws_url, &cookie).await, pool, "{cookie}");
        }
        by_key.push((cookie, pool));
    }
    assert!(by_key.iter().any(|(_, p)| p == "blue") && by_key.iter().any(|(_, p)| p == "green"));
    let r = api(&tg, "POST", "/api/v1/pools/blue/drain", "").await;
    assert!(r.status < 300, "{}", r.body);
    for (cookie, pool) in &by_key {
        let now = ws_backend(&ws_url, cookie).await;
        assert_eq!(now, "green", "{cookie} was on {pool}");
    }
}
