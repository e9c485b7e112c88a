//! Entry points for `cargo fuzz` (`fuzz/fuzz_targets/`): each parser that meets untrusted
//! bytes, driven as tidegate drives it. Every target asserts what must hold whatever the
//! input (no panic; normalizing twice changes nothing). Not an API: kept public only for
//! the fuzz crate.

use std::sync::OnceLock;

use crate::config::{spec::HttpSettings, Inputs};

/// Inputs that touch nothing outside: no environment, no files, no DNS, a fixed clock.
fn sealed() -> Inputs<'static> {
    Inputs {
        env: &|_| None,
        read: &|_| Err(std::io::Error::other("no files while fuzzing")),
        lookup: &|_| None,
        now: 1_800_000_000,
    }
}

/// The config file: parsed and validated as `tidegate check` does.
pub fn config(data: &[u8]) {
    let _ = crate::config::load_with(data, &sealed());
}

/// The shipped HTTP settings (`http:` left out), and with `underscores_in_headers`.
fn http(underscores: bool) -> HttpSettings {
    static BASE: OnceLock<HttpSettings> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let yaml = b"listeners: [{ name: p, address: \"127.0.0.1:1\" }]
admin: { address: \"127.0.0.1:2\" }
routes: [{ name: a, split: { p: 1 } }]
pools: { p: { backends: [{ address: \"127.0.0.1:3\" }] } }
";
        match crate::config::load_with(yaml, &sealed()) {
            Ok(l) => l.spec.http,
            Err(e) => panic!("the fuzzing base config does not load: {e}"),
        }
    });
    HttpSettings {
        underscores_in_headers: underscores,
        ..base.clone()
    }
}

/// A request head at the edge: `METHOD TARGET` then `name: value` lines. The framing and
/// hygiene checks, the path normalization (idempotent), affinity cookies, request ids and
/// trace context.
pub fn request(data: &[u8]) {
    let underscores = data.first().is_some_and(|b| b & 1 == 1);
    crate::proxy::hygiene::fuzz_request(data.get(1..).unwrap_or_default(), &http(underscores));
}

/// An admin API body, for every request type the API parses.
pub fn admin_body(data: &[u8]) {
    crate::admin::fuzz_body(data);
}

/// A spooled request's stored headers, read back into the request replay sends.
pub fn spool_headers(data: &[u8]) {
    use crate::services::spool::{replay, store::Item};
    let _ = replay::stored_header(data, "x-request-id");
    let item = Item {
        id: 1,
        route: "r".into(),
        method: "POST".into(),
        target: "/t".into(),
        headers: data.to_vec(),
        body: Vec::new(),
        attempts: 0,
        created_ms: 0,
    };
    let _ = replay::request(&item, std::net::SocketAddr::from(([127, 0, 0, 1], 1)), 1);
}

/// A control store row (any kind, as JSON), a notification payload, and a `state_file`.
pub fn fleet_row(data: &[u8]) {
    fleet_rows(data);
    crate::services::persist::fuzz_state_file(data);
}

/// `cargo fuzz`: a row of any kind, as JSON, through the checks `sync::apply` makes before
/// applying it; and the text as a notification payload.
fn fleet_rows(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::services::fleet::store::note_rev(text);
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Option<T> {
        serde_json::from_value(v.clone()).ok()
    }
    if let Some(d) = parse::<crate::services::persist::SavedDrain>(&v) {
        let _ = d.checked();
    }
    if let Some(r) = parse::<crate::api::Ramp>(&v) {
        let _ = crate::services::fleet::rows::ramp(&r);
    }
    if let Some(s) = parse::<std::collections::BTreeMap<String, u32>>(&v) {
        let _ = crate::services::fleet::rows::split("split", &s);
    }
    if let Some(m) = parse::<crate::state::overrides::MaintenanceOverride>(&v) {
        let _ = crate::services::fleet::rows::maintenance(&m);
    }
    if let Some(c) = parse::<crate::api::Checkpoint>(&v) {
        let _ = crate::services::fleet::rows::checkpoint(&c);
    }
    if let Some(b) = parse::<Vec<crate::api::BackendEntry>>(&v) {
        let _ = crate::config::build::runtime_backends("p", &b);
    }
}

/// The key `acme_answer` pairs every chain with (the seed certificate in the corpus is for
/// it and `a.test`): the key is tidegate's own in a real order, only the chain is the CA's.
const ACME_KEY: &[u8] = b"-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgkKKnz28eByJTSmuw
DBAm4a/bBpB13RKmvgrxN4cMAgahRANCAATfpOntzKASCGY9wxPsKHA2RmAPulOl
LHxOQSHTBYyVic/0kqKtxf0c3rzXCaEF+Df9G8CMA/OqfrAPU3ode5Nw
-----END PRIVATE KEY-----
";

/// A CA's answer to an order: the certificate chain (PEM), loaded as an order loads it and
/// checked against what was ordered.
pub fn acme_answer(data: &[u8]) {
    if let Ok((_, info)) = crate::config::tls::load_pair(data, ACME_KEY) {
        let names = ["a.test".to_string()];
        let _ = crate::services::acme::issued_as_ordered(&info, &names, 1_800_000_000);
        let _ = crate::services::acme::renew_at(&info);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_acme_seed_is_a_certificate_for_the_fuzzing_key() {
        let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus/acme_answer/seed-a-test");
        let pem = std::fs::read(seed).expect("seed");
        let (_, info) = crate::config::tls::load_pair(&pem, super::ACME_KEY).expect("loads");
        assert_eq!(info.names, ["a.test"]);
    }
}
