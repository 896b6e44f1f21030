//! An agent embedding Keel's engine: load the standard policies once, share the engine
//! across threads, and decide on events as they arrive.
//!
//! Run: `cargo run -p keel-engine --example embed`
//!
//! Expected output: one line per event, the Windows VM retried without the agent and its
//! Linux twin left alone, both with the same platform escalation key.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use keel_engine::{Ctx, Engine, Event};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    // 1. Load and validate the policy set once. A set with any problem is rejected whole,
    //    with every problem at file:line:column.
    let engine = Arc::new(Engine::from_dir(root.join("../policies/standard"))?);
    println!(
        "loaded {} policies (set {})",
        engine.len(),
        &engine.digest()[..12]
    );

    // 2. Events arrive from the agent's own sources; here, two files.
    let events = [
        "vm-agent-windows-2021-10-13.json",
        "vm-agent-linux-2021-10-13.json",
    ];

    // 3. Decide on several threads with one shared engine. The agent reads the clock and
    //    passes `now` in: the engine never does.
    let handles: Vec<_> = events
        .iter()
        .map(|name| {
            let engine = Arc::clone(&engine);
            let path = root.join("tests/data/events").join(name);
            thread::spawn(move || -> Result<String, String> {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                let event = Event::from_json_bytes(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let now = event.time + chrono::Duration::seconds(3);
                let d = engine.decide(&event, &Ctx::new(now));
                let keys: Vec<&str> = d.escalations.iter().map(|e| &e.key[..12]).collect();
                Ok(format!(
                    "{:<24} -> {:<20} policy={} escalations={keys:?}",
                    d.event_id.rsplit(':').next().unwrap_or(""),
                    d.action.as_str(),
                    d.policy.as_deref().unwrap_or("-"),
                ))
            })
        })
        .collect();
    for h in handles {
        match h.join() {
            Ok(Ok(line)) => println!("{line}"),
            Ok(Err(e)) => eprintln!("error: {e}"),
            Err(_) => eprintln!("error: a worker thread panicked"),
        }
    }
    Ok(())
}
