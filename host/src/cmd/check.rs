//! `keel check [PATH]`: validate a policy set (by default the embedded library) and print
//! every problem.

use std::io::Write;
use std::path::PathBuf;

use keel_engine::Engine;

use crate::{render, Exit};

/// Validate a policy set and print every problem with its position.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel check\n  keel check policies/\n  keel check policies/standard/azure/vm-agent.yaml\n\nWith no PATH, checks the standard library embedded in the binary (its digest is the digest\nof a copy written by `keel policies export DIR` and checked with `keel check DIR`).\n\nExit codes: 0 valid, 3 invalid (every problem is printed, not only the first)."
)]
pub struct Args {
    /// A policy directory (loaded recursively; *.test.yaml files are skipped) or one file;
    /// default: the library embedded in the binary.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
}

/// Runs `keel check`.
pub fn run(args: Args) -> Exit {
    let loaded = match &args.path {
        Some(path) => Engine::from_dir(path),
        None => crate::library::builder().build(),
    };
    match loaded {
        Ok(engine) => {
            let native = engine.policies().filter(|p| p.native).count();
            let plugins = engine.policies().filter(|p| p.plugin.is_some()).count();
            let with_plugins = if plugins > 0 {
                format!(", {plugins} of them Wasm plugins")
            } else {
                String::new()
            };
            let embedded = if args.path.is_none() {
                " (the embedded library)"
            } else {
                ""
            };
            println!(
                "ok: {} policies ({} native, {} interpreted{with_plugins}), set {}{embedded}",
                engine.len(),
                native,
                engine.len() - native,
                &engine.digest()[..12]
            );
            Exit::Ok
        }
        Err(err) => {
            let mut stderr = std::io::stderr().lock();
            let _ = render::diagnostics(&mut stderr, &err);
            let n = err.diagnostics().len();
            let mut files: Vec<_> = err.diagnostics().iter().map(|d| d.file()).collect();
            files.sort();
            files.dedup();
            let _ = writeln!(
                stderr,
                "error: {n} problem{} in {} file{}; the policy set was not loaded",
                if n == 1 { "" } else { "s" },
                files.len(),
                if files.len() == 1 { "" } else { "s" }
            );
            Exit::Invalid
        }
    }
}
