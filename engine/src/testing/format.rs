//! The `*.test.yaml` file format: cases, steps, expectations and totals, read with positions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::Duration;
use saphyr::{MarkedYaml, YamlData};
use serde_json::Value;

use crate::budget::BudgetSpec;
use crate::decision::Action;
use crate::diag::{Diagnostic, Pos};
use crate::event::{Event, Timestamp};
use crate::normalize::{self};
use crate::policy;
use crate::yaml::{self, pos, scalar_str, with_yaml_doc, Cx};

use super::*;

#[derive(Debug, Clone)]
pub(super) enum Source {
    Event(Box<Event>),
    From(From),
    Redecide(usize),
    /// No event: a look at the virtual clock (held decisions released or escalated since).
    None,
}

#[derive(Debug, Clone)]
pub(super) struct From {
    pub(super) normalizer: String,
    pub(super) payload: Vec<u8>,
    pub(super) previous: Option<Vec<u8>>,
    pub(super) self_name: Option<String>,
    pub(super) observed_at: Option<Timestamp>,
    pub(super) index: Option<usize>,
    pub(super) with: Option<Value>,
    pub(super) operation: Option<crate::event::Operation>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Expect {
    pub(super) action: Option<Action>,
    /// `Some(None)`: the default applied (no winner).
    pub(super) policy: Option<Option<String>>,
    pub(super) reason: Option<String>,
    pub(super) reason_contains: Option<String>,
    pub(super) params: Option<serde_json::Map<String, Value>>,
    pub(super) escalations: Option<Vec<ExpectEscalation>>,
    pub(super) matched: Vec<String>,
    pub(super) not_matched: Vec<String>,
    pub(super) errors: Option<Vec<String>>,
    pub(super) warnings_contain: Vec<String>,
    pub(super) due: Option<TimeSpec>,
    pub(super) retry_not_before: Option<TimeSpec>,
    pub(super) retry_request: Option<bool>,
    pub(super) events: Option<usize>,
    /// `Some(None)`: no guard held the action.
    pub(super) guard: Option<Option<crate::guard::GuardName>>,
    /// `Some(None)`: `held: false`.
    pub(super) held: Option<Option<ExpectHeld>>,
    /// The steps named in `released`, as written (resolved into [`Step::released`]).
    pub(super) released: Option<StepNames>,
    /// The steps named in `escalated`, as written (resolved into [`Step::escalated`]).
    pub(super) escalated: Option<StepNames>,
}

#[derive(Debug, Clone)]
pub(super) struct ExpectEscalation {
    pub(super) policy: String,
    pub(super) severity: Option<String>,
    pub(super) reason_contains: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum TimeSpec {
    Absolute(Timestamp),
    /// Relative to the decision's `now`.
    After(i64),
}

#[derive(Debug, Clone)]
pub(super) struct Step {
    pub(super) name: String,
    /// The 1-based line of the step (of the case, for a single-event case) in its file.
    pub(super) line: usize,
    pub(super) at: Timestamp,
    pub(super) source: Source,
    pub(super) expect: Expect,
    /// How long its runbook runs once it starts, seconds (`runbook:`; default 0).
    pub(super) runbook_s: i64,
    /// `expect.released`: the earlier steps whose held decisions are released since the
    /// previous step, by index.
    pub(super) released: Option<Vec<usize>>,
    /// `expect.escalated`: the earlier steps whose held decisions escalate since the
    /// previous step (their deadline passed), by index.
    pub(super) escalated: Option<Vec<usize>>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Totals {
    pub(super) pages: Option<usize>,
    pub(super) pages_by_policy: BTreeMap<String, usize>,
    pub(super) actions: BTreeMap<Action, usize>,
}

#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) name: String,
    /// The 1-based line of the case in its file.
    pub(super) line: usize,
    pub(super) sequence: bool,
    pub(super) steps: Vec<Step>,
    pub(super) totals: Totals,
    /// The budgets its decisions take slots of (the case's `budgets:`, else the file's).
    pub(super) budgets: Vec<BudgetSpec>,
}

#[derive(Debug, Clone)]
pub(super) struct TestFile {
    pub(super) path: PathBuf,
    /// The policy set the cases run against (a directory or file), as written.
    pub(super) set: PathBuf,
    pub(super) cases: Vec<Case>,
}

/// Finds test files under `root` (recursively, sorted), or `root` itself.
pub(super) fn find_test_files(root: &Path, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    policy::find_matching(root, diags, "test path", is_test_file)
}

pub(super) fn parse_test_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Option<TestFile> {
    let bytes = match policy::read_regular(path, crate::yaml::MAX_POLICY_FILE_BYTES) {
        Ok(b) => b,
        Err(e) => {
            diags.push(Diagnostic::new(
                path,
                Pos::FILE,
                format!("cannot read: {e}"),
            ));
            return None;
        }
    };
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    with_yaml_doc(path, &bytes, diags, "test file", "`cases:`", |cx, doc| {
        let before = cx.diags.len();
        let (cases, set) = file_doc(cx, doc, &dir);
        (cx.diags.len() == before).then(|| TestFile {
            path: path.to_path_buf(),
            set: set.unwrap_or_else(|| dir.clone()),
            cases,
        })
    })
    .flatten()
}

pub(super) fn file_doc(
    cx: &mut Cx<'_, '_>,
    doc: &MarkedYaml<'_>,
    dir: &Path,
) -> (Vec<Case>, Option<PathBuf>) {
    let Some(entries) = cx.map(
        doc,
        "the test file",
        &["version", "policies", "budgets", "cases"],
    ) else {
        return (Vec::new(), None);
    };
    let budgets = yaml::entry(&entries, "budgets")
        .map(|b| read_budgets_node(cx, b))
        .unwrap_or_default();
    let mut set = None;
    let mut cases = Vec::new();
    let mut names = BTreeSet::new();
    let mut have = false;
    for (key, _, v) in &entries {
        match key.as_str() {
            "version" => {
                if let Some(ver) = cx.int(v, "`version`", 1) {
                    if ver > policy::FORMAT_VERSION {
                        cx.err(
                            pos(v),
                            format!("test format version {ver} is newer than this Keel reads"),
                        );
                    }
                }
            }
            "policies" => {
                if let Some(rel) = cx.string(v, "`policies`") {
                    let p = dir.join(&rel);
                    if std::fs::metadata(&p).is_err() {
                        cx.err(
                            pos(v),
                            format!(
                                "`policies`: `{rel}` (relative to the test file) does not exist"
                            ),
                        );
                    }
                    set = Some(p);
                }
            }
            "cases" => {
                have = true;
                let YamlData::Sequence(items) = &v.data else {
                    cx.err(pos(v), "`cases` must be a list");
                    continue;
                };
                if items.is_empty() {
                    cx.err(pos(v), "`cases` is empty: a test file must test something");
                }
                for item in items {
                    if let Some(c) = case(cx, item, dir, &budgets) {
                        if !names.insert(c.name.clone()) {
                            cx.err(pos(item), format!("duplicate case name `{}`", c.name));
                            continue;
                        }
                        cases.push(c);
                    }
                }
            }
            _ => {}
        }
    }
    if !have {
        cx.err(pos(doc), "missing `cases:` list");
    }
    (cases, set)
}

pub(super) fn time_value(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<Timestamp> {
    let s = cx.string(n, what)?;
    match chrono::DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Some(t.with_timezone(&chrono::Utc)),
        Err(_) => {
            cx.err(
                pos(n),
                format!("{what} must be an RFC 3339 time, e.g. 2021-10-13T14:00:00Z"),
            );
            None
        }
    }
}

/// A non-negative offset in whole seconds, optionally after a `+`: `0`, `30`, `30s`, `15m`,
/// `1h30m`, `1d` ([`crate::parse_duration`]'s grammar).
pub(super) fn offset_value(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<i64> {
    let message = match scalar_str(n) {
        Some(s) => {
            let s = s.trim();
            match policy::duration_secs(s.strip_prefix('+').unwrap_or(s)) {
                Ok(secs) => return Some(secs),
                Err(e) => format!("{what} must be an offset like 0s, 30s, 15m, 2h, 1h30m: {e}"),
            }
        }
        None => format!("{what} must be an offset like 0s, 30s, 15m, 2h, 1h30m"),
    };
    cx.err(pos(n), message);
    None
}

pub(super) fn case(
    cx: &mut Cx<'_, '_>,
    n: &MarkedYaml<'_>,
    dir: &Path,
    file_budgets: &[BudgetSpec],
) -> Option<Case> {
    let entries = cx.map(
        n,
        "a case",
        &[
            "name",
            "description",
            "now",
            "event",
            "from",
            "expect",
            "start",
            "steps",
            "totals",
            "budgets",
        ],
    )?;
    let before = cx.diags.len();
    let get = |k: &str| yaml::entry(&entries, k);
    let name = match get("name") {
        Some(v) => cx.string(v, "`name`"),
        None => {
            cx.err(pos(n), "case without `name`");
            None
        }
    };
    let name = name.unwrap_or_default();
    if name.contains("::") {
        cx.err(
            pos(n),
            "a case name cannot contain `::` (it separates names in reports)",
        );
    }
    let totals = get("totals").map(|t| totals(cx, t)).unwrap_or_default();
    let budgets = match get("budgets") {
        Some(b) => read_budgets_node(cx, b),
        None => file_budgets.to_vec(),
    };
    let case = if let Some(steps_node) = get("steps") {
        for k in ["event", "from", "expect", "now"] {
            if let Some(v) = get(k) {
                cx.err(
                    pos(v),
                    format!("a case with `steps` gives `{k}` in each step"),
                );
            }
        }
        let start = match get("start") {
            Some(v) => time_value(cx, v, "`start`"),
            None => {
                cx.err(
                    pos(n),
                    "a case with `steps` needs `start` (an RFC 3339 time)",
                );
                None
            }
        };
        let YamlData::Sequence(items) = &steps_node.data else {
            cx.err(pos(steps_node), "`steps` must be a list");
            return None;
        };
        if items.is_empty() {
            cx.err(pos(steps_node), "`steps` is empty");
        }
        let start = start?;
        let mut steps = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if let Some(s) = step(cx, item, i, start, dir, &steps) {
                steps.push(s);
            }
        }
        Case {
            name,
            line: pos(n).line,
            sequence: true,
            steps,
            totals,
            budgets,
        }
    } else {
        if let Some(v) = get("start") {
            cx.err(pos(v), "`start` belongs to a case with `steps`");
        }
        if get("totals").is_some() {
            cx.err(pos(n), "`totals` belongs to a case with `steps`");
        }
        let now = get("now").and_then(|v| time_value(cx, v, "`now`"));
        let source = source(cx, n, now, get("event"), get("from"), None, dir, &[], None)?;
        let at = now.unwrap_or_else(|| match &source {
            Source::Event(ev) => ev.time,
            _ => default_time(),
        });
        let expect = match get("expect") {
            Some(v) => expect(cx, v),
            None => {
                cx.err(
                    pos(n),
                    "case without `expect`: a case must assert something",
                );
                None
            }
        };
        Case {
            name: name.clone(),
            line: pos(n).line,
            sequence: false,
            steps: vec![Step {
                name,
                line: pos(n).line,
                at,
                source,
                expect: expect?,
                runbook_s: 0,
                released: None,
                escalated: None,
            }],
            totals: Totals::default(),
            budgets,
        }
    };
    check_gate_keys(cx, n, &case);
    (cx.diags.len() == before).then_some(case)
}

pub(super) fn default_time() -> Timestamp {
    DEFAULT_CASE_TIME.parse().unwrap_or_default()
}

pub(super) fn step(
    cx: &mut Cx<'_, '_>,
    n: &MarkedYaml<'_>,
    i: usize,
    start: Timestamp,
    dir: &Path,
    earlier: &[Step],
) -> Option<Step> {
    let entries = cx.map(
        n,
        "a step",
        &[
            "name", "at", "event", "from", "redecide", "expect", "runbook",
        ],
    )?;
    let get = |k: &str| yaml::entry(&entries, k);
    let name = match get("name") {
        Some(v) => cx.string(v, "`name`")?,
        None => format!("step {}", i + 1),
    };
    let at = match get("at") {
        Some(v) => offset_value(cx, v, "`at`")?,
        None => {
            cx.err(
                pos(n),
                "step without `at` (its offset from the case's `start`, e.g. 30s)",
            );
            return None;
        }
    };
    let Some(at) = Duration::try_seconds(at).and_then(|d| start.checked_add_signed(d)) else {
        cx.err(pos(n), "`at` is beyond any representable time");
        return None;
    };
    if let Some(prev) = earlier.last() {
        if at < prev.at {
            cx.err(pos(n), "steps must be in time order");
        }
    }
    let runbook_s = get("runbook").and_then(|v| offset_value(cx, v, "`runbook`"));
    let expect = match get("expect") {
        Some(v) => expect(cx, v)?,
        None => {
            cx.err(
                pos(n),
                "step without `expect`: every step must assert something",
            );
            return None;
        }
    };
    let source = source(
        cx,
        n,
        Some(at),
        get("event"),
        get("from"),
        get("redecide"),
        dir,
        earlier,
        Some(&expect),
    )?;
    let runbook_s = match (get("runbook"), runbook_s) {
        (Some(_), None) => return None,
        (_, r) => r.unwrap_or(0),
    };
    let released = resolve_steps(cx, expect.released.as_ref(), earlier, "released")?;
    let escalated = resolve_steps(cx, expect.escalated.as_ref(), earlier, "escalated")?;
    Some(Step {
        name,
        line: pos(n).line,
        at,
        source,
        expect,
        runbook_s,
        released,
        escalated,
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn source(
    cx: &mut Cx<'_, '_>,
    n: &MarkedYaml<'_>,
    at: Option<Timestamp>,
    event: Option<&MarkedYaml<'_>>,
    from: Option<&MarkedYaml<'_>>,
    redecide: Option<&MarkedYaml<'_>>,
    dir: &Path,
    earlier: &[Step],
    expect: Option<&Expect>,
) -> Option<Source> {
    match (event, from, redecide) {
        (Some(e), None, None) => {
            if !matches!(e.data, YamlData::Mapping(_)) {
                cx.err(pos(e), "`event` must be a map (a partial normalized event)");
                return None;
            }
            let v = cx.json(e, 0);
            match build_event(v, at) {
                Ok(ev) => Some(Source::Event(Box::new(ev))),
                Err(msg) => {
                    cx.err(pos(e), format!("invalid event: {msg}"));
                    None
                }
            }
        }
        (None, Some(f), None) => from_spec(cx, f, dir).map(Source::From),
        (None, None, Some(r)) => {
            let target = scalar_str(r).map(|s| s.into_owned()).unwrap_or_default();
            let idx = earlier.iter().position(|s| s.name == target).or_else(|| {
                target
                    .parse::<usize>()
                    .ok()
                    .filter(|i| (1..=earlier.len()).contains(i))
                    .map(|i| i - 1)
            });
            match idx {
                Some(i) if matches!(earlier[i].source, Source::Event(_) | Source::From(_)) => {
                    Some(Source::Redecide(i))
                }
                _ => {
                    cx.err(pos(r), "`redecide` names an earlier step (by name, or by number from 1) that has an event");
                    None
                }
            }
        }
        (None, None, None) if expect.is_some_and(Expect::only_gate_changes) => Some(Source::None),
        (None, None, None) => {
            cx.err(pos(n), "give the event: `event` (a normalized event) or `from` (a vendor payload and its normalizer); a step without one may only expect `released` and `escalated`");
            None
        }
        _ => {
            cx.err(pos(n), "give only one of `event`, `from` and `redecide`");
            None
        }
    }
}

pub(super) fn from_spec(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, dir: &Path) -> Option<From> {
    let entries = cx.map(
        n,
        "`from`",
        &[
            "normalizer",
            "file",
            "previous",
            "self",
            "observed_at",
            "index",
            "with",
            "operation",
        ],
    )?;
    let before = cx.diags.len();
    let get = |k: &str| yaml::entry(&entries, k);
    let normalizer = match get("normalizer") {
        Some(v) => {
            let s = cx.string(v, "`normalizer`");
            if let Some(s) = &s {
                if !normalize::NORMALIZERS.iter().any(|x| x.name == s) {
                    let help = crate::fields::did_you_mean(
                        s,
                        normalize::NORMALIZERS.iter().map(|x| x.name),
                    )
                    .map(|h| format!("did you mean `{h}`?"));
                    cx.err_help(pos(v), format!("unknown normalizer `{s}`"), help);
                }
            }
            s
        }
        None => {
            cx.err(pos(n), "`from` needs `normalizer`");
            None
        }
    };
    let read = |cx: &mut Cx<'_, '_>, key: &str| -> Option<Vec<u8>> {
        let v = get(key)?;
        let rel = cx.string(v, &format!("`{key}`"))?;
        let path = dir.join(&rel);
        match policy::read_regular(&path, crate::normalize::MAX_PAYLOAD_BYTES) {
            Ok(b) => Some(b),
            Err(e) => {
                cx.err(
                    pos(v),
                    format!("cannot read `{rel}` (relative to the test file): {e}"),
                );
                None
            }
        }
    };
    let payload = read(cx, "file");
    if get("file").is_none() {
        cx.err(
            pos(n),
            "`from` needs `file` (the vendor payload, relative to the test file)",
        );
    }
    let previous = read(cx, "previous");
    let self_name = get("self").and_then(|v| cx.string(v, "`self`"));
    let observed_at = get("observed_at").and_then(|v| time_value(cx, v, "`observed_at`"));
    let index = get("index")
        .and_then(|v| cx.int(v, "`index`", 0))
        .map(|i| i as usize);
    let operation = get("operation").and_then(|v| {
        let s = cx.string(v, "`operation`")?;
        let op = crate::event::Operation::parse(&s);
        if op.is_none() {
            cx.err(
                pos(v),
                format!(
                    "unknown operation `{s}`: one of {}",
                    crate::event::Operation::NAMES.join(", ")
                ),
            );
        }
        op
    });
    let with = get("with").map(|v| {
        if !matches!(v.data, YamlData::Mapping(_)) {
            cx.err(pos(v), "`with` must be a map of event fields to set");
        }
        cx.json(v, 0)
    });
    if cx.diags.len() != before {
        return None;
    }
    Some(From {
        normalizer: normalizer?,
        payload: payload?,
        previous,
        self_name,
        observed_at,
        index,
        with,
        operation,
    })
}

pub(super) fn string_list(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Vec<String> {
    match &n.data {
        YamlData::Sequence(items) => items.iter().filter_map(|i| cx.string(i, what)).collect(),
        _ => cx.string(n, what).into_iter().collect(),
    }
}

pub(super) fn time_spec(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<TimeSpec> {
    let s = cx.string(n, what)?;
    if let Some(rel) = s.strip_prefix('+') {
        if let Ok(secs) = policy::duration_secs(rel) {
            return Some(TimeSpec::After(secs));
        }
    }
    match chrono::DateTime::parse_from_rfc3339(&s) {
        Ok(t) => Some(TimeSpec::Absolute(t.with_timezone(&chrono::Utc))),
        Err(_) => {
            cx.err(
                pos(n),
                format!("{what} must be an RFC 3339 time or an offset from now like +15m"),
            );
            None
        }
    }
}

pub(super) fn expect(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Option<Expect> {
    const KEYS: &[&str] = &[
        "action",
        "policy",
        "reason",
        "reason_contains",
        "params",
        "escalations",
        "matched",
        "not_matched",
        "errors",
        "warnings_contain",
        "due",
        "retry_not_before",
        "retry_request",
        "events",
        "guard",
        "held",
        "released",
        "escalated",
    ];
    let entries = cx.map(n, "`expect`", KEYS)?;
    let before = cx.diags.len();
    if entries.is_empty() {
        cx.err(pos(n), "`expect` is empty: a case must assert something");
        return None;
    }
    let mut e = Expect::default();
    for (key, _, v) in &entries {
        match key.as_str() {
            "action" => {
                if let Some(s) = cx.string(v, "`action`") {
                    e.action = Action::parse(&s);
                    if e.action.is_none() {
                        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                        let help = crate::fields::did_you_mean(&s, names.iter().copied())
                            .map(|h| format!("did you mean `{h}`?"));
                        cx.err_help(pos(v), format!("unknown action `{s}`"), help);
                    }
                }
            }
            "policy" => {
                e.policy = Some(match &v.data {
                    YamlData::Value(saphyr::Scalar::Null) => None,
                    _ => cx.string(v, "`policy`"),
                })
            }
            "reason" => e.reason = cx.string(v, "`reason`"),
            "reason_contains" => e.reason_contains = cx.string(v, "`reason_contains`"),
            "params" => match cx.json(v, 0) {
                Value::Object(m) => e.params = Some(m),
                _ => cx.err(
                    pos(v),
                    "`params` must be a map (the expected subset of the winner's params)",
                ),
            },
            "escalations" => {
                let YamlData::Sequence(items) = &v.data else {
                    cx.err(pos(v), "`escalations` must be a list of {policy, severity?, reason_contains?} (the pages expected; [] for none)");
                    continue;
                };
                let mut list = Vec::new();
                for item in items {
                    let Some(es) = cx.map(
                        item,
                        "an expected escalation",
                        &["policy", "severity", "reason_contains"],
                    ) else {
                        continue;
                    };
                    let mut x = ExpectEscalation {
                        policy: String::new(),
                        severity: None,
                        reason_contains: None,
                    };
                    let mut has_policy = false;
                    for (k, _, ev) in &es {
                        match k.as_str() {
                            "policy" => {
                                has_policy = true;
                                x.policy = cx.string(ev, "`policy`").unwrap_or_default();
                            }
                            "severity" => x.severity = cx.string(ev, "`severity`"),
                            "reason_contains" => {
                                x.reason_contains = cx.string(ev, "`reason_contains`")
                            }
                            _ => {}
                        }
                    }
                    if !has_policy {
                        cx.err(pos(item), "an expected escalation needs `policy`");
                    }
                    list.push(x);
                }
                e.escalations = Some(list);
            }
            "matched" => e.matched = string_list(cx, v, "a policy name"),
            "not_matched" => e.not_matched = string_list(cx, v, "a policy name"),
            "errors" => e.errors = Some(string_list(cx, v, "a policy name")),
            "warnings_contain" => e.warnings_contain = string_list(cx, v, "a warning's text"),
            "due" => e.due = time_spec(cx, v, "`due`"),
            "retry_not_before" => e.retry_not_before = time_spec(cx, v, "`retry_not_before`"),
            "retry_request" => match &v.data {
                YamlData::Value(saphyr::Scalar::Boolean(b)) => e.retry_request = Some(*b),
                _ => cx.err(
                    pos(v),
                    "`retry_request` is true (a request body to resubmit is present) or false",
                ),
            },
            "events" => e.events = cx.int(v, "`events`", 0).map(|i| i as usize),
            "held" => e.held = expect_held(cx, v),
            "released" => e.released = step_names(cx, v, "`released`"),
            "escalated" => e.escalated = step_names(cx, v, "`escalated`"),
            "guard" => {
                e.guard = Some(match &v.data {
                    YamlData::Value(saphyr::Scalar::Null) => None,
                    _ => {
                        let s = cx.string(v, "`guard`").unwrap_or_default();
                        let g = crate::guard::GuardName::parse(&s);
                        if g.is_none() {
                            cx.err(
                                pos(v),
                                format!("unknown guard `{}` (guards are storm, retry_budget, flap; null for none)", crate::escape(&s)),
                            );
                        }
                        g
                    }
                })
            }
            _ => {}
        }
    }
    let asserts = e.action.is_some()
        || e.policy.is_some()
        || e.reason.is_some()
        || e.reason_contains.is_some()
        || e.params.as_ref().is_some_and(|p| !p.is_empty())
        || e.escalations.is_some()
        || !e.matched.is_empty()
        || !e.not_matched.is_empty()
        || e.errors.as_ref().is_some_and(|x| !x.is_empty())
        || !e.warnings_contain.is_empty()
        || e.due.is_some()
        || e.retry_not_before.is_some()
        || e.retry_request.is_some()
        || e.events.is_some()
        || e.guard.is_some()
        || e.held.is_some()
        || e.released.is_some()
        || e.escalated.is_some();
    if !asserts && cx.diags.len() == before {
        cx.err(
            pos(n),
            "`expect` asserts nothing (empty lists and maps check nothing): a case must assert something",
        );
    }
    (cx.diags.len() == before).then_some(e)
}

pub(super) fn totals(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Totals {
    let mut t = Totals::default();
    let Some(entries) = cx.map(n, "`totals`", &["pages", "pages_by_policy", "actions"]) else {
        return t;
    };
    for (key, _, v) in &entries {
        if key == "pages" {
            t.pages = cx.int(v, "`pages`", 0).map(|i| i as usize);
        }
    }
    // The maps have free keys: read them directly.
    if let YamlData::Mapping(m) = &n.data {
        for (k, v) in m.iter() {
            let key = scalar_str(k).map(|s| s.into_owned()).unwrap_or_default();
            if key != "pages_by_policy" && key != "actions" {
                continue;
            }
            let YamlData::Mapping(inner) = &v.data else {
                cx.err(pos(v), format!("`{key}` must be a map of names to counts"));
                continue;
            };
            for (ik, iv) in inner.iter() {
                let name = scalar_str(ik).map(|s| s.into_owned()).unwrap_or_default();
                let Some(count) = cx.int(iv, "a count", 0) else {
                    continue;
                };
                if key == "actions" {
                    match Action::parse(&name) {
                        Some(a) => {
                            t.actions.insert(a, count as usize);
                        }
                        None => cx.err(pos(ik), format!("unknown action `{name}`")),
                    }
                } else {
                    t.pages_by_policy.insert(name, count as usize);
                }
            }
        }
    }
    t
}

/// Builds an event from a partial one: `time` defaults to `at` (or [`DEFAULT_CASE_TIME`]),
/// `source` to `ingest`, `kind` to the one whose section is present, `id` to a content hash.
pub(super) fn build_event(mut v: Value, at: Option<Timestamp>) -> Result<Event, String> {
    let Value::Object(obj) = &mut v else {
        return Err("expected a map".into());
    };
    if !obj.contains_key("time") {
        let t = at.unwrap_or_else(default_time);
        obj.insert("time".into(), Value::String(t.to_rfc3339()));
    }
    obj.entry("source")
        .or_insert_with(|| Value::String("ingest".into()));
    if !obj.contains_key("kind") {
        let kind = match (obj.contains_key("maintenance"), obj.contains_key("health"), obj.contains_key("failure")) {
            (true, false, false) => "maintenance",
            (false, true, false) => "health",
            (false, false, true) => "operation_failure",
            _ => return Err("missing field `kind` (give `kind`, or exactly one of `maintenance`, `health`, `failure`)".into()),
        };
        obj.insert("kind".into(), Value::String(kind.into()));
    }
    if !obj.contains_key("id") {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(v.to_string().as_bytes());
        let hex = hex::encode(&digest[..8]);
        if let Value::Object(obj) = &mut v {
            obj.insert("id".into(), Value::String(format!("test:{hex}")));
        }
    }
    serde_json::from_value(v).map_err(|e| crate::event::strip_serde_position(&e.to_string()))
}

/// Merges `patch` into `base` (objects recursively; anything else replaces).
pub(super) fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}
