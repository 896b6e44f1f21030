//! The blast-radius guards' cost in `Engine::decide`: one failure decided against a history
//! already holding 20,000 failures and their decisions across 40 scopes and 20,000 VMs (the
//! guards read per-scope and per-resource indexes), with the default guards and with them off,
//! in a region in a storm (held) and in a quiet one (allowed).
//!
//! Run: `cargo bench -p keel-engine --bench guards`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use chrono::Duration;
use criterion::{criterion_group, criterion_main, Criterion};
use keel_engine::{Ctx, Engine, Event, GuardConfig, History, Timestamp};

const POLICY: &str = r#"
policies:
  - name: retry
    on: [operation_failure]
    when: event.failure.category == "vm_agent"
    action: retry
"#;

fn failure(vm: usize, region: usize, at: Timestamp) -> Event {
    Event::from_json_str(&format!(
        r#"{{"id":"azure.arm:{vm}","time":"{time}","source":"azure.arm","kind":"operation_failure",
        "resource":{{"id":"vm-{vm}","name":"vm-{vm}","os":"windows","region":"region-{region}"}},
        "failure":{{"operation":"create","code":"X","category":"vm_agent","attempt":1}}}}"#,
        time = at.to_rfc3339()
    ))
    .unwrap()
}

fn bench_guards(c: &mut Criterion) {
    let start: Timestamp = "2021-10-13T14:00:00Z".parse().unwrap();
    let mut g = c.benchmark_group("decide_with_history");
    for (name, guards) in [
        ("guards_on", GuardConfig::default()),
        ("guards_off", GuardConfig::off()),
    ] {
        let e = Engine::builder()
            .add_source("p.yaml", POLICY)
            .guards(guards)
            .build()
            .unwrap();
        let mut h = History::new();
        // 20,000 failures over 10 minutes, 40 regions.
        for i in 0..20_000 {
            let ev = failure(i, i % 40, start + Duration::milliseconds(30 * i as i64));
            h.record(&ev);
            let d = e.decide(&ev, &Ctx::new(ev.time).with_history(&h));
            h.record_decision(&ev, &d);
        }
        // In a storming region (held by the storm guard when on), and in a quiet one (allowed).
        let stormy = failure(99_998, 7, start + Duration::minutes(10));
        let quiet = failure(99_999, 1_000, start + Duration::minutes(10));
        h.record(&stormy);
        h.record(&quiet);
        for (what, ev) in [("storming_region", &stormy), ("quiet_region", &quiet)] {
            g.bench_function(format!("{name}/{what}"), |b| {
                b.iter(|| black_box(e.decide(black_box(ev), &Ctx::new(ev.time).with_history(&h))))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_guards);
criterion_main!(benches);
