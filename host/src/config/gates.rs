//! `windows:` and `blockers:` in `keel.yaml`: what may hold an action before its runbook's
//! first effect besides `keel pause`. A maintenance window says when an action may run (days,
//! times, an IANA time zone); a blocker is a check (`exec`, `http`, `prometheus`) that must be
//! clear. The logic is in `run::window` and `run::blocker`.

use std::time::Duration;

use chrono::{NaiveTime, Weekday};
use keel_engine::Action;
use serde_json::Value;

use super::runbooks::strsim_hint;
use super::{name_ok, V};
use crate::scope::Scope;

/// A maintenance window (`windows:`): the actions it names may start only while it is open.
#[derive(Debug, Clone)]
pub struct Window {
    /// Its name, unique among the windows.
    pub name: String,
    /// The local days the window opens on (default every day).
    pub days: Vec<Weekday>,
    /// When it opens, local time.
    pub start: NaiveTime,
    /// When it closes, local time; at or before `start`: on the next day.
    pub end: NaiveTime,
    /// The IANA time zone of `days`, `start` and `end` (default UTC).
    pub time_zone: chrono_tz::Tz,
    /// The actions it applies to (default `drain`); never `escalate` or `none`.
    pub actions: Vec<Action>,
    /// The events it applies to (the pause scope grammar; default all).
    pub scope: Scope,
}

/// What a blocker checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockerCheck {
    /// A program (argv, no shell): clear when it exits with status 0.
    Exec(Vec<String>),
    /// A `GET` of this URL: clear on a 2xx answer.
    Http(String),
    /// A Prometheus instant query (`GET {url}/api/v1/query?query=...`): clear when its
    /// result is empty.
    Prometheus {
        /// The server's base URL, without a trailing slash.
        url: String,
        /// The PromQL query.
        query: String,
    },
}

/// A blocker (`blockers:`): while its check is not clear, the actions it names are held.
#[derive(Debug, Clone)]
pub struct Blocker {
    /// Its name, unique among the blockers (also the `blocker` label of its metric).
    pub name: String,
    /// What it checks.
    pub check: BlockerCheck,
    /// How often it is checked (default 60 s).
    pub interval: Duration,
    /// How long one check may take (default 10 s); a check past it counts as blocked.
    pub timeout: Duration,
    /// The actions it applies to (default `drain`); never `escalate` or `none`.
    pub actions: Vec<Action>,
    /// The events it applies to (the pause scope grammar; default all).
    pub scope: Scope,
}

/// `blockers[].interval` when not given.
pub const DEFAULT_BLOCKER_INTERVAL: Duration = Duration::from_secs(60);
/// `blockers[].timeout` when not given.
pub const DEFAULT_BLOCKER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest Prometheus query accepted.
pub const MAX_QUERY_LEN: usize = 4096;

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

/// Reads `windows:`, a list of windows with unique names.
pub(super) fn parse_windows(v: &mut V<'_>, val: Option<&Value>) -> Vec<Window> {
    let (mut out, mut seen) = (Vec::new(), Vec::new());
    let Some(val) = val else { return out };
    let Value::Array(items) = val else {
        v.err("/windows", "expected a list of windows");
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("/windows/{i}");
        v.keys(
            &p,
            item,
            &[
                "name",
                "days",
                "start",
                "end",
                "time_zone",
                "actions",
                "scope",
            ],
        );
        if !item.is_object() {
            continue;
        }
        let name = name(v, &p, item, &mut seen);
        let days = days(v, &format!("{p}/days"), item.get("days"));
        let start = hh_mm(v, &format!("{p}/start"), item.get("start"));
        let end = hh_mm(v, &format!("{p}/end"), item.get("end"));
        let time_zone = time_zone(v, &format!("{p}/time_zone"), item.get("time_zone"));
        let actions = actions(v, &format!("{p}/actions"), item.get("actions"));
        let scope = scope(v, &format!("{p}/scope"), item.get("scope"));
        if let (Some(name), Some(start), Some(end)) = (name, start, end) {
            out.push(Window {
                name,
                days,
                start,
                end,
                time_zone,
                actions,
                scope,
            });
        }
    }
    out
}

