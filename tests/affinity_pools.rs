//! Forced pools (a weight-0 green tried through the real proxy, its fallbacks, a deploy's
//! smoke test) and sticky backends inside a pool.

mod common;

use std::{collections::HashMap, net::SocketAddr};

use common::*;

fn forced_yaml(blue: SocketAddr, green: SocketAddr, fallback: &str) -> String {
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100, green: 0 }}
    force_pool: {{ header: X-Tidegate-Pool, pools: [green], fallback: {fallback} }}
pools:
  blue:
    backends: [{{ address: "{blue}", name: blue }}]
  green:
    backends: [{{ address: "{green}", name: green }}]
    drain: {{ requests_deadline: 0 }}
"#
    )
}

async fn api(tg: &Tidegate, method: &str, path: &str, body: &str) -> Resp {
    send(&client(), method, &tg.admin_url(path), &[], body)
        .await
        .expect("admin call")
}

async fn backend_for(tg: &Tidegate, headers: &[(&str, &str)]) -> Resp {
    send(&client(), "GET", &tg.url("/"), headers, "")
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_weight_zero_pool_is_reached_with_the_header_only_and_a_draining_one_falls_back() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&forced_yaml(blue.addr, green.addr, "split")).await;
    for _ in 0..20 {
        assert_eq!(
            backend_for(&tg, &[]).await.backend().as_deref(),
            Some("blue")
        );
        let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
        assert_eq!(r.backend().as_deref(), Some("green"));
    }
    // Values that are not an allowed pool are ignored: blue is listed nowhere, red exists
    // nowhere, and a near miss is no pool.
    for v in ["blue", "red", "green2", ""] {
        let r = backend_for(&tg, &[("x-tidegate-pool", v)]).await;
        assert_eq!(r.backend().as_deref(), Some("blue"), "value {v:?}");
    }
    assert_eq!(green.app.hits(), 20);
    // Draining, the forced pool falls back to the split (fallback: split).
    let r = api(&tg, "POST", "/api/v1/pools/green/drain", "").await;
    assert!(r.status < 300, "{}", r.body);
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!((r.status, r.backend().as_deref()), (200, Some("blue")));
    // Picks are counted when a request ends: read them once everything has ended.
    let p = wait_picking(&tg, |p| p["split"] == 25).await;
    assert_eq!(p["force_pool"]["pools"], serde_json::json!(["green"]));
    assert_eq!(p["force_pool"]["fallback"], "split");
    assert_eq!(p["picks"]["forced"], 20, "{p}");
    assert_eq!(p["picks"]["affinity"], 0, "{p}");
    // A split override that names only blue leaves green reachable by force.
    api(&tg, "POST", "/api/v1/pools/green/undrain", "").await;
    let r = api(
        &tg,
        "POST",
        "/api/v1/routes/app/split",
        r#"{"split":{"blue":100}}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(
        r.backend().as_deref(),
        Some("green"),
        "forced after the override"
    );
    assert_eq!(
        backend_for(&tg, &[]).await.backend().as_deref(),
        Some("blue")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refusing_route_answers_503_while_its_forced_pool_cannot_take_the_request() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&forced_yaml(blue.addr, green.addr, "refuse")).await;
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(r.backend().as_deref(), Some("green"));
    api(&tg, "POST", "/api/v1/pools/green/drain", "").await;
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"], "forced_pool_unavailable", "{}", r.body);
    assert!(r.json()["request_id"].is_string());
    // Without the header the split still serves. The refused request counts as forced.
    assert_eq!(
        backend_for(&tg, &[]).await.backend().as_deref(),
        Some("blue")
    );
    let p = wait_picking(&tg, |p| p["split"] == 1).await;
    assert_eq!(p["picks"]["forced"], 2, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cookie_can_force_the_pool_too() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let yaml = forced_yaml(blue.addr, green.addr, "split")
        .variant("header: X-Tidegate-Pool", "cookie: canary");
    let tg = Tidegate::start(&yaml).await;
    let r = backend_for(&tg, &[("cookie", "a=b; canary=green")]).await;
    assert_eq!(r.backend().as_deref(), Some("green"));
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(
        r.backend().as_deref(),
        Some("blue"),
        "the header is not the cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_or_a_client_list_keeps_strangers_from_forcing_a_pool() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let guarded = forced_yaml(blue.addr, green.addr, "split").replace(
        "fallback: split }",
        "fallback: split, secret_env: TG_FORCE_SECRET }",
    );
    let tg = Tidegate::spawn(&guarded, &[("TG_FORCE_SECRET", "let-me-see-green")]);
    tg.wait_ready().await;
    // The pool's name alone (what anyone can guess), or with a wrong secret: the split.
    for v in [
        "green",
        "green:guess",
        "green:let-me-see-greeN",
        "let-me-see-green",
    ] {
        let r = backend_for(&tg, &[("x-tidegate-pool", v)]).await;
        assert_eq!(r.backend().as_deref(), Some("blue"), "value {v:?}");
    }
    let r = backend_for(&tg, &[("x-tidegate-pool", "green:let-me-see-green")]).await;
    assert_eq!(r.backend().as_deref(), Some("green"));
    // The backend never sees the secret: the forcing header is not passed on.
    let seen = send(
        &client(),
        "GET",
        &tg.url("/headers"),
        &[("x-tidegate-pool", "green:let-me-see-green")],
        "",
    )
    .await
    .expect("headers");
    assert_eq!(seen.backend().as_deref(), Some("green"));
    assert!(!seen.body.contains("let-me-see-green"), "{}", seen.body);
    let status = api(&tg, "GET", "/api/v1/status", "").await.json();
    let shown = &status["routes"][0]["picking"]["force_pool"];
    assert_eq!(shown["secret"], true, "{shown}");
    assert!(
        !status.to_string().contains("let-me-see-green"),
        "the secret is shown"
    );
    assert!(
        !tg.logs().contains("let-me-see-green"),
        "the secret is logged"
    );
    drop(tg);
    // A client list this client is not on: its header is not read.
    let listed = forced_yaml(blue.addr, green.addr, "split").replace(
        "fallback: split }",
        "fallback: split, clients: [10.0.0.0/8, \"::1\"] }",
    );
    let tg = Tidegate::start(&listed).await;
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(r.backend().as_deref(), Some("blue"));
    let open = listed.replace("10.0.0.0/8", "127.0.0.0/8");
    tg.rewrite_config(&open);
    api(&tg, "POST", "/api/v1/config/reload", "").await;
    let r = backend_for(&tg, &[("x-tidegate-pool", "green")]).await;
    assert_eq!(r.backend().as_deref(), Some("green"));
    // A secret that is named but not there refuses the config (fail closed).
    let (code, out) = {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("t.yaml");
        let y = guarded
            .replace("{listen}", "127.0.0.1:1")
            .replace("{admin}", "127.0.0.1:2")
            .replace("TG_FORCE_SECRET", "TG_FORCE_SECRET_NOT_SET");
        std::fs::write(&f, y).expect("write");
        check(&f)
    };
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("force_pool.secret_env"), "{out}");
}

