//! `Engine::decide` from event JSON text to Decision (fast mode, and full mode as `--explain`
//! runs it), at 1, 10, 100 and 1000 policies, beside
//! (a) the floor: serde_json parsing the event into the typed `Event` alone, and (b) the naive
//! approach: the whole event converted to CEL values and every policy run by the `cel`
//! interpreter. Plus loading and compiling 1000 policies, and writing an event and its
//! decision as redacted JSON (what the host stores).
//!
//! Run: `cargo bench -p keel-engine --bench decide`
// Benchmarks run on generated, known-valid inputs: a failure here is a bug in the generator.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use keel_engine::{Ctx, Engine, Event, Mode};

mod common;

const SIZES: [usize; 4] = [1, 10, 100, 1000];

/// The naive engine: every policy's `when` as a `cel::Program`, evaluated in turn on a
/// context holding the fully converted event.
struct Naive {
    programs: Vec<cel::Program>,
    env: std::sync::Arc<cel::Env>,
}

impl Naive {
    fn new(yaml: &str) -> Naive {
        // The generated file has one `when: '…'` line per policy.
        let programs = yaml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("when: '"))
            .map(|w| {
                cel::Program::compile(&w[..w.len() - 1].replace("''", "'")).expect("valid CEL")
            })
            .collect();
        // The standard environment is built once, as a careful naive user would.
        Naive {
            programs,
            env: std::sync::Arc::new(cel::Env::stdlib()),
        }
    }

    fn decide(&self, json: &str) -> usize {
        let event: Event = serde_json::from_str(json).expect("valid event");
        let mut ctx = cel::Context::with_env(self.env.clone());
        ctx.add_variable("event", &event).expect("serializable");
        ctx.add_variable_from_value("now", cel::Value::Timestamp(event.time.fixed_offset()));
        self.programs
            .iter()
            .filter(|p| matches!(p.execute(&ctx), Ok(cel::Value::Bool(true))))
            .count()
    }
}

fn bench_decide(c: &mut Criterion) {
    let events = common::events(60);
    let now = "2026-04-20T22:30:00Z".parse().expect("valid time");
    let mut g = c.benchmark_group("decide");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for n in SIZES {
        let yaml = common::policies(n);
        let engine = Engine::builder()
            .add_source("gen.yaml", yaml.clone())
            .build()
            .expect("valid set");
        let naive = Naive::new(&yaml);
        assert_eq!(naive.programs.len(), n);
        g.bench_with_input(BenchmarkId::new("floor_parse_only", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % events.len();
                black_box(serde_json::from_str::<Event>(&events[i]).expect("valid event"))
            })
        });
        g.bench_with_input(BenchmarkId::new("keel", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % events.len();
                let ev: Event = serde_json::from_str(&events[i]).expect("valid event");
                black_box(engine.decide(&ev, &Ctx::new(now)))
            })
        });
        g.bench_with_input(BenchmarkId::new("keel_full", n), &n, |b, _| {
            let mut i = 0;
            let ctx = Ctx::new(now).with_mode(Mode::Full);
            b.iter(|| {
                i = (i + 1) % events.len();
                let ev: Event = serde_json::from_str(&events[i]).expect("valid event");
                black_box(engine.decide(&ev, &ctx))
            })
        });
        g.bench_with_input(BenchmarkId::new("naive_cel", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % events.len();
                black_box(naive.decide(&events[i]))
            })
        });
    }
    g.finish();
}

fn bench_load(c: &mut Criterion) {
    let yaml = common::policies(1000);
    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("load_compile_1000", |b| {
        b.iter(|| {
            black_box(
                Engine::builder()
                    .add_source("gen.yaml", yaml.clone())
                    .build()
                    .expect("valid set"),
            )
        })
    });
    g.finish();
}

/// What the host stores of each ingest body: the event and the decision as JSON with their
/// secrets redacted, beside the floor (serde_json writing them unredacted) and the way it was
/// done before (through a `serde_json::Value`).
fn bench_redact(c: &mut Criterion) {
    use keel_engine::normalize::{normalize, Input, NormalizerState};
    use keel_engine::redact::{redact, to_redacted_string};
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let body = std::fs::read(format!(
        "{root}/engine/tests/data/ingest/vm-agent-windows-2021-10-13.json"
    ))
    .unwrap();
    let at = "2021-10-13T07:03:00Z".parse().unwrap();
    let ev = normalize(
        "azure.arm",
        &Input::new(&body, at),
        &mut NormalizerState::default(),
    )
    .unwrap()
    .remove(0);
    let engine = Engine::from_dir(format!("{root}/policies/standard")).unwrap();
    let d = engine.decide(&ev, &Ctx::new(at));
    fn value_path<T: serde::Serialize>(t: &T) -> String {
        let mut v = serde_json::to_value(t).unwrap();
        redact(&mut v);
        serde_json::to_string(&v).unwrap()
    }
    let mut g = c.benchmark_group("redact");
    g.bench_function("event/unredacted", |b| {
        b.iter(|| serde_json::to_string(black_box(&ev)).unwrap())
    });
    g.bench_function("event/value_path", |b| {
        b.iter(|| value_path(black_box(&ev)))
    });
    g.bench_function("event/direct", |b| {
        b.iter(|| to_redacted_string(black_box(&ev)).unwrap())
    });
    g.bench_function("decision/unredacted", |b| {
        b.iter(|| serde_json::to_string(black_box(&d)).unwrap())
    });
    g.bench_function("decision/value_path", |b| {
        b.iter(|| value_path(black_box(&d)))
    });
    g.bench_function("decision/direct", |b| {
        b.iter(|| to_redacted_string(black_box(&d)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_decide, bench_load, bench_redact);
criterion_main!(benches);
