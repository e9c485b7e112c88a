//! ACME for a fleet on the PostgreSQL `spool_store`: the CA may validate any proxy behind
//! the name (HTTP-01 tokens are shared), one proxy orders while the others wait for its
//! certificate (an advisory lock per set of names), and a proxy that starts later serves
//! the fleet's certificate without ordering. Peers' tokens are answered from memory: a flood
//! of made-up challenge paths costs no query, and a database that is gone changes nothing.

mod common;

use std::time::Duration;

use common::{acme::Pebble, postgres::Postgres, tls::*, *};

/// One proxy: plain and TLS listeners on the given ports, ACME for `names`.
fn yaml(
    plain: u16,
    tls: u16,
    p: &Pebble,
    names: &str,
    state: &std::path::Path,
    app: std::net::SocketAddr,
) -> String {
    format!(
        r#"listeners:
  - {{ name: plain, address: "127.0.0.1:{plain}" }}
  - name: secure
    address: "127.0.0.1:{tls}"
    tls:
      acme: {{ domains: [{names}], directory: "{dir}", ca_file: "{ca}", retry_min: 500ms, retry_max: 2s }}
admin: {{ address: "{{admin}}" }}
state_file: "{state}/state.json"
spool_store: {{ postgres_env: TIDEGATE_SPOOL_URL }}
routes:
  - name: app
    split: {{ app: 100 }}
pools:
  app:
    backends: [{{ address: "{app}" }}]
"#,
        dir = p.directory,
        ca = p.ca_file.display(),
        state = state.display(),
    )
}

async fn start(yaml: &str, url: &str) -> Tidegate {
    let tg = Tidegate::spawn(yaml, &[("TIDEGATE_SPOOL_URL", url)]);
    tg.wait_ready().await;
    tg
}

async fn acme_not_after(tg: &Tidegate, name: &str) -> Option<i64> {
    let st = get(&tg.admin_url("/api/v1/status")).await.ok()?.json();
    st["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["source"] == "acme" && c["names"][0] == name)
        .and_then(|c| c["not_after"].as_i64())
}

async fn wait_cert(tg: &Tidegate, name: &str) -> i64 {
    wait_for("an ACME certificate", Duration::from_secs(60), || async {
        acme_not_after(tg, name).await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_orders_once_and_any_proxy_answers_the_challenge() {
    let pg = Postgres::start().await;
    let app = TestBackend::start("app").await;
    // Pebble validates on proxy A's ports only (A stands for "the one the CA reached").
    let (a_plain, a_tls) = (free_port(), free_port());
    let pebble = Pebble::start(a_plain, a_tls, 30 * 86_400);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(
        &yaml(a_plain, a_tls, &pebble, "a.test", dirs[0].path(), app.addr),
        &pg.url(),
    )
    .await;
    wait_cert(&a, "a.test").await;

    // B and C start together for fleet.test: one of them orders (the lock), the other
    // takes its certificate from the store; the CA's HTTP-01 requests reach only A, which
    // answers the orderer's token from the shared store.
    let (b_tls, c_tls) = (free_port(), free_port());
    let yb = yaml(
        free_port(),
        b_tls,
        &pebble,
        "fleet.test",
        dirs[1].path(),
        app.addr,
    );
    let yc = yaml(
        free_port(),
        c_tls,
        &pebble,
        "fleet.test",
        dirs[2].path(),
        app.addr,
    );
    let url = pg.url();
    let (b, c) = tokio::join!(start(&yb, &url), start(&yc, &url));
    let (nb, nc) = tokio::join!(wait_cert(&b, "fleet.test"), wait_cert(&c, "fleet.test"));
    assert_eq!(nb, nc, "one certificate for the fleet");
    assert_eq!(pebble.issued(), 2, "{}", pebble.log());
    let took = [&b, &c]
        .iter()
        .filter(|t| {
            t.logs()
                .contains("ACME certificate taken from the fleet's store")
        })
        .count();
    assert_eq!(took, 1, "B:\n{}\nC:\n{}", b.logs(), c.logs());
    let answered = a
        .access_lines()
        .iter()
        .filter(|l| l["outcome"] == "acme_challenge")
        .count();
    assert!(
        answered >= 2,
        "A answered its own and the orderer's challenge:\n{}",
        a.logs()
    );
    let root = pebble.root();
    assert_eq!(https_status(c_tls, "fleet.test", &root, "/").await, Ok(200));
    assert_eq!(https_status(b_tls, "fleet.test", &root, "/").await, Ok(200));
    // One row per set of names; no challenge token is left behind.
    assert_eq!(pg.psql("SELECT count(*) FROM tidegate_acme_certs"), "2");
    assert_eq!(pg.psql("SELECT count(*) FROM tidegate_acme_tokens"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_tokens_are_answered_from_memory_through_a_flood_and_without_the_database() {
    let pg = Postgres::start().await;
    let app = TestBackend::start("app").await;
    let (plain, tls) = (free_port(), free_port());
    let pebble = Pebble::start(plain, tls, 30 * 86_400);
    let dir = tempfile::tempdir().unwrap();
    let a = start(
        &yaml(plain, tls, &pebble, "a.test", dir.path(), app.addr),
        &pg.url(),
    )
    .await;
    wait_cert(&a, "a.test").await;
    // A peer is being validated: its token is in the store (as its put_token writes it).
    pg.psql(
        "INSERT INTO tidegate_acme_tokens (token, key_authorization) \
         VALUES ('peer-token-1', 'peer-token-1.thumbprint')",
    );
    let url = |t: &str| format!("http://127.0.0.1:{plain}/.well-known/acme-challenge/{t}");
    let real = url("peer-token-1");
    wait_for("A answers the peer's token", Duration::from_secs(5), || {
        let real = real.clone();
        async move {
            let r = get(&real).await.ok()?;
            (r.status == 200 && r.body == "peer-token-1.thumbprint").then_some(())
        }
    })
    .await;
    // 2,000 made-up tokens from 50 clients at once, the real one asked between them: every
    // real ask is answered (the flood used to take the two database look-up permits, and
    // the real ask got the app's answer instead).
    let tasks: Vec<_> = (0..50)
        .map(|c| {
            let (real, made_up) = (real.clone(), url(&format!("made-up-{c}")));
            tokio::spawn(async move {
                let mut real_ok = 0;
                for i in 0..40 {
                    // Not a challenge of the fleet's: routed like any request (the app).
                    let r = get(&format!("{made_up}-{i}")).await.expect("made-up ask");
                    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.body);
                    if i % 10 == 0 {
                        let r = get(&real).await.expect("real ask");
                        real_ok += usize::from(r.status == 200);
                    }
                }
                real_ok
            })
        })
        .collect();
    let mut answered = 0;
    for t in tasks {
        answered += t.await.expect("task");
    }
    assert_eq!(answered, 200, "every real ask during the flood is answered");
    // The database goes away: the copy in memory still answers.
    pg.stop();
    let r = get(&real).await.expect("real ask");
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "peer-token-1.thumbprint")
    );
    let r = get(&url("made-up-x")).await.expect("ask");
    assert_eq!(r.backend().as_deref(), Some("app"), "{}", r.body);
}