/// Reads `blockers:`, a list of blockers with unique names.
pub(super) fn parse_blockers(v: &mut V<'_>, val: Option<&Value>) -> Vec<Blocker> {
    let (mut out, mut seen) = (Vec::new(), Vec::new());
    let Some(val) = val else { return out };
    let Value::Array(items) = val else {
        v.err("/blockers", "expected a list of blockers");
        return out;
    };
    for (i, item) in items.iter().enumerate() {
        let p = format!("/blockers/{i}");
        v.keys(
            &p,
            item,
            &[
                "name",
                "exec",
                "http",
                "prometheus",
                "interval",
                "timeout",
                "actions",
                "scope",
            ],
        );
        if !item.is_object() {
            continue;
        }
        let name = name(v, &p, item, &mut seen);
        let check = check(v, &p, item);
        let interval = v.positive_at(&p, item, "interval", DEFAULT_BLOCKER_INTERVAL);
        let timeout = v.positive_at(&p, item, "timeout", DEFAULT_BLOCKER_TIMEOUT);
        let actions = actions(v, &format!("{p}/actions"), item.get("actions"));
        let scope = scope(v, &format!("{p}/scope"), item.get("scope"));
        if let (Some(name), Some(check)) = (name, check) {
            out.push(Blocker {
                name,
                check,
                interval,
                timeout,
                actions,
                scope,
            });
        }
    }
    out
}

/// `name`: required, letters, digits, `-`, `_`, `.` (1 to 64), not one of `seen` (the
/// names before it, to which it is added).
fn name(v: &mut V<'_>, p: &str, item: &Value, seen: &mut Vec<String>) -> Option<String> {
    let ptr = format!("{p}/name");
    match item.get("name") {
        None => {
            v.err(p, "`name` is required");
            None
        }
        Some(Value::String(s)) if name_ok(s, 64, "-_.") => {
            if seen.contains(s) {
                v.err(&ptr, format!("duplicate name `{s}`"));
                return None;
            }
            seen.push(s.clone());
            Some(s.clone())
        }
        Some(_) => {
            v.err(
                &ptr,
                "expected a name of 1 to 64 letters, digits, `-`, `_` or `.`",
            );
            None
        }
    }
}

