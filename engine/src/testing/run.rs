//! The runner: loads the test files and their policy sets, runs every case and checks each
//! decision against its expectation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::Duration;
use serde_json::Value;

use crate::build::Mutation;
use crate::decide::{Ctx, Mode};
use crate::decision::Decision;
use crate::diag::LoadError;
use crate::diag::{Diagnostic, Pos};
use crate::engine::Engine;
use crate::event::{Event, Timestamp};
use crate::history::History;
use crate::normalize::{self, Input, NormalizerState};

use super::*;

pub(super) fn load_tests(root: &Path) -> Result<Vec<TestFile>, LoadError> {
    let mut diags = Vec::new();
    let paths = find_test_files(root, &mut diags);
    if paths.is_empty() && diags.is_empty() {
        diags.push(Diagnostic::new(
            root,
            Pos::FILE,
            "no test files (*.test.yaml) found: there is nothing to pass",
        ));
    }
    let mut files = Vec::new();
    for p in paths {
        if let Some(f) = parse_test_file(&p, &mut diags) {
            files.push(f);
        }
    }
    if diags.is_empty() {
        Ok(files)
    } else {
        Err(LoadError::new(diags))
    }
}

/// One loaded policy set and the test files that run against it.
pub(super) struct Set {
    pub(super) engine: Engine,
    pub(super) files: Vec<usize>,
}

/// Groups the files by policy set (the same directory however it is written) and loads each
/// set once. Every invalid set is reported.
pub(super) fn load_sets(
    files: &[TestFile],
    mutation: Option<(&Path, Mutation)>,
) -> Result<Vec<(PathBuf, Set)>, LoadError> {
    let mut groups: BTreeMap<PathBuf, (PathBuf, Vec<usize>)> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let key = std::fs::canonicalize(&f.set).unwrap_or_else(|_| f.set.clone());
        groups
            .entry(key)
            .or_insert_with(|| (f.set.clone(), Vec::new()))
            .1
            .push(i);
    }
    let mut diags = Vec::new();
    let mut out = Vec::new();
    for (key, (shown, idx)) in groups {
        let mut b = Engine::builder().add_path(&shown);
        if let Some((target, m)) = &mutation {
            if key.as_path() != *target {
                continue;
            }
            b = b.mutation(m.clone());
        }
        match b.build() {
            Ok(engine) => out.push((key, Set { engine, files: idx })),
            Err(e) => diags.extend(e.diagnostics().iter().cloned()),
        }
    }
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(LoadError::new(diags))
    }
}

/// Runs every `*.test.yaml` under `root` (or `root` itself, a test file). Each test file runs
/// against the policy set named by its `policies:` key (relative to the file), by default its
/// own directory. An invalid policy set or test file is an `Err` listing every problem;
/// failing cases are in the report.
pub fn run(root: &Path, opts: &TestOptions) -> Result<TestReport, LoadError> {
    let files = load_tests(root)?;
    let sets = load_sets(&files, None)?;
    Ok(run_sets(&sets, &files, opts))
}

pub(super) fn run_sets(
    sets: &[(PathBuf, Set)],
    files: &[TestFile],
    opts: &TestOptions,
) -> TestReport {
    let mut coverage: Vec<PolicyCoverage> = Vec::new();
    let mut results: Vec<Option<FileResult>> = vec![None; files.len()];
    let mut uncovered_files = Vec::new();
    for (_, set) in sets {
        let start = coverage.len();
        coverage.extend(set.engine.policies().map(|p| PolicyCoverage {
            policy: p.name.clone(),
            file: p.file.clone(),
            matched: 0,
            won: 0,
        }));
        for &i in &set.files {
            let f = &files[i];
            let file = f.path.display().to_string();
            let mut cases = Vec::new();
            for c in &f.cases {
                let ids: Vec<String> = c
                    .steps
                    .iter()
                    .map(|s| {
                        if c.sequence {
                            format!("{file}::{}::{}", c.name, s.name)
                        } else {
                            format!("{file}::{}", c.name)
                        }
                    })
                    .collect();
                if let Some(pat) = &opts.run {
                    if !ids.iter().any(|i| i.contains(pat.as_str())) {
                        continue;
                    }
                }
                let steps = run_case(
                    &set.engine,
                    c,
                    &ids,
                    &file,
                    &mut coverage[start..],
                    opts.clock,
                );
                cases.push(CaseResult {
                    name: c.name.clone(),
                    steps,
                });
            }
            results[i] = Some(FileResult {
                file: f.path.clone(),
                cases,
            });
        }
    }
    if opts.run.is_none() {
        // A policy file is reached when any case of any set matched one of its policies.
        let mut by_file: BTreeMap<PathBuf, bool> = BTreeMap::new();
        for c in &coverage {
            let key = std::fs::canonicalize(&c.file).unwrap_or_else(|_| c.file.clone());
            *by_file.entry(key).or_insert(false) |= c.matched > 0;
        }
        let unreached: BTreeSet<PathBuf> = by_file
            .into_iter()
            .filter(|(_, reached)| !reached)
            .map(|(f, _)| f)
            .collect();
        for c in &coverage {
            let key = std::fs::canonicalize(&c.file).unwrap_or_else(|_| c.file.clone());
            if unreached.contains(&key) && !uncovered_files.contains(&c.file) {
                uncovered_files.push(c.file.clone());
            }
        }
    }
    TestReport {
        files: results.into_iter().flatten().collect(),
        coverage,
        uncovered_files,
    }
}

