//! Unit tests of config parsing and validation: every rule has a typed error with a key path.

use super::*;

const BASE: &str = r#"
listeners:
  - name: public
    address: 127.0.0.1:18080
routes:
  - name: app
    match: { host: "*", path_prefix: / }
    split: { blue: 80, green: 20 }
pools:
  blue:
    backends:
      - { address: 127.0.0.1:3001, weight: 3 }
      - { address: 127.0.0.1:3003 }
  green:
    backends:
      - { address: 127.0.0.1:3002 }
"#;

fn load(text: &str) -> Result<Loaded, ConfigError> {
    load_str(text, &|_| None)
}

#[test]
fn base_config_builds() {
    let l = load(BASE).unwrap();
    let c = &l.spec;
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.pools["blue"].backends[0].name.as_ref(), "127.0.0.1:3001");
    assert_eq!(c.pools["blue"].backends[0].weight, 3);
    assert_eq!(
        c.routes[0].split,
        vec![("blue".into(), 80), ("green".into(), 20)]
    );
    assert!(l.warnings.is_empty());
}

fn err(text: &str) -> ConfigError {
    match load(text) {
        Ok(_) => panic!("config should be refused:\n{text}"),
        Err(e) => e,
    }
}

#[test]
// Long: one table of cases.
fn each_kind_of_error_names_its_key_path() {
    let cases: &[(&str, &str, &str, &str)] = &[
        // (replace this, with this, expected kind, expected text in message)
        (
            "split: { blue: 80, green: 20 }",
            "split: { blue: 80, gren: 20 }",
            "unknown_pool",
            "routes[0].split.gren: unknown pool \"gren\"",
        ),
        (
            "split: { blue: 80, green: 20 }",
            "split: { blue: 80, green: 10001 }",
            "out_of_range",
            "routes[0].split.green: 10001 is out of range",
        ),
        (
            "split: { blue: 80, green: 20 }",
            "split: { blue: -1, green: 20 }",
            "out_of_range",
            "routes[0].split.blue",
        ),
        (
            "weight: 3 }",
            "weight: 0 }",
            "out_of_range",
            "pools.blue.backends[0].weight",
        ),
        (
            "address: 127.0.0.1:18080",
            "address: 127.0.0.1",
            "bad_address",
            "listeners[0].address",
        ),
        (
            "{ address: 127.0.0.1:3002 }",
            "{ address: \"nohost:99999\" }",
            "bad_address",
            "pools.green.backends[0].address",
        ),
        (
            "{ address: 127.0.0.1:3003 }",
            "{ address: 127.0.0.1:3001 }",
            "duplicate",
            "pools.blue.backends[1].address",
        ),
        (
            "    match: {",
            "    mach: {",
            "schema",
            "unknown key `mach`",
        ),
        (
            "name: app",
            "name: app\n    retries: lots",
            "schema",
            "routes[0].retries",
        ),
        (
            "  - name: app",
            "  - name: app\n    hold: { timeout: 5 parsecs }\n    name2: x",
            "schema",
            "routes[0].hold.timeout",
        ),
    ];
    for (from, to, kind, text) in cases {
        assert!(BASE.contains(from), "test case does not apply: {from}");
        let e = err(&BASE.replacen(from, to, 1));
        assert_eq!(e.kind(), *kind, "{e}");
        assert!(
            e.to_string().contains(text),
            "{e:?} should mention {text:?}: {e}"
        );
    }
}

#[test]
fn duplicate_names_are_refused() {
    let two_routes = BASE.replace(
        "pools:",
        "  - name: app\n    match: { path_prefix: /api }\n    split: { blue: 1 }\npools:",
    );
    let e = err(&two_routes);
    assert_eq!(e.kind(), "duplicate");
    assert_eq!(e.path(), Some("routes[1].name"));
    let two_listeners = BASE.replace(
        "routes:",
        "  - name: public\n    address: 127.0.0.1:18081\nroutes:",
    );
    assert_eq!(err(&two_listeners).path(), Some("listeners[1].name"));
}

#[test]
fn yaml_syntax_error_has_a_line() {
    let e = err("listeners: [\n  - name: x\n");
    assert_eq!(e.kind(), "syntax");
    assert!(e.to_string().contains("line"), "{e}");
}

