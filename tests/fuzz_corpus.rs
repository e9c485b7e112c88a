//! Every input in the fuzzers' committed corpus (fuzz/corpus/TARGET/*), findings included, run
//! through the same entry points `cargo fuzz` drives (`tidegate::fuzzing`): none panics.
//! `scripts/fuzz` does the fuzzing itself (libFuzzer, nightly).

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("corpus directory").flatten() {
        let bytes = std::fs::read(e.path()).expect("corpus file");
        f(&bytes);
        n += 1;
    }
    n
}

#[test]
fn every_corpus_input_runs_without_a_panic() {
    for (target, f) in [
        ("config", tidegate::fuzzing::config as fn(&[u8])),
        ("request", tidegate::fuzzing::request),
        ("admin_body", tidegate::fuzzing::admin_body),
        ("spool_headers", tidegate::fuzzing::spool_headers),
        ("fleet_row", tidegate::fuzzing::fleet_row),
        ("acme_answer", tidegate::fuzzing::acme_answer),
    ] {
        let n = replay(target, f);
        assert!(n > 0, "fuzz/corpus/{target} is empty");
    }
}
