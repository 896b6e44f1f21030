//! `keel demo`: the whole loop in one command, against a loopback Scheduled Events stub.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;

use crate::{config, library, render, run, stub, Exit};

/// Play a platform Reboot through drain to StartRequests, against a loopback stub.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel demo\n  keel demo --config host/examples/keel.yaml\n\nStarts a stub of the Azure Scheduled Events endpoint on loopback, runs the host with the\nexample configuration embedded in the binary (or --config) pointed at it, with the embedded\npolicy library and fresh state in .keel/demo.db under the current directory (with --config:\nits policies, and demo.db beside its state), announces a Reboot for the demo VM, and exits 0 only when the host drained\nthe VM, approved the event with StartRequests, and saw it complete. Works from any directory."
)]
pub struct Args {
    /// The configuration to run (its Scheduled Events URL is pointed at the stub); default:
    /// the example configuration embedded in the binary (`host/examples/keel.yaml`).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// Runs `keel demo`.
pub fn run(args: Args) -> Exit {
    let loaded = match &args.config {
        Some(path) => {
            if let Err(e) = super::require_path("--config", path) {
                return e;
            }
            config::load(path)
        }
        None => config::load_text(
            &Path::new(library::ROOT).join("keel.yaml"),
            library::DEMO_CONFIG,
            Path::new("."),
        )
        .map(|mut c| {
            // The example's state path is relative to its place in the repository.
            c.state = Path::new(".keel").join("demo.db");
            c
        }),
    };
    let mut cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &e);
            return Exit::Invalid;
        }
    };
    let Ok(rt) = tokio::runtime::Runtime::new() else {
        eprintln!("error: cannot start the runtime");
        return Exit::Host;
    };
    rt.block_on(async move {
        let stub = match stub::start(Duration::from_millis(1500)).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot start the stub: {e}");
                return Exit::Host;
            }
        };
        let Some(se) = cfg.azure_scheduled_events.as_mut() else {
            eprintln!("error: the configuration has no azure_scheduled_events source");
            return Exit::Usage;
        };
        se.url = stub.url();
        se.interval = Duration::from_millis(250);
        se.first_timeout = Duration::from_secs(5);
        cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.state = cfg.state.with_file_name("demo.db");
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", cfg.state.display()));
        }
        let vm = cfg.self_name.clone().unwrap_or_else(|| "demo-vm".into());
        println!("keel demo: stub IMDS at {}, VM `{vm}`, state {}", stub.url(), cfg.state.display());
        let host = match super::run::start_host(cfg) {
            Ok(h) => h,
            Err(exit) => return exit,
        };
        let (tx, rx) = watch::channel(false);
        let daemon = tokio::spawn(run::run(host.clone(), rx));
        tokio::time::sleep(Duration::from_millis(600)).await;
        let event_id = "6C0C4BD8-5B2B-4B6E-9C36-4E4B2C1D0A11";
        println!("keel demo: the platform announces a Reboot of `{vm}` in 15 minutes (EventId {event_id})");
        stub.schedule(event_id, "Reboot", &vm, Duration::from_secs(900));
        let deadline = crate::run::backoff::later(
            tokio::time::Instant::now(),
            Duration::from_secs(args.timeout),
        );
        let ok = loop {
            let done = stub.state.lock().map(|s| s.completed).unwrap_or(false);
            let completed_seen = host.metrics.get("keel_decisions_total", &[("action", "none"), ("policy", "-")]) >= 1.0;
            if done && completed_seen {
                break true;
            }
            if tokio::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let _ = tx.send(true);
        let _ = daemon.await;
        let steps = host.store.step_outcomes().unwrap_or_default();
        let approvals = stub.state.lock().map(|s| s.approvals.clone()).unwrap_or_default();
        println!("keel demo: steps run:");
        for (name, outcome) in &steps {
            println!("  {name:<10} {}", outcome.as_deref().unwrap_or("(unfinished)"));
        }
        println!("keel demo: StartRequests received by the stub: {approvals:?}");
        let drained_then_approved = steps.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() == ["announce", "cordon", "approve"]
            && steps.iter().all(|(_, o)| o.as_deref() == Some("ok"));
        if ok && drained_then_approved && approvals == [event_id] {
            println!("keel demo: ok: the Reboot was drained, approved with StartRequests, and completed");
            Exit::Ok
        } else {
            println!("keel demo: FAILED: the scenario did not complete within {}s", args.timeout);
            Exit::Failed
        }
    })
}