pub(super) fn run_case(
    engine: &Engine,
    c: &Case,
    ids: &[String],
    file: &str,
    coverage: &mut [PolicyCoverage],
    clock: Option<fn() -> std::time::Duration>,
) -> Vec<StepResult> {
    let now = || clock.map(|c| c());
    let since = |t0: Option<std::time::Duration>| match (t0, now()) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => 0.0,
    };
    // Every case starts from fresh plugin instances (and a fresh history): no case depends on
    // the ones before it.
    engine.reset_plugin_instances();
    let mut history = History::new();
    let mut nstate = NormalizerState::default();
    let mut step_events: Vec<Vec<Event>> = Vec::new();
    let mut all: Vec<Decision> = Vec::new();
    let mut results = Vec::new();
    let mut gate = Gate::new(&c.budgets);
    for (n, (step, id)) in c.steps.iter().zip(ids).enumerate() {
        let t0 = now();
        let mut failures = Vec::new();
        let mut changes = Changes::default();
        if gate.active() {
            gate.advance(step.at, &mut changes);
        }
        let (events, redecide) = match &step.source {
            Source::None => (Vec::new(), false),
            Source::Event(ev) => (vec![(**ev).clone()], false),
            Source::Redecide(i) => (step_events.get(*i).cloned().unwrap_or_default(), true),
            Source::From(fr) => match run_normalizer(fr, step.at, &mut nstate) {
                Ok(evs) => (evs, false),
                Err(e) => {
                    failures.push(Mismatch {
                        what: "normalize".into(),
                        expected: "the payload to normalize".into(),
                        actual: e,
                    });
                    (Vec::new(), false)
                }
            },
        };
        if gate.active() && !redecide {
            for ev in &events {
                gate.note(ev);
            }
        }
        let mut decisions = Vec::new();
        let mut held = Vec::new();
        for ev in &events {
            if !redecide {
                history.record_at(ev, step.at);
            }
            let d = engine.decide(
                ev,
                &Ctx::new(step.at)
                    .with_mode(Mode::Full)
                    .with_history(&history),
            );
            history.record_decision_at(ev, &d, step.at);
            for cov in coverage.iter_mut() {
                if d.matched.iter().any(|m| m.policy == cov.policy) {
                    cov.matched += 1;
                }
                if d.policy.as_deref() == Some(cov.policy.as_str())
                    || d.escalations.iter().any(|e| e.policy == cov.policy)
                {
                    cov.won += 1;
                }
            }
            check(&step.expect, &d, step.at, &mut failures);
            if gate.active() {
                let h = gate.decide(n, ev, &d, step.at, step.runbook_s);
                check_held(&step.expect, h.as_ref(), &mut failures);
                held.extend(h);
            }
            decisions.push(d);
        }
        if let Some(n) = step.expect.events {
            if n != events.len() {
                failures.push(Mismatch {
                    what: "events".into(),
                    expected: n.to_string(),
                    actual: events.len().to_string(),
                });
            }
        } else if events.is_empty() && failures.is_empty() && has_event(step) {
            failures.push(Mismatch {
                what: "events".into(),
                expected: "at least one event to decide (or `events: 0`)".into(),
                actual: "0".into(),
            });
        }
        if !redecide {
            step_events.push(events);
        } else {
            step_events.push(Vec::new());
        }
        all.extend(decisions.iter().cloned());
        check_changes(step, &c.steps, &changes, &mut failures);
        let step_id = |i: usize| ids.get(i).cloned().unwrap_or_default();
        results.push(StepResult {
            id: id.clone(),
            line: step.line,
            time_s: since(t0),
            passed: failures.is_empty(),
            failures,
            decisions,
            held,
            released: changes
                .released
                .into_iter()
                .map(|(i, event_id, at)| GateChange {
                    step: step_id(i),
                    event_id,
                    at,
                    reason: None,
                })
                .collect(),
            escalated: changes
                .escalated
                .into_iter()
                .map(|(i, event_id, at, why)| GateChange {
                    step: step_id(i),
                    event_id,
                    at,
                    reason: Some(why),
                })
                .collect(),
        });
    }
    if c.sequence {
        let t0 = now();
        let failures = check_totals(&c.totals, &all);
        if c.totals.pages.is_some()
            || !c.totals.pages_by_policy.is_empty()
            || !c.totals.actions.is_empty()
        {
            results.push(StepResult {
                id: format!("{file}::{}::totals", c.name),
                line: c.line,
                time_s: since(t0),
                passed: failures.is_empty(),
                failures,
                decisions: Vec::new(),
                held: Vec::new(),
                released: Vec::new(),
                escalated: Vec::new(),
            });
        }
    }
    results
}

