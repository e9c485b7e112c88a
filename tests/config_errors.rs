//! Config errors a person can act on: the corpus in `tests/config_corpus/` (one bad config per
//! file, the exact `tidegate check` message for each in `expected.txt`), a byte order mark
//! accepted, and the reload API's 422 carrying `kind` and `path` for schema errors while the
//! old config keeps serving.

mod common;

use std::path::PathBuf;

use common::*;

fn corpus() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/config_corpus"))
}

#[test]
fn every_bad_config_gives_its_exact_message() {
    let expected = std::fs::read_to_string(corpus().join("expected.txt")).unwrap();
    let cases: Vec<(&str, &str)> = expected
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split_once('\t').expect("NAME<TAB>message"))
        .collect();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    // Every file in the corpus has an expectation, and the other way round.
    let mut files: Vec<String> = std::fs::read_dir(corpus())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix(".yaml").map(str::to_owned))
        .collect();
    files.sort();
    let mut names: Vec<String> = cases.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(files, names);

    let mut wrong = Vec::new();
    for (name, message) in &cases {
        let path = corpus().join(format!("{name}.yaml"));
        let (code, out) = check(&path);
        let want = format!("{}: {message}", path.display());
        if code != 1 || out.trim_end() != want {
            wrong.push(format!(
                "{name}: exit {code}\n  got:  {}\n  want: {want}",
                out.trim_end()
            ));
        }
        // No parser internals in any message.
        for internal in [
            "untagged enum",
            "as u128",
            "any YAML value",
            "i64",
            "u32",
            "FileConfig",
            "os error",
            "at position",
        ] {
            assert!(!message.contains(internal), "{name}: {message}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

const GOOD: &str = "listeners:
  - name: public
    address: 127.0.0.1:8080
routes:
  - name: app
    split: { blue: 100 }
pools:
  blue:
    backends:
      - { address: 127.0.0.1:3001 }
";

#[test]
fn a_byte_order_mark_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bom.yaml");
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(GOOD.as_bytes());
    std::fs::write(&path, bytes).unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(out.trim_end().ends_with(": ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_422_has_kind_and_path_and_the_old_config_serves() {
    let app = TestBackend::start("blue").await;
    let yaml = format!(
        r#"
listeners: [{{ name: public, address: "{{listen}}" }}]
admin: {{ address: "{{admin}}" }}
routes:
  - name: app
    split: {{ blue: 100 }}
pools:
  blue:
    backends: [{{ address: "{}" }}]
"#,
        app.addr
    );
    let tg = Tidegate::start(&yaml).await;
    let cases = [
        (
            "{ blue: 100 }",
            "{ blue: 100000000000000000000000000 }",
            "schema",
            "routes[0].split.blue",
        ),
        (
            "{ blue: 100 }",
            "{ blue: 100, blue: 1 }",
            "duplicate",
            "routes[0].split.blue",
        ),
        (
            "{ blue: 100 }",
            "{ blue: lots }",
            "schema",
            "routes[0].split.blue",
        ),
        (
            "name: app",
            "name: app\n    retriez: 1",
            "schema",
            "routes[0].retriez",
        ),
        (
            "{ blue: 100 }",
            "{ gren: 100 }",
            "unknown_pool",
            "routes[0].split.gren",
        ),
    ];
    for (from, to, kind, path) in cases {
        assert!(yaml.contains(from), "{from:?} is not in the base config");
        tg.rewrite_config(&yaml.replacen(from, to, 1));
        let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
            .await
            .unwrap();
        assert_eq!(r.status, 422, "{to}: {}", r.body);
        let j = r.json();
        assert_eq!(j["kind"], kind, "{j}");
        assert_eq!(j["path"], path, "{j}");
        let resp = get(&tg.url("/")).await.unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.backend().as_deref(), Some("blue"));
        assert_eq!(tg.generation().await, 1);
    }
    // With a byte order mark, the same file reloads.
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend_from_slice(
        yaml.variant("{listen}", &tg.listen.to_string())
            .variant("{admin}", &tg.admin.to_string())
            .as_bytes(),
    );
    std::fs::write(&tg.config, bytes).unwrap();
    let r = post(&tg.admin_url("/api/v1/config/reload"), &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The Kubernetes example cannot run here; its embedded config must at least be valid.
#[test]
fn the_k8s_example_config_checks() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docker/k8s/sidecar.yaml"
    ))
    .unwrap();
    let start = manifest
        .find("  tidegate.yaml: |\n")
        .expect("embedded config")
        + 19;
    let yaml: String = manifest[start..]
        .lines()
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidegate.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(binary())
        .args(["check", "-c"])
        .arg(&path)
        .env("TIDEGATE_ADMIN_TOKEN", "example")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A backend name that does not resolve now (a stopped container) is a warning, not an error:
/// the backend waits, unavailable, until the name resolves.
#[test]
fn an_unresolvable_backend_name_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(
        &path,
        GOOD.variant("127.0.0.1:3001", "app-not-running.invalid:3001"),
    )
    .unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warning: pools.blue.backends[0].address: \"app-not-running.invalid:3001\" does not resolve now"),
        "{out}"
    );
    // A malformed one still is an error.
    std::fs::write(
        &path,
        GOOD.variant("127.0.0.1:3001", "app not running:3001"),
    )
    .unwrap();
    let (code, out) = check(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("expected HOST:PORT"), "{out}");
}
