//! `keel status`: what the state database says now (pauses, held decisions, budget leases,
//! runbooks in flight, deferrals, the outbox backlog, the schema version), read-only, so it works while
//! `keel run` runs on it.

use std::fmt::Write as _;
use std::path::PathBuf;

use keel_engine::escape;

use crate::run::store::{Status, Store};
use crate::Exit;

/// Show the host's state: pauses, held decisions, budget leases, runbooks in flight, deferrals,
/// outbox.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel status\n  keel status --config /etc/keel/keel.yaml\n  keel status --json | jq '.in_flight[] | {event_id, step: .step.name}'\n  keel status --json | jq -r '.held[] | \"\\(.event_id) \\(.by) \\(.scope): \\(.reason)\"'\n\nThe database is opened read-only; `keel run` may be running on it. Each held decision says\nwhat holds it (pause, window, blocker or budget) and why; `budgets:` lists the slots taken.\n--json prints one object with the keys schema_version, pauses, held, leases, in_flight,\ndeferrals and outbox (stable: later versions only add keys)."
)]
pub struct Args {
    /// The configuration file (its `state` is the database read).
    #[arg(long, value_name = "FILE", default_value = "keel.yaml")]
    pub config: PathBuf,
    /// One JSON object, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Runs `keel status`.
pub fn run(args: Args) -> Exit {
    let cfg = match super::pause::state_config(&args.config) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let state = &cfg.state;
    if cfg.postgres.is_none() && !state.exists() {
        eprintln!(
            "error: no state database at {}: `keel run` has not run with this configuration yet",
            escape(&state.display().to_string())
        );
        return Exit::Host;
    }
    let now = crate::run::rfc(chrono::Utc::now());
    let status = Store::open_for_command(&cfg, true).and_then(|s| s.status(&now));
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Host;
        }
    };
    if args.json {
        match serde_json::to_string_pretty(&status) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Host;
            }
        }
    } else {
        print!("{}", text(&status));
    }
    Exit::Ok
}

/// The budgets section: per budget and key, the leases (holders, units, expiry) and the
/// decisions waiting for a slot.
fn budgets(o: &mut String, s: &Status) {
    let e = |t: &str| escape(t);
    let mut keys: Vec<(&str, &str)> = s
        .leases
        .iter()
        .map(|l| (l.budget.as_str(), l.key.as_str()))
        .collect();
    keys.dedup();
    let waiting = |scope: &str| {
        s.held
            .iter()
            .filter(|h| h.by == "budget" && h.scope == scope)
            .count()
    };
    let _ = writeln!(o, "budgets: {} key(s) with slots taken", keys.len());
    for (budget, key) in keys {
        let scope = format!("{budget}/{key}");
        let here: Vec<_> = s
            .leases
            .iter()
            .filter(|l| l.budget == budget && l.key == key)
            .collect();
        let max = here.first().map_or(0, |l| l.max_in_flight);
        let _ = writeln!(
            o,
            "  {}  {} lease(s), max_in_flight {max}, {} waiting",
            e(&scope),
            here.len(),
            waiting(&scope)
        );
        for l in here {
            let state = match &l.released_at {
                Some(r) => format!("released {}, baking until {}", e(r), e(&l.expires_at)),
                None => format!(
                    "held by {} since {}, expires {} unless renewed",
                    e(&l.holder),
                    e(&l.acquired_at),
                    e(&l.expires_at)
                ),
            };
            let _ = writeln!(
                o,
                "    unit {} (decision {}): {state}",
                e(&l.unit),
                e(&l.decision_id)
            );
        }
    }
}

/// The report for humans; every stored string is escaped.
fn text(s: &Status) -> String {
    let e = |t: &str| escape(t);
    let mut o = String::new();
    let _ = writeln!(o, "schema version: {}", s.schema_version);
    if s.pauses.is_empty() {
        let _ = writeln!(o, "paused: no");
    } else {
        let _ = writeln!(o, "paused: {} scope(s)", s.pauses.len());
        for p in &s.pauses {
            let _ = writeln!(
                o,
                "  {}  since {} by {}{}",
                e(&p.scope),
                e(&p.at),
                e(&p.by),
                if p.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e(&p.reason))
                }
            );
        }
    }
    let _ = writeln!(o, "held: {}", s.held.len());
    for h in &s.held {
        let _ = writeln!(
            o,
            "  {} {}  (decision {}) since {}, by {} {}, deadline {}\n    {}",
            e(&h.action),
            e(&h.event_id),
            e(&h.decision_id),
            e(&h.since),
            e(&h.by),
            e(&h.scope),
            h.deadline.as_deref().map_or_else(|| "none".into(), e),
            e(&h.reason),
        );
    }
    budgets(&mut o, s);
    let _ = writeln!(o, "runbooks in flight: {}", s.in_flight.len());
    for f in &s.in_flight {
        let step = f.step.as_ref().map_or_else(
            || "no step begun".to_string(),
            |st| {
                format!(
                    "step {} `{}` since {}{}",
                    st.index,
                    e(&st.name),
                    e(&st.started_at),
                    st.outcome
                        .as_deref()
                        .map_or_else(String::new, |x| format!(" ({})", e(x)))
                )
            },
        );
        let _ = writeln!(
            o,
            "  {} {}  (decision {}) since {}, {step}",
            e(&f.action),
            e(&f.event_id),
            e(&f.decision_id),
            e(&f.since),
        );
    }
    let _ = writeln!(o, "deferrals: {}", s.deferrals.len());
    for d in &s.deferrals {
        let _ = writeln!(o, "  {}  due {}", e(&d.event_id), e(&d.due));
    }
    let _ = writeln!(
        o,
        "outbox: {} undelivered{}",
        s.outbox.backlog,
        s.outbox
            .oldest
            .as_deref()
            .map_or_else(String::new, |t| format!(
                ", oldest {}, up to {} attempts",
                e(t),
                s.outbox.max_attempts
            ))
    );
    o
}
