//! `keel check [PATH] [--config FILE]`: validate a policy set (by default the library embedded
//! in the binary), a host configuration, or both, and print every problem.

use std::io::Write;
use std::path::{Path, PathBuf};

use keel_engine::{Diagnostic, Engine, LoadError};

use crate::{render, Exit};

/// Output format.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `file:line:col: error: ...` with the source line, and a summary line.
    Text,
    /// One JSON object per input checked, one per line (stable for scripts).
    Json,
}

/// Validate a policy set or a host configuration and print every problem with its position.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel check\n  keel check policies/\n  keel check policies/standard/azure/vm-agent.yaml\n  keel check --config /etc/keel/keel.yaml\n  keel check --config keel.yaml policies/ --format json | jq -c '.diagnostics[]'\n\n--config loads the configuration as `keel run` would, without reading the secrets it\nnames, and the policy set it names with its guards; nothing is started or written.\n--format json prints one object per input checked: {\"path\", \"kind\" (\"policies\" or\n\"config\"), \"ok\", \"diagnostics\": [{\"path\", \"line\", \"column\", \"message\", \"help\"}],\n\"warnings\": [the same]} (line and column are null for a problem with the whole file, help\nnull when there is none).\n\nWarnings do not fail the check: a policy reading a section its `on:` kinds never have\n(`event.failure` under `on: [maintenance]`, always absent there), and YAML in a policy\ndirectory that is not a policy file (no `policies:`: skipped).\n\nWith neither PATH nor --config, checks the standard library embedded in the binary (its\ndigest is the digest of a copy written by `keel policies export DIR`).\n\nExit codes: 0 valid, 2 a path that does not exist, 3 invalid (every problem is printed, not\nonly the first)."
)]
pub struct Args {
    /// A policy directory (loaded recursively; *.test.yaml files are skipped) or one file;
    /// with neither PATH nor --config: the library embedded in the binary.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// A host configuration (`keel.yaml`) to validate, with the policy set it names.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// What one input's check found.
struct Checked {
    path: PathBuf,
    kind: &'static str,
    /// The summary and the warnings, or the problems.
    result: Result<(String, Vec<Diagnostic>), LoadError>,
}

/// Runs `keel check`.
pub fn run(args: Args) -> Exit {
    if let Some(p) = &args.config {
        if let Err(e) = super::require_path("--config", p) {
            return e;
        }
    }
    if let Some(p) = &args.path {
        if let Err(e) = super::require_path("PATH", p) {
            return e;
        }
    }
    let mut checked = Vec::new();
    if let Some(p) = &args.config {
        checked.push(Checked {
            path: p.clone(),
            kind: "config",
            result: check_config(p),
        });
    }
    if let Some(p) = &args.path {
        checked.push(Checked {
            path: p.clone(),
            kind: "policies",
            result: Engine::from_dir(p).map(|e| (summary(&e), e.warnings().to_vec())),
        });
    }
    if args.path.is_none() && args.config.is_none() {
        checked.push(Checked {
            path: PathBuf::from(crate::library::ROOT),
            kind: "policies",
            result: crate::library::builder().build().map(|e| {
                let s = format!("{} (the embedded library)", summary(&e));
                (s, e.warnings().to_vec())
            }),
        });
    }
    let res = match args.format {
        Format::Text => text(&checked),
        Format::Json => json(&checked),
    };
    if let Err(e) = res {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing the result: {e}");
            return Exit::Usage;
        }
    }
    if checked.iter().all(|c| c.result.is_ok()) {
        Exit::Ok
    } else {
        Exit::Invalid
    }
}

/// Loads a configuration without its secrets, then the policy set it names with its guards,
/// as `keel run` would, but with no plugin cache on disk: nothing is written.
fn check_config(path: &Path) -> Result<(String, Vec<Diagnostic>), LoadError> {
    let cfg = crate::config::load_without_secrets(path)?;
    let b = match &cfg.policies {
        Some(dir) => Engine::builder().add_path(dir),
        None => crate::library::builder(),
    };
    let b = b.guards(cfg.guards.clone());
    #[cfg(feature = "plugins")]
    let b = b.plugin_cache_dir(None);
    let engine = b.build()?;
    let summary = format!(
        "{} policies from {}, set {}",
        engine.len(),
        cfg.policies.as_ref().map_or_else(
            || crate::library::ROOT.to_string(),
            |p| p.display().to_string()
        ),
        &engine.digest()[..12]
    );
    Ok((summary, engine.warnings().to_vec()))
}

fn summary(engine: &Engine) -> String {
    let native = engine.policies().filter(|p| p.native).count();
    let plugins = engine.policies().filter(|p| p.plugin.is_some()).count();
    let with_plugins = if plugins > 0 {
        format!(", {plugins} of them Wasm plugins")
    } else {
        String::new()
    };
    format!(
        "{} policies ({} native, {} interpreted{with_plugins}), set {}",
        engine.len(),
        native,
        engine.len() - native,
        &engine.digest()[..12]
    )
}

fn text(checked: &[Checked]) -> std::io::Result<()> {
    for c in checked {
        match &c.result {
            Ok((summary, warnings)) => {
                if !warnings.is_empty() {
                    let mut stderr = std::io::stderr().lock();
                    render::list(&mut stderr, warnings, "warning")?;
                }
                let n = warnings.len();
                let noted = match n {
                    0 => String::new(),
                    1 => " (1 warning)".to_string(),
                    n => format!(" ({n} warnings)"),
                };
                if c.kind == "config" {
                    println!(
                        "{}: ok ({}){noted}",
                        keel_engine::escape(&c.path.display().to_string()),
                        keel_engine::escape(summary)
                    );
                } else {
                    println!("ok: {}{noted}", keel_engine::escape(summary));
                }
            }
            Err(err) => {
                let mut stderr = std::io::stderr().lock();
                render::diagnostics(&mut stderr, err)?;
                let n = err.diagnostics().len();
                let mut files: Vec<_> = err.diagnostics().iter().map(|d| d.file()).collect();
                files.sort();
                files.dedup();
                let what = if c.kind == "config" {
                    "the configuration is invalid"
                } else {
                    "the policy set was not loaded"
                };
                writeln!(
                    stderr,
                    "error: {n} problem{} in {} file{}; {what}",
                    if n == 1 { "" } else { "s" },
                    files.len(),
                    if files.len() == 1 { "" } else { "s" }
                )?;
            }
        }
    }
    Ok(())
}

fn json(checked: &[Checked]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for c in checked {
        let as_json = |ds: &[Diagnostic]| -> Vec<serde_json::Value> {
            ds.iter()
                .map(|d| {
                    let pos = |n: usize| (n > 0).then_some(n);
                    serde_json::json!({
                        "path": d.file().display().to_string(),
                        "line": pos(d.line()),
                        "column": pos(d.line()).and(pos(d.column())),
                        "message": d.message(),
                        "help": d.help(),
                    })
                })
                .collect()
        };
        let (diagnostics, warnings) = match &c.result {
            Ok((_, warnings)) => (Vec::new(), as_json(warnings)),
            Err(err) => (as_json(err.diagnostics()), Vec::new()),
        };
        let obj = serde_json::json!({
            "path": c.path.display().to_string(),
            "kind": c.kind,
            "ok": c.result.is_ok(),
            "diagnostics": diagnostics,
            "warnings": warnings,
        });
        serde_json::to_writer(&mut out, &obj).map_err(std::io::Error::other)?;
        writeln!(out)?;
    }
    Ok(())
}