pub(super) fn run_normalizer(
    f: &From,
    at: Timestamp,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, String> {
    let observed = f.observed_at.unwrap_or(at);
    let op = f.operation;
    let input = |bytes, at, me| {
        let i = make_input(bytes, at, me);
        match op {
            Some(o) => i.operation(o),
            None => i,
        }
    };
    let me = f.self_name.as_deref();
    if let Some(prev) = &f.previous {
        normalize::normalize(&f.normalizer, &input(prev, observed, me), state)
            .map_err(|e| format!("previous: {e}"))?;
    }
    let mut events = normalize::normalize(&f.normalizer, &input(&f.payload, observed, me), state)
        .map_err(|e| e.to_string())?;
    if let Some(with) = &f.with {
        let mut patched = Vec::with_capacity(events.len());
        for ev in events {
            let mut v = serde_json::to_value(&ev).map_err(|e| e.to_string())?;
            merge(&mut v, with);
            patched.push(serde_json::from_value(v).map_err(|e| format!("`with`: {e}"))?);
        }
        events = patched;
    }
    if let Some(i) = f.index {
        return events
            .get(i)
            .cloned()
            .map(|e| vec![e])
            .ok_or_else(|| format!("`index` {i}, but the payload gave {} events", events.len()));
    }
    if f.self_name.is_some() {
        events.retain(|e| e.resource.is_self == Some(true));
    }
    Ok(events)
}

pub(super) fn make_input<'a>(bytes: &'a [u8], at: Timestamp, me: Option<&'a str>) -> Input<'a> {
    let i = Input::new(bytes, at);
    match me {
        Some(n) => i.self_name(n),
        None => i,
    }
}

pub(super) fn show_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "none".into(), |t| t.to_rfc3339())
}

pub(super) fn resolve(spec: TimeSpec, now: Timestamp) -> Option<Timestamp> {
    match spec {
        TimeSpec::Absolute(t) => Some(t),
        TimeSpec::After(s) => Duration::try_seconds(s).and_then(|d| now.checked_add_signed(d)),
    }
}

