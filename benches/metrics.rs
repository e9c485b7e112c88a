//! Bench of a /metrics render with 1,000 backends. `cargo bench --bench metrics`.

use std::{hint::black_box, sync::Arc};

use criterion::{criterion_group, criterion_main, Criterion};

/// The allocator the binary runs with (see src/main.rs): a render allocates per sample.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tidegate::{config, metrics::Metrics, state::AppState};

fn render_1000(c: &mut Criterion) {
    let mut yaml = String::from(
        "listeners: [{ name: public, address: 127.0.0.1:8080 }]\nroutes:\n  - name: app\n    split: { blue: 50, green: 50 }\npools:\n",
    );
    for (p, pool) in ["blue", "green"].iter().enumerate() {
        yaml.push_str(&format!("  {pool}:\n    backends:\n"));
        for i in 0..500 {
            yaml.push_str(&format!(
                "      - {{ address: \"10.{p}.{}.{}:8080\" }}\n",
                i / 256,
                i % 256
            ));
        }
    }
    let loaded = config::load_str(&yaml, &|_| None).expect("bench config");
    let state = Arc::new(AppState::new(
        loaded.spec,
        "/nonexistent/tidegate.yaml".into(),
        0,
    ));
    let metrics = Metrics::new(&state);
    let text = metrics.render();
    assert!(text.lines().count() > 10_000);
    c.bench_function("metrics_render/1000_backends", |b| {
        b.iter(|| black_box(metrics.render()))
    });
}

criterion_group!(benches, render_1000);
criterion_main!(benches);
