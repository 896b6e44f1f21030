//! `keel history`: past decisions and their runbooks' steps, from the state (SQLite or a
//! fleet's PostgreSQL), read-only, so it works while `keel run` runs on it.

use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use keel_engine::escape;

use crate::run::rfc;
use crate::run::store::{HistoryQuery, PastDecision, Store};
use crate::Exit;

/// Show past decisions and their runbooks' steps.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  keel history\n  keel history --since 2h --action drain\n  keel history --event web-win-17 --config /etc/keel/keel.yaml\n  keel history --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z --json | jq -c '{time, action, runbook}'\n\nDecisions are listed oldest first among the newest --limit that match, each with its\nrunbook's state and steps (outcome, attempts). --since takes a duration before now (90s, 2h,\n7d) or an RFC 3339 time; --event matches any part of the event id, ignoring case.\n--json prints one object per line with the keys time, decision_id, event_id, action,\npolicy, reason, mode, runbook, host and steps (stable: later versions only add keys). The database is opened read-only."
)]
pub struct Args {
    /// The configuration file (its `state` is the database read).
    #[arg(long, value_name = "FILE", default_value = "keel.yaml")]
    pub config: PathBuf,
    /// Only decisions made since then: a duration before now (`2h`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "24h")]
    pub since: String,
    /// Only decisions made until then (an RFC 3339 time); default: now.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only events whose id contains this text (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub event: Option<String>,
    /// Only decisions of this action (`drain`, `retry_without_agent`, `escalate`, ...).
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// At most this many decisions (the newest).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// One JSON object per line, for scripts.
    #[arg(long)]
    pub json: bool,
}

/// `--since`: a duration before `now`, or an RFC 3339 time.
fn when(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    let d = keel_engine::parse_duration(s).ok()?;
    let d = chrono::Duration::from_std(d).ok()?;
    Some(
        now.checked_sub_signed(d)
            .unwrap_or(DateTime::<Utc>::MIN_UTC),
    )
}

/// Runs `keel history`.
pub fn run(args: Args) -> Exit {
    let now = Utc::now();
    let Some(since) = when(&args.since, now) else {
        eprintln!(
            "error: --since {}: expected a duration (90s, 2h, 7d) or an RFC 3339 time",
            escape(&args.since)
        );
        return Exit::Usage;
    };
    let until = match args.until.as_deref() {
        None => now,
        Some(u) => match DateTime::parse_from_rfc3339(u) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => {
                eprintln!("error: --until {}: expected an RFC 3339 time", escape(u));
                return Exit::Usage;
            }
        },
    };
    let cfg = match super::pause::state_config(&args.config) {
        Ok(c) => c,
        Err(e) => return e,
    };
    if cfg.postgres.is_none() && !cfg.state.exists() {
        eprintln!(
            "error: no state database at {}: `keel run` has not run with this configuration yet",
            escape(&cfg.state.display().to_string())
        );
        return Exit::Host;
    }
    let q = HistoryQuery {
        since: rfc(since),
        until: rfc(until),
        event: args.event,
        action: args.action,
        limit: args.limit,
    };
    let past = match Store::open_for_command(&cfg, true).and_then(|s| s.history(&q)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Host;
        }
    };
    if args.json {
        for d in &past {
            match serde_json::to_string(d) {
                Ok(s) => println!("{s}"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Exit::Host;
                }
            }
        }
    } else {
        print!("{}", table(&past, &q));
    }
    Exit::Ok
}

/// The text form: one line per decision, its steps indented below it.
fn table(past: &[PastDecision], q: &HistoryQuery) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{} decision(s) from {} to {}",
        past.len(),
        q.since,
        q.until
    );
    for d in past {
        let host = if d.host.is_empty() {
            String::new()
        } else {
            format!("  host {}", escape(&d.host))
        };
        let _ = writeln!(
            o,
            "{}  {:<20} {:<10} {}  policy {}{host}{}",
            escape(&d.time),
            escape(&d.action),
            escape(&d.runbook),
            escape(&d.event_id),
            escape(d.policy.as_deref().unwrap_or("-")),
            if d.mode == "live" { "" } else { "  (dry run)" },
        );
        for s in &d.steps {
            let _ = writeln!(
                o,
                "    step {} {:<16} {:<24} {} attempt(s), started {}{}",
                s.index,
                escape(&s.name),
                escape(s.outcome.as_deref().unwrap_or("running")),
                s.attempts,
                escape(&s.started_at),
                s.finished_at
                    .as_deref()
                    .map_or(String::new(), |f| format!(", finished {}", escape(f))),
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::run::store::PastStep;

    /// Every field read from the database is shown escaped: in a fleet, any host (or anyone
    /// who can write the database) writes them, and a raw escape sequence or newline would
    /// reach the operator's terminal or forge a line.
    #[test]
    fn the_table_shows_no_control_character_from_the_database() {
        let hostile = "x\u{1b}[2J\nforged";
        let d = PastDecision {
            time: hostile.into(),
            decision_id: hostile.into(),
            event_id: hostile.into(),
            action: hostile.into(),
            policy: Some(hostile.into()),
            reason: Some(hostile.into()),
            mode: "live".into(),
            runbook: hostile.into(),
            host: hostile.into(),
            steps: vec![PastStep {
                index: 0,
                name: hostile.into(),
                started_at: hostile.into(),
                finished_at: Some(hostile.into()),
                attempts: 1,
                outcome: Some(hostile.into()),
            }],
        };
        let q = HistoryQuery {
            since: "a".into(),
            until: "b".into(),
            event: None,
            action: None,
            limit: 10,
        };
        let out = table(&[d], &q);
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(!out.lines().any(|l| l.starts_with("forged")), "{out:?}");
    }
}
