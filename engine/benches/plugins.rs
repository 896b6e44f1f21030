//! Wasm plugin policies next to CEL, in one run:
//!
//! * `plugin_decide/{cel,plugin}`: `Engine::decide` with one policy, `host-maintenance.drain`,
//!   written in CEL and as the plugin that reproduces it, on the same event;
//! * `plugin_instantiate`: a new store and instance from the `InstancePre`, with `init` run;
//! * `plugin_load_10/{cache,no_cache}`: loading a policy set of 10 distinct precompiled
//!   plugins with a warm disk cache, and compiling all 10 without one.
//!
//! Needs the components: `cargo run -p xtask -- build-plugins`, then
//! `cargo bench -p keel-engine --features plugins --bench plugins`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use keel_engine::{Ctx, Engine, Event};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn component(name: &str) -> PathBuf {
    let p = repo()
        .join("wasm-plugins/dist")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo run -p xtask -- build-plugins` first",
        p.display()
    );
    p
}

const CEL: &str = r#"policies:
  - name: host-maintenance.drain
    on: [maintenance]
    when: >
      event.source in ["aws.imds", "gcp.metadata"] && event.maintenance.type == "host_maintenance"
      && event.maintenance.status == "scheduled"
      && (!has(event.maintenance.not_before) || event.maintenance.not_before - now <= duration("30m"))
    action: drain
    priority: 20
    reason: host maintenance window opens soon; draining
    params: { deadline_s: 1800 }
"#;

fn plugin_yaml(path: &Path) -> String {
    format!(
        "policies:\n  - name: host-maintenance.drain\n    on: [maintenance]\n    plugin: {{ path: {}, config: {{ rule: drain }} }}\n    priority: 20\n",
        path.display()
    )
}

fn event() -> Event {
    Event::from_json_str(
        r#"{"id": "aws.imds:instance-event-1", "time": "2025-03-01T10:00:00Z",
            "source": "aws.imds", "kind": "maintenance",
            "resource": {"id": "i-0abc", "name": "web-1", "region": "us-east-1", "zone": "us-east-1a",
                         "tags": {"team": "web", "env": "prod"}},
            "maintenance": {"type": "host_maintenance", "status": "scheduled",
                            "not_before": "2025-03-01T10:20:00Z", "not_after": "2025-03-01T12:20:00Z",
                            "description": "scheduled host maintenance", "vendor_id": "instance-event-1",
                            "vendor_type": "system-maintenance"}}"#,
    )
    .unwrap()
}

fn decide(c: &mut Criterion) {
    let cel = Engine::builder()
        .add_source("cel.yaml", CEL)
        .build()
        .unwrap();
    let wasm = Engine::builder()
        .plugin_cache_dir(None)
        .add_source("plugin.yaml", plugin_yaml(&component("host-maintenance")))
        .build()
        .unwrap();
    let ev = event();
    let ctx = Ctx::new("2025-03-01T10:00:00Z".parse().unwrap());
    let (a, b) = (cel.decide(&ev, &ctx), wasm.decide(&ev, &ctx));
    assert_eq!(
        (a.action, &a.reason, &a.params),
        (b.action, &b.reason, &b.params)
    );
    assert!(b.errors.is_empty(), "{:?}", b.errors);
    let mut g = c.benchmark_group("plugin_decide");
    g.bench_function("cel", |b| {
        b.iter(|| black_box(cel.decide(black_box(&ev), &ctx)))
    });
    g.bench_function("plugin", |b| {
        b.iter(|| black_box(wasm.decide(black_box(&ev), &ctx)))
    });
    g.finish();
    c.bench_function("plugin_instantiate", |b| {
        b.iter(|| wasm.__plugin_instantiate("host-maintenance.drain").unwrap())
    });
}

/// Ten distinct components: the same plugin with a different custom section appended, so
/// each has its own content hash (and cache entry).
fn ten_plugins(dir: &Path) -> String {
    let base = std::fs::read(component("host-maintenance")).unwrap();
    let mut yaml = String::from("policies:\n");
    for i in 0..10 {
        let name = format!("bench-{i}");
        let mut bytes = base.clone();
        // A custom section: id 0, size, name, payload.
        let payload = format!("keel-bench{i}");
        let body_len = 1 + name.len() + payload.len();
        bytes.push(0);
        bytes.push(u8::try_from(body_len).unwrap());
        bytes.push(u8::try_from(name.len()).unwrap());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(payload.as_bytes());
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, bytes).unwrap();
        yaml.push_str(&format!(
            "  - name: {name}\n    on: [maintenance]\n    plugin: {{ path: {}, config: {{ rule: drain }} }}\n",
            path.display()
        ));
    }
    yaml
}

fn load(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let yaml = ten_plugins(dir.path());
    let build = |cache: Option<PathBuf>| {
        Engine::builder()
            .plugin_cache_dir(cache)
            .add_source("ten.yaml", yaml.clone())
            .build()
            .unwrap()
    };
    let e = build(Some(cache.clone()));
    assert_eq!(e.__plugin_cache_use("bench-0"), Some("compiled"));
    assert_eq!(
        build(Some(cache.clone())).__plugin_cache_use("bench-9"),
        Some("disk")
    );
    let mut g = c.benchmark_group("plugin_load_10");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("cache", |b| {
        b.iter(|| black_box(build(Some(cache.clone()))))
    });
    g.bench_function("no_cache", |b| b.iter(|| black_box(build(None))));
    g.finish();
}

criterion_group!(benches, decide, load);
criterion_main!(benches);
