//! A plugin that misbehaves on purpose, chosen by `config: { mode: ... }`, so that the host's
//! tests can show that every fault becomes a policy error and never a crash. Never deploy it.
//!
//! Modes: `ok` (acknowledges), `spin` (loops forever), `alloc` (allocates without bound),
//! `panic`, `bad-action` (returns an action that does not exist), `bad-params` (returns params
//! that are not JSON), `defer-without-due`, `init-error` (fails `init`), `log` (logs, then
//! acknowledges), `stateful` (drains on its instance's first call only: global state that
//! outlives a call), `wide-filter` (queries the history with a filter of 17 entries, and says
//! what the host answered in its decision's reason), `alias-filter` (the same with 50,000
//! entries that all point at one 512 KiB string of its memory: 51 GB for a host that copies
//! each entry before counting them).

use keel_plugin::{Ctx, Decision, Event, Level, Plugin};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

static MODE: OnceLock<String> = OnceLock::new();
static CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(serde::Deserialize)]
struct Config {
    mode: String,
}

struct Hostile;

impl Plugin for Hostile {
    fn init(config: &str) -> Result<(), String> {
        let c: Config = serde_json::from_str(config).map_err(|e| format!("config: {e}"))?;
        if c.mode == "init-error" {
            return Err("this plugin refuses to start (mode init-error)".into());
        }
        let _ = MODE.set(c.mode);
        Ok(())
    }

    fn evaluate(event: Event, _ctx: Ctx) -> Option<Decision> {
        match MODE.get().map(String::as_str).unwrap_or("ok") {
            "spin" => {
                let mut x: u64 = event.time as u64;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    if x == 42 {
                        break;
                    }
                }
                Some(Decision::new("none"))
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 64 << 10]);
                    if std::hint::black_box(hoard.len()) == usize::MAX {
                        break;
                    }
                }
                Some(Decision::new("none"))
            }
            "panic" => panic!("hostile plugin panics on event {}", event.id),
            "bad-action" => Some(Decision::new("explode").reason("no such action")),
            "bad-params" => Some(Decision {
                action: "acknowledge".into(),
                reason: None,
                params_json: Some("{not json".into()),
                due: None,
            }),
            "defer-without-due" => Some(Decision::new("defer")),
            "stateful" => Some(if CALLS.fetch_add(1, Ordering::Relaxed) == 0 {
                Decision::new("drain").reason("first call of this instance")
            } else {
                Decision::new("acknowledge").reason("a later call of this instance")
            }),
            "log" => {
                keel_plugin::log(Level::Warn, "hostile plugin says hello");
                keel_plugin::log(Level::Debug, "not shown");
                Some(Decision::new("acknowledge"))
            }
            "wide-filter" => {
                let filter = vec![("resource.region", "eastus"); 17];
                let answer = match keel_plugin::history::count(&filter, 60) {
                    Ok(n) => format!("counted {n}"),
                    Err(e) => format!("refused: {e}"),
                };
                Some(Decision::new("acknowledge").reason(answer))
            }
            "alias-filter" => {
                let big = std::mem::ManuallyDrop::new("x".repeat(512 << 10));
                // Every entry's two strings are the same bytes (never freed: the list is
                // leaked, so that no buffer is freed twice).
                let alias = || {
                    // SAFETY: a `String` over `big`'s bytes, which outlive it (`big` is never
                    // dropped) and are valid UTF-8; it is never dropped or grown (the list
                    // holding it is leaked, and the host only reads it).
                    std::mem::ManuallyDrop::new(unsafe {
                        String::from_raw_parts(big.as_ptr() as *mut u8, big.len(), big.capacity())
                    })
                };
                let filter: std::mem::ManuallyDrop<Vec<(String, String)>> =
                    std::mem::ManuallyDrop::new(
                        (0..50_000)
                            .map(|_| {
                                (
                                    std::mem::ManuallyDrop::into_inner(alias()),
                                    std::mem::ManuallyDrop::into_inner(alias()),
                                )
                            })
                            .collect(),
                    );
                let answer =
                    match keel_plugin::bindings::keel::policy::host::history_count(&filter, 60) {
                        Ok(n) => format!("counted {n}"),
                        Err(e) => format!("refused: {e}"),
                    };
                Some(Decision::new("acknowledge").reason(answer))
            }
            _ => Some(Decision::new("acknowledge").reason("hostile plugin in mode ok")),
        }
    }
}

keel_plugin::export!(Hostile);