fn deploy_args(tg: &Tidegate, smoke: &str) -> Vec<String> {
    [
        "deploy",
        "app",
        "--to",
        "green",
        "--smoke",
        smoke,
        "--drain-timeout",
        "20s",
        "--admin",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([tg.admin_url("")])
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_runs_its_smoke_test_on_the_forced_pool_and_aborts_when_it_fails() {
    let blue = TestBackend::start("blue").await;
    let green = TestBackend::start("green").await;
    let tg = Tidegate::start(&forced_yaml(blue.addr, green.addr, "split")).await;
    // A smoke test that checks it really reached green through the proxy (plain bash, so
    // nothing more to install), and one that expects a pool the answer never names.
    let script = |expect: &str| {
        let path = tg.dir.path().join(format!("smoke-{expect}.sh"));
        let text = format!(
            "exec 3<>/dev/tcp/{}/{}\nprintf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n%s\\r\\nConnection: close\\r\\n\\r\\n' \"$TIDEGATE_FORCE_HEADER\" >&3\ntr -d '\\r' <&3 | grep -qix 'x-backend: {expect}'\n",
            tg.listen.ip(),
            tg.listen.port()
        );
        std::fs::write(&path, text).expect("write smoke script");
        format!("bash {}", path.display())
    };
    let (code, out) = run_cli(deploy_args(&tg, &script("purple"))).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("smoke test on pool green") && out.contains("nothing shifted"),
        "{out}"
    );
    let s = api(&tg, "GET", "/api/v1/routes/app/split", "").await.json();
    assert_eq!(s["split"]["green"], 0, "nothing shifted: {s}");
    assert_eq!(
        green.app.hits(),
        1,
        "the smoke test reached green through the proxy"
    );
    // A smoke command that passes without ever using the forced pool proves nothing.
    let (code, out) = run_cli(deploy_args(&tg, "true")).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no request reached pool green by force"),
        "{out}"
    );
    let (code, out) = run_cli(deploy_args(&tg, &script("green"))).await;
    assert_eq!(code, 0, "{out}");
    let s = api(&tg, "GET", "/api/v1/routes/app/split", "").await.json();
    assert_eq!(
        (s["split"]["green"].as_u64(), s["split"]["blue"].as_u64()),
        (Some(100), Some(0))
    );
    // A route that does not let the pool be forced: a clear usage error.
    let plain = TestBackend::start("x").await;
    let tg2 = Tidegate::start(&sidecar_yaml(plain.addr, "")).await;
    let args: Vec<String> = ["deploy", "app", "--to", "app", "--smoke", "true", "--admin"]
        .iter()
        .map(|s| s.to_string())
        .chain([tg2.admin_url("")])
        .collect();
    let (code, out) = run_cli(args).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("does not let pool app be forced"), "{out}");
}

