//! `Engine::decide` as a ratio to its floor, measured so that the machine's noise cancels:
//! each round times the floor (serde parsing the event into the typed `Event`), Keel in fast
//! mode and Keel in full mode back to back over the same events, in a rotating order, and
//! the ratio is taken within the round; the table gives the medians over the rounds. A
//! shared, frequency-scaling machine moves absolute times by a third between runs (and
//! criterion's separate groups with them); ratios within a round move by a few percent.
//!
//! Run: `cargo bench -p keel-engine --bench ratios` (`KEEL_BENCH_ROUNDS`, default 21).
// Benchmarks run on generated, known-valid inputs: a failure here is a bug in the generator.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use keel_engine::{Ctx, Engine, Event, Mode, Timestamp};

mod common;

const SIZES: [usize; 4] = [1, 10, 100, 1000];
/// Passes over the 60 events per measurement.
const PASSES: usize = 40;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per event of `f` over every event, `PASSES` times.
fn time(events: &[String], mut f: impl FnMut(&str)) -> f64 {
    let start = Instant::now();
    for _ in 0..PASSES {
        for e in events {
            f(e);
        }
    }
    start.elapsed().as_nanos() as f64 / (PASSES * events.len()) as f64
}

fn main() {
    let rounds: usize = std::env::var("KEEL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(21);
    let events = common::events(60);
    let now: Timestamp = "2026-04-20T22:30:00Z".parse().unwrap();
    let fast = Ctx::new(now);
    let full = Ctx::new(now).with_mode(Mode::Full);
    println!("policies | floor (ns) | fast (ns) | fast / floor | full (ns) | full / floor");
    println!("---: | ---: | ---: | ---: | ---: | ---:");
    // The generated sets, then the largest without its one-in-twenty `exists`/`matches`
    // tests.
    let sets = SIZES
        .iter()
        .map(|&n| (n.to_string(), common::policies(n)))
        .chain([(
            "1000, no `exists`".to_string(),
            common::policies_with(1000, false),
        )]);
    for (n, yaml) in sets {
        let engine = Engine::builder()
            .add_source("gen.yaml", yaml)
            .build()
            .expect("valid set");
        let floor = |e: &str| {
            black_box(serde_json::from_str::<Event>(e).unwrap());
        };
        let run = |ctx: &Ctx<'_>, e: &str| {
            let ev: Event = serde_json::from_str(e).unwrap();
            black_box(engine.decide(&ev, ctx));
        };
        // Warm up.
        time(&events, floor);
        time(&events, |e| run(&fast, e));
        time(&events, |e| run(&full, e));
        let (mut f0, mut f1, mut f2, mut r1, mut r2) = (vec![], vec![], vec![], vec![], vec![]);
        for round in 0..rounds {
            let mut t = [0.0; 3];
            for k in 0..3 {
                let which = (round + k) % 3;
                t[which] = match which {
                    0 => time(&events, floor),
                    1 => time(&events, |e| run(&fast, e)),
                    _ => time(&events, |e| run(&full, e)),
                };
            }
            f0.push(t[0]);
            f1.push(t[1]);
            f2.push(t[2]);
            r1.push(t[1] / t[0]);
            r2.push(t[2] / t[0]);
        }
        println!(
            "{n} | {:.0} | {:.0} | **{:.2}×** | {:.0} | **{:.2}×**",
            median(f0),
            median(f1),
            median(r1),
            median(f2),
            median(r2)
        );
    }
}