/// `days`: a non-empty list of `mon` to `sun`; every day when absent.
fn days(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> Vec<Weekday> {
    let all: Vec<Weekday> = DAYS.iter().map(|(_, d)| *d).collect();
    let Some(val) = val else { return all };
    let names: Vec<&str> = DAYS.iter().map(|(n, _)| *n).collect();
    let Value::Array(items) = val else {
        v.err(
            ptr,
            format!("expected a list of days: {}", names.join(", ")),
        );
        return all;
    };
    if items.is_empty() {
        v.err(
            ptr,
            "expected at least one day (leave `days` out for every day)",
        );
        return all;
    }
    let mut out = Vec::new();
    for (i, d) in items.iter().enumerate() {
        let ptr = format!("{ptr}/{i}");
        let got = d.as_str().map(str::to_ascii_lowercase);
        match got
            .as_deref()
            .and_then(|g| DAYS.iter().find(|(n, _)| *n == g))
        {
            Some((_, day)) if out.contains(day) => v.err(&ptr, "this day is listed twice"),
            Some((_, day)) => out.push(*day),
            None => {
                let hint = got
                    .map(|g| strsim_hint(&keel_engine::escape(&g), &names))
                    .unwrap_or_default();
                v.err(
                    &ptr,
                    format!("expected a day{hint}: one of {}", names.join(", ")),
                );
            }
        }
    }
    out
}

/// `start` or `end`: a required `HH:MM` (24 h).
fn hh_mm(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> Option<NaiveTime> {
    let parsed = val.and_then(Value::as_str).and_then(|s| {
        let (h, m) = s.split_once(':')?;
        let two = |x: &str| -> Option<u32> {
            (x.len() == 2 && x.bytes().all(|b| b.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        let (h, m) = (two(h)?, two(m)?);
        NaiveTime::from_hms_opt(h, m, 0)
    });
    if parsed.is_none() {
        let what = if val.is_none() { "required: " } else { "" };
        v.err(
            ptr,
            format!("{what}expected a local time HH:MM (24 h), such as \"22:00\""),
        );
    }
    parsed
}

/// `time_zone`: an IANA time zone name; UTC when absent.
fn time_zone(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> chrono_tz::Tz {
    match val {
        None => chrono_tz::UTC,
        Some(Value::String(s)) => s.parse::<chrono_tz::Tz>().unwrap_or_else(|_| {
            v.err(
                ptr,
                format!(
                    "unknown time zone `{}`: expected an IANA name such as Europe/Berlin, \
                     America/New_York or UTC",
                    keel_engine::escape(s)
                ),
            );
            chrono_tz::UTC
        }),
        Some(_) => {
            v.err(ptr, "expected an IANA time zone name such as Europe/Berlin");
            chrono_tz::UTC
        }
    }
}

/// `actions`: a non-empty list of the engine's actions but `escalate` and `none`; `drain`
/// when absent.
fn actions(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> Vec<Action> {
    let Some(val) = val else {
        return vec![Action::Drain];
    };
    let names: Vec<&str> = Action::ALL
        .iter()
        .filter(|a| !matches!(a, Action::Escalate | Action::None))
        .map(|a| a.as_str())
        .collect();
    let Value::Array(items) = val else {
        v.err(
            ptr,
            format!("expected a list of actions: {}", names.join(", ")),
        );
        return Vec::new();
    };
    if items.is_empty() {
        v.err(
            ptr,
            "expected at least one action (leave `actions` out for drain)",
        );
    }
    let mut out = Vec::new();
    for (i, a) in items.iter().enumerate() {
        let ptr = format!("{ptr}/{i}");
        match a.as_str().and_then(Action::parse) {
            Some(Action::Escalate) => v.err(&ptr, "`escalate` is never held"),
            Some(Action::None) => v.err(&ptr, "`none` has nothing to hold"),
            Some(a) if !out.contains(&a) => out.push(a),
            Some(_) => v.err(&ptr, "this action is listed twice"),
            None => {
                let hint = a
                    .as_str()
                    .map(|g| strsim_hint(&keel_engine::escape(g), &names))
                    .unwrap_or_default();
                v.err(
                    &ptr,
                    format!("expected an action{hint}: one of {}", names.join(", ")),
                );
            }
        }
    }
    out
}

/// `scope`: the pause scope grammar (`all`, `region:NAME`, `resource-group:NAME`,
/// `resource:PREFIX`, a resource id); all when absent.
fn scope(v: &mut V<'_>, ptr: &str, val: Option<&Value>) -> Scope {
    match val {
        None => Scope::All,
        Some(Value::String(s)) => Scope::parse(s).unwrap_or_else(|e| {
            v.err(ptr, e.to_string());
            Scope::All
        }),
        Some(_) => {
            v.err(ptr, "expected a scope such as region:westeurope");
            Scope::All
        }
    }
}

/// A blocker's check: exactly one of `exec`, `http`, `prometheus`.
fn check(v: &mut V<'_>, p: &str, item: &Value) -> Option<BlockerCheck> {
    let kinds: Vec<&str> = ["exec", "http", "prometheus"]
        .into_iter()
        .filter(|k| item.get(*k).is_some())
        .collect();
    match kinds.as_slice() {
        ["exec"] => match item.get("exec") {
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {
                Some(BlockerCheck::Exec(
                    a.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                ))
            }
            _ => {
                v.err(
                    &format!("{p}/exec"),
                    "`exec` is an argv list of strings (no shell), e.g. [\"/usr/local/bin/check\"]",
                );
                None
            }
        },
        ["http"] => {
            let ptr = format!("{p}/http");
            let before = v.diags.len();
            let url = v.url(&ptr, item.get("http"), "");
            (v.diags.len() == before).then_some(BlockerCheck::Http(url))
        }
        ["prometheus"] => prometheus(v, &format!("{p}/prometheus"), item.get("prometheus")),
        [] => {
            v.err(p, "a blocker needs one of exec, http, prometheus");
            None
        }
        _ => {
            v.err(
                p,
                format!("a blocker checks one thing; found {}", kinds.join(", ")),
            );
            None
        }
    }
}

/// `prometheus: {url, query}`.
fn prometheus(v: &mut V<'_>, p: &str, val: Option<&Value>) -> Option<BlockerCheck> {
    let val = val?;
    v.keys(p, val, &["url", "query"]);
    if !val.is_object() {
        return None;
    }
    let before = v.diags.len();
    let url = match val.get("url") {
        None => {
            v.err(
                p,
                "`url` is required: the Prometheus server, e.g. http://127.0.0.1:9090",
            );
            String::new()
        }
        u => v.url(&format!("{p}/url"), u, ""),
    };
    let query = match val.get("query") {
        Some(Value::String(q))
            if !q.trim().is_empty()
                && q.chars().count() <= MAX_QUERY_LEN
                && !q.chars().any(|c| c.is_control() && c != '\n' && c != '\t') =>
        {
            q.clone()
        }
        None => {
            v.err(
                p,
                "`query` is required: a PromQL query that returns nothing when clear",
            );
            String::new()
        }
        Some(_) => {
            v.err(
                &format!("{p}/query"),
                format!("expected a PromQL query of 1 to {MAX_QUERY_LEN} characters"),
            );
            String::new()
        }
    };
    (v.diags.len() == before).then_some(BlockerCheck::Prometheus { url, query })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Loads `yaml` (after a `policies: .` line) as `keel.yaml`; the rendered diagnostics on
    /// failure.
    fn load(yaml: &str) -> Result<super::super::Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.yaml");
        std::fs::write(&path, format!("policies: .\n{yaml}")).unwrap();
        super::super::load(&path).map_err(|e| {
            e.diagnostics()
                .iter()
                .map(|d| format!("{}:{}: {}", d.line(), d.column(), d.message()))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn a_window_and_a_blocker_with_their_defaults() {
        let cfg = load(
            "windows:\n  - name: nights\n    start: \"22:00\"\n    end: 04:30\n\
             blockers:\n  - name: deploys\n    http: http://127.0.0.1:9/busy/\n",
        )
        .unwrap();
        let w = &cfg.windows[0];
        assert_eq!(w.name, "nights");
        assert_eq!(w.days.len(), 7);
        assert_eq!(w.start, NaiveTime::from_hms_opt(22, 0, 0).unwrap());
        assert_eq!(w.end, NaiveTime::from_hms_opt(4, 30, 0).unwrap());
        assert_eq!(w.time_zone, chrono_tz::UTC);
        assert_eq!(w.actions, [Action::Drain]);
        assert_eq!(w.scope, Scope::All);
        let b = &cfg.blockers[0];
        assert_eq!(
            b.check,
            BlockerCheck::Http("http://127.0.0.1:9/busy".into())
        );
        assert_eq!(
            (b.interval, b.timeout, b.actions.as_slice()),
            (
                DEFAULT_BLOCKER_INTERVAL,
                DEFAULT_BLOCKER_TIMEOUT,
                &[Action::Drain][..]
            )
        );
    }

    #[test]
    fn every_key_is_read() {
        let cfg = load(
            "windows:\n  - name: w\n    days: [Sat, sun]\n    start: \"01:30\"\n    end: \"03:00\"\n    \
             time_zone: America/New_York\n    actions: [drain, retry]\n    scope: region:eastus\n\
             blockers:\n  - name: b1\n    exec: [/bin/true, x]\n    interval: 5s\n    timeout: 1s\n    \
             actions: [acknowledge]\n    scope: resource-group:rg1\n  - name: b2\n    prometheus:\n      \
             url: http://127.0.0.1:9090/\n      query: ALERTS{alertstate=\"firing\"}\n",
        )
        .unwrap();
        let w = &cfg.windows[0];
        assert_eq!(w.days, [Weekday::Sat, Weekday::Sun]);
        assert_eq!(w.time_zone, chrono_tz::America::New_York);
        assert_eq!(w.actions, [Action::Drain, Action::Retry]);
        assert_eq!(w.scope, Scope::Region("eastus".into()));
        let b = &cfg.blockers[0];
        assert_eq!(
            b.check,
            BlockerCheck::Exec(vec!["/bin/true".into(), "x".into()])
        );
        assert_eq!(b.interval, Duration::from_secs(5));
        assert_eq!(b.timeout, Duration::from_secs(1));
        assert_eq!(b.actions, [Action::Acknowledge]);
        assert_eq!(b.scope, Scope::ResourceGroup("rg1".into()));
        assert_eq!(
            cfg.blockers[1].check,
            BlockerCheck::Prometheus {
                url: "http://127.0.0.1:9090".into(),
                query: "ALERTS{alertstate=\"firing\"}".into()
            }
        );
    }

    #[test]
    fn mistakes_are_reported_at_their_position() {
        let err = load(
            "windows:\n  - name: w\n    days: [mon, mo]\n    start: \"25:00\"\n    end: 3\n    \
             time_zone: Europe/Berlinn\n    actions: [escalate]\n    scope: zone:1\n  \
             - name: w\n    start: \"01:00\"\n    end: \"02:00\"\n\
             blockers:\n  - name: b\n    exec: [/bin/true]\n    http: http://127.0.0.1:9/\n  \
             - name: c\n    http: ftp://x\n  - name: d\n    prometheus: {url: \"http://127.0.0.1:1\"}\n  \
             - exec: [/bin/true]\n    timout: 1s\n",
        )
        .unwrap_err();
        let want = [
            "4:17: expected a day (did you mean `mon`?): one of mon, tue, wed, thu, fri, sat, sun",
            "5:12: expected a local time HH:MM (24 h), such as \"22:00\"",
            "6:10: expected a local time HH:MM (24 h), such as \"22:00\"",
            "7:16: unknown time zone `Europe/Berlinn`",
            "8:15: `escalate` is never held",
            "9:12: unknown scope kind `zone`",
            "10:11: duplicate name `w`",
            "14:5: a blocker checks one thing; found exec, http",
            "18:11: expected an http:// or https:// URL",
            "20:17: `query` is required",
            "21:5: `name` is required",
            "22:5: unknown key `timout` (did you mean `timeout`?)",
        ];
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), want.len(), "{err}");
        for (got, want) in lines.iter().zip(want) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}\n{err}");
        }
    }
}