#[test]
fn schema_errors_carry_the_line() {
    let e = err(&BASE.replace("    match: {", "    mach: {"));
    match e {
        ConfigError::Schema { line: Some(l), .. } => assert_eq!(l, 7),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_loopback_admin_needs_a_token() {
    let open = format!("{BASE}admin:\n  address: 0.0.0.0:9901\n");
    assert_eq!(err(&open).kind(), "security");
    let with_env = format!("{BASE}admin:\n  address: 0.0.0.0:9901\n  token_env: TG_T\n");
    let l = load_str(&with_env, &|k| (k == "TG_T").then(|| "t0k".into())).unwrap();
    assert_eq!(
        l.spec.admin.token.as_ref().map(|s| s.0.as_str()),
        Some("t0k")
    );
    assert!(
        !format!("{:?}", l.spec.admin).contains("t0k"),
        "token must not appear in Debug"
    );
}

#[test]
fn all_zero_split_is_a_warning_not_an_error() {
    let l = load(&BASE.replace("{ blue: 80, green: 20 }", "{ blue: 0, green: 0 }")).unwrap();
    assert_eq!(l.warnings.len(), 1);
}

#[test]
fn an_unchanged_spec_diffs_empty_and_a_weight_change_is_a_pool_change() {
    let a = load(BASE).unwrap().spec;
    let b = load(&BASE.replace("weight: 3", "weight: 5")).unwrap().spec;
    assert_eq!(diff::Diff::between(&a, &a), diff::Diff::default());
    let d = diff::Diff::between(&a, &b);
    assert_eq!(d.pools_changed, vec!["blue".to_string()]);
    assert!(d.routes_changed.is_empty() && d.needs_restart.is_empty());
}

/// Validation reads the world only through `Inputs`: certificate files, backend names and
/// the clock can all be handed in, and nothing on disk or in DNS is touched.
#[test]
fn validation_reads_files_names_and_the_clock_only_through_inputs() {
    let k = rcgen::generate_simple_self_signed(vec!["site.test".to_string()]).expect("rcgen");
    let (cert, key) = (k.cert.pem(), k.signing_key.serialize_pem());
    let files: std::collections::HashMap<&str, &str> = [
        ("/virtual/site.crt", cert.as_str()),
        ("/virtual/site.key", key.as_str()),
    ]
    .into();
    let read = |p: &Path| {
        files
            .get(p.to_str().unwrap_or(""))
            .map(|t| t.as_bytes().to_vec())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    let lookup =
        |name: &str| (name == "app.internal:3000").then(|| "10.1.2.3:3000".parse().unwrap());
    let text = r#"
listeners:
  - name: public
    address: 127.0.0.1:8443
    tls: { cert: /virtual/site.crt, key: /virtual/site.key }
routes:
  - name: app
    split: { blue: 100 }
pools:
  blue:
    backends: [{ address: "app.internal:3000" }]
"#;
    let not_after = crate::config::tls::load_pair(cert.as_bytes(), key.as_bytes())
        .expect("pair")
        .1
        .not_after;
    let io = Inputs {
        env: &|_| None,
        read: &read,
        lookup: &lookup,
        // Ten days before the certificate expires: warned about.
        now: not_after - 10 * 86_400,
    };
    let l = load_with(text.as_bytes(), &io).expect("valid with the injected files");
    assert_eq!(
        l.spec.pools["blue"].backends[0].addr,
        Some("10.1.2.3:3000".parse().unwrap())
    );
    assert!(
        l.warnings
            .iter()
            .any(|w| w.contains("certificate for site.test expires in 10 days")),
        "{:?}",
        l.warnings
    );
    let missing = text.replace("/virtual/site.key", "/virtual/gone.key");
    let e = load_with(missing.as_bytes(), &io).expect_err("no such file");
    assert!(
        e.to_string().contains("cannot read /virtual/gone.key"),
        "{e}"
    );
}

#[test]
fn control_store_is_spelled_like_spool_store() {
    let with = |block: &str| format!("{BASE}control_store: {block}\n");
    let l = load(&with(r#"{ postgres: "postgres://tg@db/x", node: edge-1 }"#)).unwrap();
    let c = l.spec.control_store.expect("control_store");
    assert_eq!((c.node.as_str(), c.heartbeat_ttl.as_secs()), ("edge-1", 5));
    assert_eq!(c.resync.as_secs(), 2);
    let l = load(&with(r#"{ postgres: "postgres://tg@db/x" }"#)).unwrap();
    assert!(
        l.spec.control_store.unwrap().node.ends_with(":9901"),
        "host name and admin port"
    );
    for (block, text) in [
        (
            r#"{ postgres: "postgres://a/x", postgres_env: U }"#,
            "exactly one of postgres, postgres_env or postgres_file",
        ),
        (
            r#"{ postgres: "mysql://a/x" }"#,
            "control_store.postgres: must be a postgres://",
        ),
        (
            r#"{ postgres_env: NOT_SET_ANYWHERE }"#,
            "NOT_SET_ANYWHERE is not set",
        ),
        (
            r#"{ postgres: "postgres://a/x", heartbeat_ttl: 1s }"#,
            "at least 3s",
        ),
        (r#"{ postgres: "postgres://a/x", nodes: x }"#, "nodes"),
    ] {
        let e = err(&with(block)).to_string();
        assert!(e.contains(text), "{block}: {e}");
    }
    let l = load(&with(r#"{ postgres: "postgres://u:secret@a/x" }"#)).unwrap();
    assert!(l
        .warnings
        .iter()
        .any(|w| w.contains("control_store.postgres: the URL holds a password")));
    assert!(
        !format!("{:?}", l.spec.control_store).contains("secret"),
        "never printed"
    );
}
