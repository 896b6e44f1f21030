//! `keel pause [SCOPE]` and `keel resume [SCOPE]`: stop new effects, globally or in a scope,
//! and lift the pause. Both write the state database in one short transaction, so they work
//! while `keel run` runs on it (its lock is for one host per state, not for these commands);
//! the running host sees the change within a second, and a restart keeps it.

use std::path::{Path, PathBuf};

use chrono::Utc;
use keel_engine::escape;

use crate::run::pause::Scope;
use crate::run::store::Store;
use crate::{config, render, Exit};

/// The longest `--reason` and `--by` accepted, in characters.
const MAX_TEXT: usize = 1024;

/// Stop new effects globally or in a scope; runbooks under way finish.
#[derive(clap::Args)]
#[command(
    after_help = "Scopes (case-insensitive):\n  all                    every event (the default)\n  region:NAME            resource.region is NAME\n  resource-group:NAME    the ARM resource id names the resource group NAME\n  resource:PREFIX        resource.id starts with PREFIX, or resource.name is PREFIX\n  /subscriptions/...     the same as resource: with it\nAn event that does not carry the field is in no scope but `all`.\n\nExamples:\n  keel pause --reason 'region incident INC-123'\n  keel pause region:westeurope --reason 'platform outage' --config /etc/keel/keel.yaml\n  keel pause resource-group:rg-web\n  keel pause /subscriptions/0000/resourceGroups/rg-db   (an id prefix)\n  keel status\n  keel resume region:westeurope\n\nA runbook whose first effect has not begun is held (the decision log says `held`); one\nunder way finishes. A held runbook starts on the resume (within a second), or escalates if\nits deadline (a drain's NotBefore) passes first. The `escalate` runbook is never paused."
)]
pub struct PauseArgs {
    /// The scope (see below); `all` when absent.
    #[arg(value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Why: shown by `keel status`, `/readyz` and the decision log.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub reason: String,
    /// Who pauses (default: $SUDO_USER, $USER, $LOGNAME).
    #[arg(long, value_name = "NAME")]
    pub by: Option<String>,
    /// The configuration file (its `state` is the database paused).
    #[arg(long, value_name = "FILE", default_value = "keel.yaml")]
    pub config: PathBuf,
}

/// Lift a pause (`keel pause`): the runbooks it held start.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel resume\n  keel resume region:westeurope\n  keel resume --all --config /etc/keel/keel.yaml\n\nThe scope is written as for `keel pause` (`keel status` lists the pauses); without one,\nthe global pause (`all`) is lifted. Resuming a scope that is not paused\nsays so and exits 0."
)]
pub struct ResumeArgs {
    /// The scope whose pause is lifted; `all` (the global pause) when absent.
    #[arg(value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Lift every pause, whatever its scope.
    #[arg(long, conflicts_with = "scope")]
    pub all: bool,
    /// The configuration file (its `state` is the database resumed).
    #[arg(long, value_name = "FILE", default_value = "keel.yaml")]
    pub config: PathBuf,
}

/// The configuration whose state a command reads, or the exit after printing why not.
pub fn state_config(path: &Path) -> Result<config::Config, Exit> {
    super::require_path("--config", path)?;
    match config::load_without_secrets(path) {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &e);
            eprintln!("error: the configuration is invalid");
            Err(Exit::Invalid)
        }
    }
}

fn parse_scope(s: Option<&str>) -> Result<Scope, Exit> {
    Scope::parse(s.unwrap_or("all")).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Usage
    })
}

fn open(path: &Path) -> Result<Store, Exit> {
    let cfg = state_config(path)?;
    Store::open_for_command(&cfg, false).map_err(|e| {
        eprintln!("error: {e}");
        Exit::Host
    })
}

fn text_ok(what: &str, s: &str) -> Result<(), Exit> {
    if s.chars().count() > MAX_TEXT {
        eprintln!("error: {what} is longer than {MAX_TEXT} characters");
        return Err(Exit::Usage);
    }
    Ok(())
}

/// Who runs the command, from the environment.
fn who() -> String {
    ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

/// Runs `keel pause`.
pub fn pause(args: PauseArgs) -> Exit {
    let go = || -> Result<Exit, Exit> {
        let scope = parse_scope(args.scope.as_deref())?;
        let by = args.by.clone().unwrap_or_else(who);
        text_ok("--reason", &args.reason)?;
        text_ok("--by", &by)?;
        let store = open(&args.config)?;
        let now = crate::run::rfc(Utc::now());
        let new = store
            .pause(&scope.to_string(), &args.reason, &by, &now)
            .map_err(|e| {
                eprintln!("error: {e}");
                Exit::Host
            })?;
        println!(
            "{} {scope} by {} at {now}{}: new runbooks in this scope are held; those under way finish",
            if new { "paused" } else { "still paused (reason updated)" },
            escape(&by),
            if args.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", escape(&args.reason))
            },
        );
        Ok(Exit::Ok)
    };
    go().unwrap_or_else(|e| e)
}

/// Runs `keel resume`.
pub fn resume(args: ResumeArgs) -> Exit {
    let go = || -> Result<Exit, Exit> {
        let scope = if args.all {
            None
        } else {
            Some(parse_scope(args.scope.as_deref())?.to_string())
        };
        let store = open(&args.config)?;
        let gone = store.resume(scope.as_deref()).map_err(|e| {
            eprintln!("error: {e}");
            Exit::Host
        })?;
        if gone.is_empty() {
            eprintln!(
                "no pause of scope {} (see `keel status`)",
                scope.as_deref().unwrap_or("any")
            );
            return Ok(Exit::Ok);
        }
        for s in gone {
            println!("resumed {}: the runbooks it held start", escape(&s));
        }
        Ok(Exit::Ok)
    };
    go().unwrap_or_else(|e| e)
}
