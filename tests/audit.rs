//! The audit trail with the real binary: one line per admin mutation, allowed or refused,
//! with action, target, caller, status, result and reason; the token never appears.

mod common;

use std::time::Duration;

use common::*;

/// The audit line of `action` on `target` (tidegate's log, stderr).
async fn audit_line(tg: &Tidegate, action: &str, target: &str) -> String {
    let (a, t) = (
        format!("action=\"{action}\""),
        format!("target=\"{target}\""),
    );
    wait_for(
        &format!("audit {action} {target}"),
        Duration::from_secs(10),
        || {
            let found = tg
                .logs()
                .lines()
                .find(|l| l.contains(" audit ") && l.contains(&a) && l.contains(&t))
                .map(str::to_string);
            async move { found }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_action_leaves_an_audit_line_without_the_token() {
    let app = TestBackend::start("app").await;
    let canary = TestBackend::start("canary").await;
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
listeners: [{{ name: web, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}", token_env: TG_AUDIT_TOKEN }}
spool_store: {{ path: {db} }}
routes:
  - name: web
    split: {{ app: 100, canary: 0 }}
  - name: hooks
    match: {{ path_prefix: /hooks/ }}
    split: {{ app: 100 }}
    spool: {{}}
pools:
  app:
    backends: [{{ name: a1, address: "{app}" }}]
  canary:
    backends: [{{ address: "{canary}" }}]
"#,
        db = dir.path().join("spool.db").display(),
        app = app.addr,
        canary = canary.addr
    );
    let token = "audit-s3cr3t-token-value";
    let mut tg = Tidegate::spawn(&yaml, &[("TG_AUDIT_TOKEN", token)]);
    tg.wait_ready().await;
    let c = client();
    let auth = format!("Bearer {token}");
    let call = |method: &'static str, path: String, body: &'static str| {
        let (c, url, auth) = (c.clone(), tg.admin_url(&path), auth.clone());
        async move {
            send(&c, method, &url, &[("authorization", auth.as_str())], body)
                .await
                .unwrap()
                .status
        }
    };
    let members = format!("{{\"backends\":[{{\"address\":\"{}\"}}]}}", canary.addr);
    let members: &'static str = Box::leak(members.into_boxed_str());
    let steps: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "POST",
            "/api/v1/config/reload".into(),
            "",
            "reload",
            "config",
        ),
        (
            "PUT",
            "/api/v1/routes/web/checkpoint".into(),
            "",
            "checkpoint",
            "route web",
        ),
        (
            "POST",
            "/api/v1/pools/app/backends/a1/drain".into(),
            "",
            "drain",
            "backend app/a1",
        ),
        (
            "POST",
            "/api/v1/pools/app/backends/a1/undrain".into(),
            "",
            "undrain",
            "backend app/a1",
        ),
        (
            "PUT",
            "/api/v1/routes/web/split".into(),
            "{\"split\":{\"app\":90,\"canary\":10}}",
            "split",
            "route web",
        ),
        (
            "POST",
            "/api/v1/routes/web/split".into(),
            "{\"split\":{\"app\":50,\"canary\":50},\"over\":\"2s\"}",
            "ramp",
            "route web",
        ),
        (
            "DELETE",
            "/api/v1/routes/web/split".into(),
            "",
            "split.clear",
            "route web",
        ),
        (
            "PUT",
            "/api/v1/pools/canary/backends".into(),
            members,
            "members.set",
            "pool canary",
        ),
        (
            "DELETE",
            "/api/v1/pools/canary/backends".into(),
            "",
            "members.reset",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/pools/canary/drain".into(),
            "",
            "drain",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/pools/canary/undrain".into(),
            "",
            "undrain",
            "pool canary",
        ),
        (
            "POST",
            "/api/v1/routes/web/rollback".into(),
            "",
            "rollback",
            "route web",
        ),
        (
            "POST",
            "/api/v1/maintenance".into(),
            "{}",
            "maintenance.on",
            "routes",
        ),
        (
            "DELETE",
            "/api/v1/maintenance".into(),
            "",
            "maintenance.off",
            "routes",
        ),
        (
            "POST",
            "/api/v1/spool/retry".into(),
            "{}",
            "spool.retry",
            "spool",
        ),
        (
            "DELETE",
            "/api/v1/spool?state=dead".into(),
            "",
            "spool.purge",
            "spool",
        ),
    ];
    for (method, path, body, action, target) in steps {
        let status = wait_for(&format!("{method} {path}"), Duration::from_secs(10), || {
            let f = call(method, path.clone(), body);
            // The spool store opens in the background: 503 until it is open.
            async move { Some(f.await).filter(|s| *s != 503) }
        })
        .await;
        assert!(status < 300, "{method} {path}: {status}");
        let line = audit_line(&tg, action, target).await;
        assert!(
            line.contains("caller=127.0.0.1:") && line.contains("result=\"ok\""),
            "{line}"
        );
        assert!(line.contains(&format!("status={status}")), "{line}");
    }
    // Refused: no token, a wrong one, not JSON. Each says why.
    let r = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/pools/app/drain"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let wrong = send(
        &c,
        "POST",
        &tg.admin_url("/api/v1/pools/app/drain"),
        &[("authorization", "Bearer wrong-guess-token")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(wrong.status, 401);
    let r = send_exact(
        &c,
        "POST",
        &tg.admin_url("/api/v1/maintenance"),
        &[("authorization", &auth), ("content-type", "text/plain")],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 415);
    let lines: Vec<String> = wait_for("refused audit lines", Duration::from_secs(10), || {
        let l: Vec<String> = tg
            .logs()
            .lines()
            .filter(|l| l.contains(" audit ") && l.contains("result=\"refused\""))
            .map(str::to_string)
            .collect();
        async move { (l.len() >= 3).then_some(l) }
    })
    .await;
    assert!(
        lines[0].contains("action=\"drain\"")
            && lines[0].contains("status=401")
            && lines[0].contains("reason=\"unauthorized"),
        "{}",
        lines[0]
    );
    assert!(
        lines[2].contains("action=\"maintenance.on\"")
            && lines[2].contains("status=415")
            && lines[2].contains("reason="),
        "{}",
        lines[2]
    );
    tg.signal(libc::SIGINT);
    tg.wait_exit(Duration::from_secs(10)).await;
    let all = tg.logs();
    assert!(
        !all.contains(token) && !all.contains("wrong-guess-token"),
        "a token was logged"
    );
}
