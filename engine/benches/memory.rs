//! Peak heap memory of loading 1000 policies and deciding on events, measured with a
//! counting global allocator.
//!
//! Run: `cargo bench -p keel-engine --bench memory`
// Benchmarks run on generated, known-valid inputs: a failure here is a bug in the generator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_engine::{Ctx, Engine, Event};

mod common;

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only adds bookkeeping.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        CURRENT.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static A: Counting = Counting;

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for n in [100, 1000] {
        let yaml = common::policies(n);
        let events = common::events(300);
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let engine = Engine::builder()
            .add_source("gen.yaml", yaml)
            .build()
            .expect("valid set");
        let after_load = CURRENT.load(Ordering::Relaxed) - base;
        let peak_load = PEAK.load(Ordering::Relaxed) - base;
        let now = "2026-04-20T22:30:00Z".parse().expect("valid time");
        let mut acts = 0usize;
        for e in &events {
            let ev: Event = serde_json::from_str(e).expect("valid event");
            let d = engine.decide(&ev, &Ctx::new(now));
            acts += d.matched.len();
        }
        let peak = PEAK.load(Ordering::Relaxed) - base;
        println!(
            "policies={n:<5} retained_after_load={:.2} MiB peak_during_load={:.2} MiB peak_incl_300_decisions={:.2} MiB (matched {acts})",
            mib(after_load),
            mib(peak_load),
            mib(peak)
        );
        drop(engine);
    }
}