pub(super) fn check(e: &Expect, d: &Decision, now: Timestamp, out: &mut Vec<Mismatch>) {
    let mut miss = |what: &str, expected: String, actual: String| {
        out.push(Mismatch {
            what: what.into(),
            expected,
            actual,
        })
    };
    if let Some(a) = e.action {
        if a != d.action {
            miss("action", a.to_string(), d.action.to_string());
        }
    }
    if let Some(p) = &e.policy {
        if p.as_deref() != d.policy.as_deref() {
            let show = |p: Option<&str>| {
                p.map_or_else(|| "none (the default applied)".into(), str::to_string)
            };
            miss("policy", show(p.as_deref()), show(d.policy.as_deref()));
        }
    }
    if let Some(r) = &e.reason {
        if d.reason.as_deref() != Some(r.as_str()) {
            miss(
                "reason",
                r.clone(),
                d.reason.as_deref().unwrap_or_default().to_string(),
            );
        }
    }
    if let Some(r) = &e.reason_contains {
        if !d.reason.as_deref().unwrap_or("").contains(r.as_str()) {
            miss(
                "reason",
                format!("containing {r:?}"),
                d.reason.as_deref().unwrap_or_default().to_string(),
            );
        }
    }
    if let Some(params) = &e.params {
        for (k, v) in params {
            if d.params.get(k) != Some(v) {
                miss(
                    &format!("params.{k}"),
                    v.to_string(),
                    d.params
                        .get(k)
                        .map_or_else(|| "absent".into(), Value::to_string),
                );
            }
        }
    }
    if let Some(want) = &e.escalations {
        let pages: Vec<_> = d.escalations.iter().filter(|x| !x.repeat).collect();
        let mut unused: Vec<bool> = vec![true; pages.len()];
        let mut missing = Vec::new();
        for w in want {
            let hit = pages.iter().enumerate().position(|(i, p)| {
                unused[i]
                    && p.policy == w.policy
                    && w.severity.as_deref().is_none_or(|s| {
                        serde_json::to_value(p.severity)
                            .ok()
                            .and_then(|v| v.as_str().map(|v| v == s))
                            == Some(true)
                    })
                    && w.reason_contains
                        .as_deref()
                        .is_none_or(|r| p.reason.contains(r))
            });
            match hit {
                Some(i) => unused[i] = false,
                None => missing.push(w.policy.clone()),
            }
        }
        let extra: Vec<String> = pages
            .iter()
            .zip(&unused)
            .filter(|(_, u)| **u)
            .map(|(p, _)| p.policy.to_string())
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            miss(
                "escalations",
                format!(
                    "{:?}",
                    want.iter().map(|w| w.policy.as_str()).collect::<Vec<_>>()
                ),
                format!(
                    "{:?}",
                    pages.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>()
                ),
            );
        }
    }
    let matched: Vec<&str> = d.matched.iter().map(|m| m.policy.as_str()).collect();
    for m in &e.matched {
        if !matched.contains(&m.as_str()) {
            miss(
                "matched",
                format!("{m} among the matches"),
                format!("{matched:?}"),
            );
        }
    }
    for m in &e.not_matched {
        if matched.contains(&m.as_str()) {
            miss(
                "not_matched",
                format!("{m} not to match"),
                format!("{matched:?}"),
            );
        }
    }
    let errored: BTreeSet<&str> = d.errors.iter().map(|x| x.policy.as_str()).collect();
    let want_err: BTreeSet<&str> = e.errors.iter().flatten().map(String::as_str).collect();
    if errored != want_err {
        let shown: Vec<String> = d
            .errors
            .iter()
            .map(|x| format!("{}: {}", x.policy, x.message))
            .collect();
        miss(
            "errors",
            format!("{:?}", want_err.iter().collect::<Vec<_>>()),
            format!("{shown:?}"),
        );
    }
    for w in &e.warnings_contain {
        if !d.warnings.iter().any(|x| x.contains(w.as_str())) {
            miss(
                "warnings",
                format!("one containing {w:?}"),
                format!("{:?}", d.warnings),
            );
        }
    }
    if let Some(spec) = e.due {
        let want = resolve(spec, now);
        if want != d.due {
            miss("due", show_time(want), show_time(d.due));
        }
    }
    if let Some(spec) = e.retry_not_before {
        let want = resolve(spec, now);
        let got = d.retry.as_ref().and_then(|r| r.not_before);
        if want != got {
            miss("retry.not_before", show_time(want), show_time(got));
        }
    }
    if let Some(want) = e.guard {
        let got = d.guard.as_ref().map(|g| g.name);
        if want != got {
            let show = |g: Option<crate::guard::GuardName>| g.map_or("none", |g| g.as_str());
            miss("guard", show(want).into(), show(got).into());
        }
    }
    if let Some(b) = e.retry_request {
        let got = d.retry.as_ref().is_some_and(|r| r.request.is_some());
        if b != got {
            miss(
                "retry.request",
                if b { "present" } else { "absent" }.into(),
                if got { "present" } else { "absent" }.into(),
            );
        }
    }
}

pub(super) fn check_totals(t: &Totals, all: &[Decision]) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let pages: Vec<&str> = all
        .iter()
        .flat_map(|d| d.escalations.iter())
        .filter(|e| !e.repeat)
        .map(|e| e.policy.as_str())
        .collect();
    if let Some(n) = t.pages {
        if n != pages.len() {
            out.push(Mismatch {
                what: "totals.pages".into(),
                expected: n.to_string(),
                actual: format!("{} {pages:?}", pages.len()),
            });
        }
    }
    for (p, n) in &t.pages_by_policy {
        let got = pages.iter().filter(|x| **x == p.as_str()).count();
        if got != *n {
            out.push(Mismatch {
                what: format!("totals.pages_by_policy.{p}"),
                expected: n.to_string(),
                actual: got.to_string(),
            });
        }
    }
    for (a, n) in &t.actions {
        let got = all.iter().filter(|d| d.action == *a).count();
        if got != *n {
            out.push(Mismatch {
                what: format!("totals.actions.{a}"),
                expected: n.to_string(),
                actual: got.to_string(),
            });
        }
    }
    out
}
