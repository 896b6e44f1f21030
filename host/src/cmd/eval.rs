//! `keel eval`: decide events against a policy set and print the decisions.

use std::io::Write;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use keel_engine::{escape, Ctx, Decision, Engine, Event, Mode, Outcome};

use super::eval_input::Events;

use crate::{render, Exit};

/// Output format.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Human-readable.
    Text,
    /// One JSON object, valid against engine/schema/decision.schema.json.
    Json,
}

/// Decide normalized events (one document or JSON lines) against a policy set.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel eval --event event.json\n  keel eval --policies policies/ --event event.json\n  keel eval --policies policies/ --event - --now 2021-10-13T14:05:00Z --explain < event.json\n  keel eval --policies policies/ --event event.json --format json\n  keel eval --policies policies/ --event event.json --as-test >> policies/my.test.yaml\n  keel eval --policies policies/ --event event.json --explain --config keel.yaml\n  keel normalize --from azure.scheduled_events doc.json | keel eval --policies policies/ --event -\n  keel eval --policies policies/ --event event.json --fail || echo 'a policy failed'\n\nThe event is a normalized event (engine/schema/event.schema.json): one JSON document, or\nJSON lines (one event per line, blank lines skipped), each decided in turn with the events\nbefore it in the correlation history; text decisions are separated by a blank line, JSON\ndecisions are one line each. `now` defaults to the system clock, read here and passed to the\nengine, which never reads a clock itself. Without --policies, the standard library embedded\nin the binary decides.\n\nExit codes: 0 decided, 1 (--fail) a decision has errors, 2 usage error or an unreadable or\nmalformed event (its line named), 3 an invalid policy set or configuration."
)]
pub struct Args {
    /// Policy directory (recursive) or file; default: the library embedded in the binary.
    #[arg(long, value_name = "DIR")]
    pub policies: Option<PathBuf>,
    /// Normalized event JSON file, or `-` for standard input: one JSON document, or JSON lines
    /// (one event per line, as `keel normalize` prints them; blank lines are skipped).
    #[arg(long, value_name = "FILE|-")]
    pub event: String,
    /// The decision time (RFC 3339). Default: now.
    #[arg(long, value_name = "TIME")]
    pub now: Option<String>,
    /// Evaluate every candidate policy and show each policy's outcome.
    #[arg(long)]
    pub explain: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// A `keel.yaml`: also say what would hold the decided action's runbook in `keel run` now
    /// (its pauses, windows, blockers and budgets; the state database is read, read-only,
    /// when it exists). Text output only.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print a `keel test` case (YAML) that pins this decision, to paste into a *.test.yaml.
    #[arg(long, conflicts_with_all = ["explain", "format"])]
    pub as_test: bool,
    /// Exit 1 when a decision has errors (a policy that failed to evaluate); the decision is
    /// printed all the same.
    #[arg(long)]
    pub fail: bool,
}

/// Runs `keel eval`.
pub fn run(args: Args) -> Exit {
    let now: DateTime<Utc> = match &args.now {
        Some(s) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                eprintln!(
                    "error: --now {}: not an RFC 3339 time ({e}); e.g. 2021-10-13T14:05:00Z",
                    escape(s)
                );
                return Exit::Usage;
            }
        },
        None => Utc::now(),
    };
    if let Some(Err(e)) = args
        .policies
        .as_deref()
        .map(|p| super::require_path("--policies", p))
    {
        return e;
    }
    if let Some(Err(e)) = args
        .config
        .as_deref()
        .map(|p| super::require_path("--config", p))
    {
        return e;
    }
    let loaded = match &args.policies {
        Some(dir) => Engine::from_dir(dir),
        None => crate::library::builder().build(),
    };
    let engine = match loaded {
        Ok(e) => e,
        Err(err) => {
            let _ = render::diagnostics(&mut std::io::stderr().lock(), &err);
            eprintln!("error: the policy set is invalid");
            return Exit::Invalid;
        }
    };
    let mut events = match Events::open(&args.event) {
        Ok(e) => e,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Exit::Usage;
        }
    };
    let cfg = match &args.config {
        None => None,
        Some(p) => match crate::config::load_without_secrets(p) {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = render::diagnostics(&mut std::io::stderr().lock(), &e);
                eprintln!("error: the configuration is invalid");
                return Exit::Invalid;
            }
        },
    };
    let mode = if args.explain || args.as_test {
        Mode::Full
    } else {
        Mode::Fast
    };
    // The correlation history holds the events read so far, as in `keel run`: one event alone
    // is a fleet of one.
    let mut history = keel_engine::History::new();
    let mut out = std::io::stdout().lock();
    let mut errored = 0usize;
    let mut n = 0usize;
    loop {
        let event = match events.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(msg) => {
                eprintln!("error: {msg}");
                return Exit::Usage;
            }
        };
        history.record_at(&event, now);
        let decision = engine.decide(
            &event,
            &Ctx::new(now).with_mode(mode).with_history(&history),
        );
        history.record_decision_at(&event, &decision, now);
        errored += usize::from(!decision.errors.is_empty());
        let res = write_decision(&mut out, &args, cfg.as_ref(), &event, &decision, now, n);
        n += 1;
        match res {
            Ok(()) => {}
            // A closed pipe (`keel eval … | head`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(e) => {
                eprintln!("error: writing the decision: {e}");
                return Exit::Usage;
            }
        }
    }
    if errored > 0 && args.fail {
        eprintln!(
            "error: --fail: {errored} of {n} decision{} {} errors (a policy failed to evaluate)",
            if n == 1 { "" } else { "s" },
            if errored == 1 { "has" } else { "have" }
        );
        return Exit::Failed;
    }
    Exit::Ok
}

