//! Benches of the pure per-request cores (route match, weighted pick, affinity) and of a config build
//! with 1,000 backends (the reload cost). `cargo bench --bench routing`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use tidegate::{
    config,
    routing::{HostPattern, RouteMatch, Router, Schedule},
};

fn route_match(c: &mut Criterion) {
    let mut matches = vec![RouteMatch {
        hosts: vec![HostPattern::Any],
        path_prefix: "/".into(),
        methods: None,
    }];
    for i in 0..50 {
        matches.push(RouteMatch {
            hosts: vec![HostPattern::parse(&format!("svc{i}.example.com")).unwrap()],
            path_prefix: format!("/api/v{}", i % 5),
            methods: None,
        });
        matches.push(RouteMatch {
            hosts: vec![HostPattern::parse(&format!("*.tenant{i}.example.com")).unwrap()],
            path_prefix: "/".into(),
            methods: None,
        });
    }
    let r = Router::new(&matches);
    let get = http::Method::GET;
    c.bench_function("route_match/exact_host_101_routes", |b| {
        b.iter(|| {
            r.find(
                black_box("svc42.example.com"),
                black_box("/api/v2/users/7"),
                &get,
            )
        })
    });
    c.bench_function("route_match/wildcard_host", |b| {
        b.iter(|| {
            r.find(
                black_box("a.tenant7.example.com:8443"),
                black_box("/x"),
                &get,
            )
        })
    });
    c.bench_function("route_match/any_host", |b| {
        b.iter(|| r.find(black_box("other.org"), black_box("/"), &get))
    });
}

fn weighted_pick(c: &mut Criterion) {
    let split = Schedule::new(&[80, 20]);
    c.bench_function("pick/split_80_20", |b| b.iter(|| split.pick(|_| true)));
    let weights: Vec<u32> = (0..100).map(|i| 1 + i % 7).collect();
    let pool = Schedule::new(&weights);
    c.bench_function("pick/pool_100_backends", |b| b.iter(|| pool.pick(|_| true)));
    c.bench_function("pick/pool_100_backends_half_draining", |b| {
        b.iter(|| pool.pick(|i| i % 2 == 0))
    });
}

/// Affinity (issue 21): a key's pool among a split's pools (rendezvous, O(pools)) and its
/// backend on a pool's ring (ketama, O(log points)), with 100 backends.
fn affinity_pick(c: &mut Criterion) {
    use tidegate::routing::affinity::{pool_for, Key, Ring};
    let keys: Vec<Key> = (0..1024)
        .map(|i| Key::of(format!("session-{i}").as_bytes()))
        .collect();
    let pools = [("blue", 70u32, true), ("green", 30, true)];
    let mut n = 0usize;
    c.bench_function("affinity/pool_of_2", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            pool_for(keys[n], pools.iter().copied())
        })
    });
    let names: Vec<String> = (0..100).map(|i| format!("app-{i}")).collect();
    let ring = Ring::new(
        names
            .iter()
            .enumerate()
            .map(|(i, s)| (s.as_str(), 1 + i as u32 % 7)),
    );
    c.bench_function("affinity/backend_of_100", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            ring.pick(keys[n], |_| true)
        })
    });
    c.bench_function("affinity/backend_of_100_half_draining", |b| {
        b.iter(|| {
            n = (n + 1) & 1023;
            ring.pick(keys[n], |i| i % 2 == 0)
        })
    });
}

/// The whole pick (`routing::pick::pick`): pool and backend of a split of two pools of 100
/// backends each, without a key, by affinity, and sticky; then 10 pools to show O(pools).
fn whole_pick(c: &mut Criterion) {
    use std::sync::Arc;
    use tidegate::routing::{
        affinity::Key,
        pick::{pick, Members, Split, View, Want},
    };
    struct Pools(Vec<Members>);
    impl View for Pools {
        fn members(&self, pool: usize) -> &Members {
            &self.0[pool]
        }
        fn usable(&self, _: usize, backend: usize) -> bool {
            backend % 10 != 3
        }
        fn admits(&self, _: usize, _: usize) -> bool {
            true
        }
    }
    let names: Vec<String> = (0..100).map(|i| format!("app-{i}")).collect();
    let members = || Members::new(names.iter().map(|n| (n.as_str(), 1)), true);
    let keys: Vec<Key> = (0..1024)
        .map(|i| Key::of(format!("session-{i}").as_bytes()))
        .collect();
    for pools in [2usize, 10] {
        let view = Pools((0..pools).map(|_| members()).collect());
        let split = Split::new((0..pools).map(|i| (Arc::from(format!("pool-{i}")), 10)));
        let mut n = 0usize;
        c.bench_function(&format!("pick/whole_{pools}x100_split"), |b| {
            b.iter(|| pick(&split, &view, &Want::default()))
        });
        for (label, sticky) in [("affinity", false), ("sticky", true)] {
            c.bench_function(&format!("pick/whole_{pools}x100_{label}"), |b| {
                b.iter(|| {
                    n = (n + 1) & 1023;
                    let want = Want {
                        key: Some(keys[n]),
                        sticky,
                        ..Want::default()
                    };
                    pick(&split, &view, &want)
                })
            });
        }
    }
}

fn config_build(c: &mut Criterion) {
    let mut yaml = String::from(
        "listeners: [{ name: public, address: 127.0.0.1:8080 }]\nroutes:\n  - name: app\n    split: { blue: 50, green: 50 }\npools:\n",
    );
    for pool in ["blue", "green"] {
        yaml.push_str(&format!("  {pool}:\n    backends:\n"));
        for i in 0..500 {
            yaml.push_str(&format!(
                "      - {{ address: \"10.{}.{}.{}:8080\", weight: {} }}\n",
                i / 256,
                i % 256,
                if pool == "blue" { 1 } else { 2 },
                1 + i % 5
            ));
        }
    }
    c.bench_function("config_build/1000_backends", |b| {
        b.iter(|| config::load_str(black_box(&yaml), &|_| None).unwrap())
    });
}

criterion_group!(
    benches,
    route_match,
    weighted_pick,
    affinity_pick,
    whole_pick,
    config_build
);
criterion_main!(benches);