fn sticky_yaml(addrs: &[SocketAddr]) -> String {
    let backends: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{{ address: \"{a}\", name: app-{i} }}"))
        .collect();
    format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ app: 1 }}
    affinity: {{ key: header, header: X-Session, scope: backend }}
pools:
  app:
    backends: [{}]
"#,
        backends.join(", ")
    )
}

/// Which backend each of `n` session keys reached.
async fn sessions(tg: &Tidegate, n: usize) -> Vec<String> {
    let c = client();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = send(
            &c,
            "GET",
            &tg.url("/"),
            &[("x-session", &format!("s{i}"))],
            "",
        )
        .await
        .expect("request");
        assert_eq!(r.status, 200, "{}", r.body);
        out.push(r.backend().expect("x-backend"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_backend_more_of_four_takes_about_a_fifth_of_the_keys_and_none_move_between_the_four() {
    let mut bs = Vec::new();
    for i in 0..5 {
        bs.push(TestBackend::start(&format!("app-{i}")).await);
    }
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let tg = Tidegate::start(&sticky_yaml(&addrs[..4])).await;
    let before = sessions(&tg, 2_000).await;
    let mut per: HashMap<&str, usize> = HashMap::new();
    for b in &before {
        *per.entry(b.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 4, "{per:?}");
    assert_eq!(
        sessions(&tg, 2_000).await,
        before,
        "the same key, the same backend"
    );
    // The fifth joins through the runtime members API.
    let members: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!(r#"{{"address":"{a}","name":"app-{i}"}}"#))
        .collect();
    let body = format!(r#"{{"backends":[{}]}}"#, members.join(","));
    let r = api(&tg, "PUT", "/api/v1/pools/app/backends", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let after = sessions(&tg, 2_000).await;
    let mut moved = 0;
    for (a, b) in before.iter().zip(&after) {
        if a != b {
            assert_eq!(b, "app-4", "a key moved between the old four");
            moved += 1;
        }
    }
    let share = moved as f64 / 2_000.0;
    assert!(
        (0.12..=0.28).contains(&share),
        "{share:.3} of the keys moved"
    );
    // A draining backend is walked past: nobody else's keys move.
    let r = api(&tg, "POST", "/api/v1/pools/app/backends/app-2/drain", "").await;
    assert!(r.status < 300, "{}", r.body);
    let drained = sessions(&tg, 2_000).await;
    for (a, b) in after.iter().zip(&drained) {
        assert_ne!(b, "app-2");
        if a != "app-2" {
            assert_eq!(a, b, "a key of another backend moved");
        }
    }
}