/// Writes the `n`th decision (from 0) in the chosen output: text decisions are separated by a
/// blank line, JSON decisions are one line each, `--as-test` cases follow each other.
fn write_decision(
    out: &mut dyn Write,
    args: &Args,
    cfg: Option<&crate::config::Config>,
    event: &Event,
    decision: &Decision,
    now: DateTime<Utc>,
    n: usize,
) -> std::io::Result<()> {
    if args.as_test {
        return as_test(out, event, decision, now);
    }
    match args.format {
        Format::Json => {
            serde_json::to_writer(&mut *out, decision).map_err(std::io::Error::other)?;
            writeln!(out)
        }
        Format::Text => {
            if n > 0 {
                writeln!(out)?;
            }
            text(out, decision)?;
            match cfg {
                Some(c) => gates(out, c, event, decision, now),
                None => Ok(()),
            }
        }
    }
}

/// What would hold `d`'s runbook in `keel run` at `now`, gate by gate, in the order the host
/// asks them (pause, windows, blockers, budgets). Every stored or event-derived string is
/// escaped.
fn gates(
    out: &mut dyn Write,
    cfg: &crate::config::Config,
    ev: &Event,
    d: &Decision,
    now: DateTime<Utc>,
) -> std::io::Result<()> {
    use crate::run::gate::Verdict;
    writeln!(out, "gates in keel run (as of {}):", now.to_rfc3339())?;
    if matches!(
        d.action,
        keel_engine::Action::Escalate | keel_engine::Action::None
    ) {
        return writeln!(out, "  `{}` is never held", d.action);
    }
    let store = (cfg.postgres.is_some() || cfg.state.exists())
        .then(|| crate::run::store::Store::open_for_command(cfg, true).ok())
        .flatten();
    let rfc = crate::run::rfc(now);
    // Pauses.
    match store.as_ref().map(|s| s.pauses()) {
        None => writeln!(out, "  pause: no state database to read")?,
        Some(Err(e)) => writeln!(
            out,
            "  pause: cannot read the state: {}",
            escape(&e.to_string())
        )?,
        Some(Ok(p)) => {
            let pairs: Vec<(String, String)> = p.into_iter().map(|p| (p.scope, p.reason)).collect();
            match crate::run::pause::matching(&pairs, ev) {
                Some((scope, reason)) => writeln!(
                    out,
                    "  pause: HELD by pause `{}`: {}",
                    escape(scope),
                    escape(reason)
                )?,
                None => writeln!(out, "  pause: no pause matches")?,
            }
        }
    }
    // Windows.
    let deadline = crate::run::pause::hold_deadline(ev, d, now);
    let verdict = crate::run::window::verdict(&cfg.windows, ev, d.action, deadline, now);
    match verdict {
        Verdict::Pass if cfg.windows.iter().any(|w| w.applies(d.action, ev)) => {
            writeln!(out, "  windows: open")?;
        }
        Verdict::Pass => writeln!(out, "  windows: none applies")?,
        Verdict::Hold { reason, .. } => writeln!(out, "  windows: HELD: {reason}")?,
        Verdict::Escalate(why) => writeln!(out, "  windows: ESCALATES: {why}")?,
    }
    // Blockers: their results live in the running host.
    let blockers: Vec<&str> = cfg
        .blockers
        .iter()
        .filter(|b| b.applies(d.action, ev))
        .map(|b| b.name.as_str())
        .collect();
    if blockers.is_empty() {
        writeln!(out, "  blockers: none applies")?;
    } else {
        writeln!(
            out,
            "  blockers: {} apply (checked by keel run; not run here)",
            blockers.join(", ")
        )?;
    }
    // Budgets.
    let mut any = false;
    for b in cfg.budgets.iter().filter(|b| b.actions.contains(&d.action)) {
        any = true;
        let (key, unit) = crate::run::budget::key_and_unit(b, ev);
        let state = match store.as_ref().map(|s| s.key_view(&b.name, &key, &rfc)) {
            None => "no state database: every slot is free".to_string(),
            Some(Err(e)) => format!("cannot read the state: {}", escape(&e.to_string())),
            Some(Ok(view)) => match crate::run::budget::admit(b, &key, &unit, &view) {
                Ok(()) => format!("a slot is free ({} lease(s) live)", view.live.len()),
                Err(why) => format!("HELD: {why}"),
            },
        };
        writeln!(
            out,
            "  budget {}: key {}, unit {}: {state}",
            b.name,
            escape(&key),
            escape(&unit)
        )?;
    }
    if !any {
        writeln!(out, "  budgets: none applies")?;
    }
    Ok(())
}

