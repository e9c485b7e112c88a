//! Node maintenance: `tidegate drain --node HOST` drains the backend of every pool that
//! lives on one host (here 127.0.0.2; the other backends live on 127.0.0.1) and nothing
//! else; soft waits for its streams, hard ends them politely at once (also after a soft
//! one); `undrain --node` brings the host back; an unknown host is an error.

mod common;

use std::time::Duration;

use common::*;

const POOLS: [&str; 3] = ["web", "api", "jobs"];

fn yaml(on_node: &[TestBackend], others: &[TestBackend]) -> String {
    let mut routes = String::new();
    let mut pools = String::new();
    for (i, p) in POOLS.iter().enumerate() {
        routes.push_str(&format!(
            "  - name: {p}\n    match: {{ host: {p}.test }}\n    split: {{ {p}: 100 }}\n"
        ));
        pools.push_str(&format!(
            "  {p}:\n    backends:\n      - {{ address: \"{}\", name: n2 }}\n      - {{ address: \"{}\", name: n1 }}\n",
            on_node[i].addr, others[i].addr
        ));
    }
    format!(
        "listeners: [{{ name: public, address: \"{{listen}}\" }}]\nadmin: {{ address: \"{{admin}}\" }}\nroutes:\n{routes}pools:\n{pools}"
    )
}

async fn states(tg: &Tidegate) -> Vec<(String, String, String)> {
    let st = get(&tg.admin_url("/api/v1/status")).await.unwrap().json();
    let mut out = Vec::new();
    for p in POOLS {
        for b in st["pools"][p]["backends"].as_array().unwrap() {
            out.push((
                p.to_string(),
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn cli(tg: &Tidegate, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(["--admin".to_string(), tg.admin_url("")]);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_drain_drains_that_host_in_every_pool_and_nothing_else() {
    let mut on_node = Vec::new();
    let mut others = Vec::new();
    for p in POOLS {
        on_node.push(TestBackend::start_at(&format!("{p}-n2"), "127.0.0.2").await);
        others.push(TestBackend::start_at(&format!("{p}-n1"), "127.0.0.1").await);
    }
    let tg = Tidegate::start(&yaml(&on_node, &others)).await;
    // An event stream on web's backend on the node (the pool alternates: open two).
    let url = tg.url("/events?interval_ms=100");
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut s = Sse::open_with(&url, &[("host", "web.test")]).await;
        let first = s.next_data(Duration::from_secs(5)).await.unwrap().unwrap();
        streams.push((first.starts_with("web-n2"), s));
    }
    assert!(streams.iter().any(|(n2, _)| *n2), "no stream on web-n2");

    // Soft: the node's three backends drain, the others stay; the stream keeps it open.
    let (code, out) = run_cli(cli(&tg, &["drain", "--node", "127.0.0.2"])).await;
    assert_eq!(code, 0, "{out}");
    for (p, b, state) in states(&tg).await {
        let want = match (p.as_str(), b.as_str()) {
            (_, "n1") => "active",
            ("web", _) => "draining",
            _ => "drained",
        };
        assert_eq!(state, want, "{p}/{b}");
    }
    let c = client();
    for p in POOLS {
        let host = format!("{p}.test");
        for _ in 0..6 {
            let r = send(&c, "GET", &tg.url("/"), &[("host", host.as_str())], "")
                .await
                .unwrap();
            assert_eq!(r.body.trim(), format!("hello from {p}-n1"), "{p}");
        }
    }
    let (code, out) = run_cli(cli(
        &tg,
        &["drain", "--node", "127.0.0.2", "--wait", "--timeout", "1s"],
    ))
    .await;
    assert_eq!(code, 1, "a soft drain waits for the stream:\n{out}");

    // Hard, after the soft one: the stream on the node ends now, cleanly; the other stays.
    let (code, out) = run_cli(cli(
        &tg,
        &[
            "drain",
            "--node",
            "127.0.0.2",
            "--hard",
            "--wait",
            "--timeout",
            "20s",
        ],
    ))
    .await;
    assert_eq!(code, 0, "{out}");
    for p in POOLS {
        assert!(out.contains(&format!("127.0.0.2 {p}/n2: drained")), "{out}");
    }
    for (n2, s) in &mut streams {
        if *n2 {
            let mut ended = false;
            for _ in 0..50 {
                match s.next_data(Duration::from_secs(2)).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(e) => panic!("stream broken instead of ended: {e}"),
                }
            }
            assert!(ended, "the node's stream was not ended");
        } else {
            for _ in 0..3 {
                let d = s.next_data(Duration::from_secs(5)).await.unwrap();
                assert!(
                    d.is_some_and(|d| d.starts_with("web-n1")),
                    "the other stream ended"
                );
            }
        }
    }
    let node = get(&tg.admin_url("/api/v1/nodes/127.0.0.2/drain"))
        .await
        .unwrap()
        .json();
    assert_eq!(node["drained"], true, "{node}");
    assert_eq!(node["backends"].as_array().unwrap().len(), 3, "{node}");

    // Back: every pool reaches the node again.
    let (code, out) = run_cli(cli(&tg, &["undrain", "--node", "127.0.0.2"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(states(&tg).await.iter().all(|(_, _, s)| s == "active"));
    for p in POOLS {
        let mut seen = std::collections::HashSet::new();
        let host = format!("{p}.test");
        for _ in 0..6 {
            let r = send(&c, "GET", &tg.url("/"), &[("host", host.as_str())], "")
                .await
                .unwrap();
            seen.insert(r.body.trim().to_string());
        }
        assert!(seen.contains(&format!("hello from {p}-n2")), "{seen:?}");
    }

    // A host with no backend: 404 from the API, exit 2 from the CLI.
    let r = post(&tg.admin_url("/api/v1/nodes/10.9.9.9/drain"), &[], "{}")
        .await
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(r.json()["error"], "unknown_node");
    let (code, out) = run_cli(cli(&tg, &["drain", "--node", "10.9.9.9"])).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no backend of any pool is on node"), "{out}");
    // A target and --node together, or --hard without --node: usage errors, nothing done.
    for args in [
        &["drain", "web", "--node", "127.0.0.2"][..],
        &["drain", "web", "--hard"][..],
    ] {
        let (code, out) = run_cli(cli(&tg, args)).await;
        assert_eq!(code, 2, "{args:?}: {out}");
    }
    let web = get(&tg.admin_url("/api/v1/pools/web/drain"))
        .await
        .unwrap()
        .json();
    assert_eq!(web["state"], "active", "{web}");
}