/// A test case pinning `d`: the event (JSON is YAML), `now`, and the decision's action,
/// winner, pages and errors.
fn as_test(
    out: &mut dyn Write,
    ev: &Event,
    d: &Decision,
    now: DateTime<Utc>,
) -> std::io::Result<()> {
    let mut ev = ev.clone();
    ev.raw = None;
    let event = serde_json::to_string(&ev).map_err(std::io::Error::other)?;
    let json = |v: &str| serde_json::to_string(v).unwrap_or_default();
    writeln!(
        out,
        "  - name: {}",
        json(&format!("{} decides {}", ev.id, d.action))
    )?;
    writeln!(out, "    now: {}", now.to_rfc3339())?;
    writeln!(out, "    event: {event}")?;
    writeln!(out, "    expect:")?;
    writeln!(out, "      action: {}", d.action)?;
    match &d.policy {
        Some(p) => writeln!(out, "      policy: {}", json(p))?,
        None => writeln!(out, "      policy: null")?,
    }
    let pages: Vec<String> = d
        .escalations
        .iter()
        .filter(|e| !e.repeat)
        .map(|e| format!("{{ policy: {} }}", json(&e.policy)))
        .collect();
    writeln!(out, "      escalations: [{}]", pages.join(", "))?;
    if !d.errors.is_empty() {
        let errs: Vec<String> = d.errors.iter().map(|e| json(&e.policy)).collect();
        writeln!(out, "      errors: [{}]", errs.join(", "))?;
    }
    Ok(())
}

fn text(out: &mut dyn Write, d: &Decision) -> std::io::Result<()> {
    writeln!(out, "event:    {}", escape(&d.event_id))?;
    writeln!(out, "action:   {}", d.action)?;
    writeln!(
        out,
        "policy:   {}",
        d.policy
            .as_deref()
            .map(escape)
            .unwrap_or_else(|| "- (default)".into())
    )?;
    if let Some(r) = &d.reason {
        writeln!(out, "reason:   {}", escape(r))?;
    }
    if let Some(g) = &d.guard {
        writeln!(
            out,
            "guard:    {} in {} held {}",
            g.name.as_str(),
            escape(&g.scope),
            g.held_action
        )?;
    }
    if !d.params.is_empty() {
        writeln!(
            out,
            "params:   {}",
            escape(&serde_json::Value::Object(d.params.clone()).to_string())
        )?;
    }
    if let Some(r) = &d.retry {
        let when = r
            .not_before
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "now".into());
        writeln!(
            out,
            "retry:    not before {when}{}",
            if r.request.is_some() {
                ", with request body"
            } else {
                ""
            }
        )?;
    }
    if let Some(due) = d.due {
        writeln!(out, "due:      {}", due.to_rfc3339())?;
    }
    for e in &d.escalations {
        writeln!(
            out,
            "escalate: [{}] {}: {} (key {})",
            serde_json::to_value(e.severity)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            escape(&e.policy),
            escape(&e.reason),
            &e.key[..16.min(e.key.len())]
        )?;
    }
    for e in &d.errors {
        writeln!(
            out,
            "error:    {}: {}",
            escape(&e.policy),
            escape(&e.message)
        )?;
    }
    for w in &d.warnings {
        writeln!(out, "warning:  {}", escape(w))?;
    }
    if !d.not_evaluated.is_empty() {
        writeln!(
            out,
            "not evaluated (could not win): {}",
            d.not_evaluated.len()
        )?;
    }
    if !d.trace.is_empty() {
        writeln!(out, "explain:")?;
        for (policy, outcome) in d.trace.iter() {
            let o = match outcome {
                Outcome::SkippedByIndex => "skipped by index",
                Outcome::False => "evaluated false",
                Outcome::Matched => "matched",
                Outcome::Exhausted => "matched, retries spent",
                Outcome::Errored => "errored",
                Outcome::NotEvaluated => "not evaluated",
                Outcome::Quarantined => "quarantined plugin",
                _ => "other",
            };
            let won = if d.policy.as_deref() == Some(policy) {
                "  <- wins"
            } else {
                ""
            };
            writeln!(out, "  {o:<22} {}{won}", escape(policy))?;
        }
    }
    Ok(())
}
