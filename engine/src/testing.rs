//! Policy unit tests: `*.test.yaml` files beside the policies, run by `keel test` and by any
//! program that embeds the engine.
//!
//! ```yaml
//! cases:
//!   - name: short freeze is let through
//!     event: { kind: maintenance, maintenance: { type: freeze, status: scheduled, duration_s: 5 } }
//!     expect: { action: acknowledge, policy: azure.freeze.short }
//!   - name: agent artifact outage, raw ARM error
//!     from: { normalizer: azure.arm, file: fixtures/arm.json, with: { resource: { os: windows } } }
//!     expect: { action: retry_without_agent }
//!   - name: fleet outage
//!     start: 2021-10-13T14:00:00Z
//!     steps:
//!       - { at: 0s, event: {...}, expect: { action: retry_without_agent, escalations: [] } }
//!       - { at: 30s, event: {...}, expect: { escalations: [{ policy: vm-agent.incident }] } }
//!     totals: { pages: 1 }
//! ```
//!
//! A case's event may be partial: unset fields are absent, `id` defaults to a content hash,
//! `time` to the step's time and `source` to `ingest`. A sequence carries state from one step
//! to the next: the correlation [`History`] (each event recorded before it is decided, each
//! decision after) and the normalizers' state, at exact event times. Every decision runs in
//! full mode. A case fails on a non-empty `Decision.errors` unless it expects them; a case
//! that asserts nothing is an invalid file, not a silent pass; and a policy file whose
//! policies no case reaches is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use chrono::Duration;
use saphyr::{MarkedYaml, YamlData};
use serde::Serialize;
use serde_json::Value;

use crate::build::Mutation;
use crate::decide::{Ctx, Mode};
use crate::decision::{Action, Decision};
use crate::diag::LoadError;
use crate::diag::{Diagnostic, Pos};
use crate::engine::Engine;
use crate::event::{Event, Timestamp};
use crate::history::History;
use crate::normalize::{self, Input, NormalizerState};
use crate::policy;
use crate::yaml::{pos, scalar_str, with_yaml_doc, Cx};

/// The time of a single-event case that gives neither `now` nor an event `time`.
pub const DEFAULT_CASE_TIME: &str = "2026-01-01T00:00:00Z";

/// Options of a test run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct TestOptions {
    /// Run only the steps whose full name (`file::case::step`) contains this text.
    pub run: Option<String>,
}

impl TestOptions {
    /// Selects steps whose full name contains `pattern`.
    pub fn run(mut self, pattern: impl Into<String>) -> Self {
        self.run = Some(pattern.into());
        self
    }
}

/// `*.test.yaml` / `*.test.yml`.
pub fn is_test_file(name: &str) -> bool {
    name.ends_with(".test.yaml") || name.ends_with(".test.yml")
}

/// What one assertion expected and what the decision had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    /// What was compared, e.g. `action`.
    pub what: String,
    /// The expected value.
    pub expected: String,
    /// The actual value.
    pub actual: String,
}

/// The outcome of one step (a single-event case has one step).
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Stable name: `file::case` or `file::case::step`.
    pub id: String,
    /// Whether every assertion held.
    pub passed: bool,
    /// The assertions that did not.
    pub failures: Vec<Mismatch>,
    /// The decisions made (one per decided event).
    pub decisions: Vec<Decision>,
}

/// The outcome of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Its steps.
    pub steps: Vec<StepResult>,
}

/// The outcome of one test file.
#[derive(Debug, Clone, Serialize)]
pub struct FileResult {
    /// The test file.
    pub file: PathBuf,
    /// Its cases (those selected).
    pub cases: Vec<CaseResult>,
}

/// How often a policy matched and won across all cases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyCoverage {
    /// The policy.
    pub policy: String,
    /// Its file.
    pub file: PathBuf,
    /// Decisions in which it matched.
    pub matched: usize,
    /// Decisions it won (or, for an escalate policy, escalated).
    pub won: usize,
}

/// The outcome of a test run.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    /// Per test file.
    pub files: Vec<FileResult>,
    /// Per policy, in rank order.
    pub coverage: Vec<PolicyCoverage>,
    /// Policy files none of whose policies any case matched (only when no filter is set).
    pub uncovered_files: Vec<PathBuf>,
}

impl TestReport {
    /// Every step result.
    pub fn steps(&self) -> impl Iterator<Item = &StepResult> {
        self.files
            .iter()
            .flat_map(|f| f.cases.iter())
            .flat_map(|c| c.steps.iter())
    }

    /// Steps that failed.
    pub fn failed(&self) -> usize {
        self.steps().filter(|s| !s.passed).count()
    }

    /// Whether every step passed and every policy file is reached.
    pub fn passed(&self) -> bool {
        self.failed() == 0 && self.uncovered_files.is_empty()
    }

    /// Policies no case matched.
    pub fn never_matched(&self) -> impl Iterator<Item = &PolicyCoverage> {
        self.coverage.iter().filter(|c| c.matched == 0)
    }

    /// The report as JUnit XML (testsuites > testsuite per file > testcase per step, named
    /// `file::case::step`).
    pub fn to_junit(&self) -> String {
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let total: usize = self.steps().count();
        x.push_str(&format!(
            "<testsuites name=\"keel test\" tests=\"{total}\" failures=\"{}\" errors=\"0\">\n",
            self.failed()
        ));
        for (i, f) in self.files.iter().enumerate() {
            let steps: Vec<&StepResult> = f.cases.iter().flat_map(|c| c.steps.iter()).collect();
            let failures = steps.iter().filter(|s| !s.passed).count();
            let file = xml(&f.file.display().to_string());
            x.push_str(&format!(
                "  <testsuite name=\"{file}\" id=\"{i}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"0\">\n",
                steps.len()
            ));
            for s in steps {
                x.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"{file}\" time=\"0\"",
                    xml(&s.id)
                ));
                if s.passed {
                    x.push_str("/>\n");
                    continue;
                }
                x.push_str(">\n");
                let msg = s
                    .failures
                    .iter()
                    .map(|m| format!("{}: expected {}, got {}", m.what, m.expected, m.actual))
                    .collect::<Vec<_>>()
                    .join("; ");
                x.push_str(&format!(
                    "      <failure message=\"{}\" type=\"assertion\">{}</failure>\n",
                    xml(&msg),
                    xml(&msg)
                ));
                x.push_str("    </testcase>\n");
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

/// Escapes text for XML attributes and content, dropping characters XML 1.0 forbids.
fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Test files.

#[derive(Debug, Clone)]
enum Source {
    Event(Box<Event>),
    From(From),
    Redecide(usize),
}

#[derive(Debug, Clone)]
struct From {
    normalizer: String,
    payload: Vec<u8>,
    previous: Option<Vec<u8>>,
    self_name: Option<String>,
    observed_at: Option<Timestamp>,
    index: Option<usize>,
    with: Option<Value>,
    operation: Option<crate::event::Operation>,
}

#[derive(Debug, Clone, Default)]
struct Expect {
    action: Option<Action>,
    /// `Some(None)`: the default applied (no winner).
    policy: Option<Option<String>>,
    reason: Option<String>,
    reason_contains: Option<String>,
    params: Option<serde_json::Map<String, Value>>,
    escalations: Option<Vec<ExpectEscalation>>,
    matched: Vec<String>,
    not_matched: Vec<String>,
    errors: Option<Vec<String>>,
    warnings_contain: Vec<String>,
    due: Option<TimeSpec>,
    retry_not_before: Option<TimeSpec>,
    retry_request: Option<bool>,
    events: Option<usize>,
}

#[derive(Debug, Clone)]
struct ExpectEscalation {
    policy: String,
    severity: Option<String>,
    reason_contains: Option<String>,
}

#[derive(Debug, Clone, Copy)]
enum TimeSpec {
    Absolute(Timestamp),
    /// Relative to the decision's `now`.
    After(i64),
}

#[derive(Debug, Clone)]
struct Step {
    name: String,
    at: Timestamp,
    source: Source,
    expect: Expect,
}

#[derive(Debug, Clone, Default)]
struct Totals {
    pages: Option<usize>,
    pages_by_policy: BTreeMap<String, usize>,
    actions: BTreeMap<Action, usize>,
}

#[derive(Debug, Clone)]
struct Case {
    name: String,
    sequence: bool,
    steps: Vec<Step>,
    totals: Totals,
}

#[derive(Debug, Clone)]
struct TestFile {
    path: PathBuf,
    /// The policy set the cases run against (a directory or file), as written.
    set: PathBuf,
    cases: Vec<Case>,
}

/// Finds test files under `root` (recursively, sorted), or `root` itself.
fn find_test_files(root: &Path, diags: &mut Vec<Diagnostic>) -> Vec<PathBuf> {
    policy::find_matching(root, diags, "test path", is_test_file)
}

fn parse_test_file(path: &Path, diags: &mut Vec<Diagnostic>) -> Option<TestFile> {
    let bytes = match std::fs::read(path) {
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

fn file_doc(cx: &mut Cx<'_, '_>, doc: &MarkedYaml<'_>, dir: &Path) -> (Vec<Case>, Option<PathBuf>) {
    let Some(entries) = cx.map(doc, "the test file", &["version", "policies", "cases"]) else {
        return (Vec::new(), None);
    };
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
                    if let Some(c) = case(cx, item, dir) {
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

fn time_value(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<Timestamp> {
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

/// A non-negative offset: `0`, `30`, `30s`, `15m`, `2h`, `1d`.
fn offset_value(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<i64> {
    let s = scalar_str(n).map(|s| s.trim().trim_start_matches('+').to_string());
    match s.as_deref() {
        Some("0") | Some("0s") => Some(0),
        Some(s) => match policy::parse_duration(s).or_else(|| {
            crate::compile::parse_cel_duration(s)
                .filter(|d| *d >= Duration::zero())
                .map(|d| d.num_seconds())
        }) {
            Some(v) => Some(v),
            None => {
                cx.err(
                    pos(n),
                    format!("{what} must be an offset like 0s, 30s, 15m, 2h, 1h30m"),
                );
                None
            }
        },
        None => {
            cx.err(
                pos(n),
                format!("{what} must be an offset like 0s, 30s, 15m, 2h, 1h30m"),
            );
            None
        }
    }
}

fn case(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, dir: &Path) -> Option<Case> {
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
        ],
    )?;
    let before = cx.diags.len();
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _, _)| key == k)
            .map(|(_, _, v)| *v)
    };
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
            sequence: true,
            steps,
            totals,
        }
    } else {
        if let Some(v) = get("start") {
            cx.err(pos(v), "`start` belongs to a case with `steps`");
        }
        if get("totals").is_some() {
            cx.err(pos(n), "`totals` belongs to a case with `steps`");
        }
        let now = get("now").and_then(|v| time_value(cx, v, "`now`"));
        let source = source(cx, n, now, get("event"), get("from"), None, dir, &[])?;
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
            sequence: false,
            steps: vec![Step {
                name,
                at,
                source,
                expect: expect?,
            }],
            totals: Totals::default(),
        }
    };
    (cx.diags.len() == before).then_some(case)
}

fn default_time() -> Timestamp {
    DEFAULT_CASE_TIME.parse().unwrap_or_default()
}

fn step(
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
        &["name", "at", "event", "from", "redecide", "expect"],
    )?;
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _, _)| key == k)
            .map(|(_, _, v)| *v)
    };
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
    let source = source(
        cx,
        n,
        Some(at),
        get("event"),
        get("from"),
        get("redecide"),
        dir,
        earlier,
    )?;
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
    Some(Step {
        name,
        at,
        source,
        expect,
    })
}

#[allow(clippy::too_many_arguments)]
fn source(
    cx: &mut Cx<'_, '_>,
    n: &MarkedYaml<'_>,
    at: Option<Timestamp>,
    event: Option<&MarkedYaml<'_>>,
    from: Option<&MarkedYaml<'_>>,
    redecide: Option<&MarkedYaml<'_>>,
    dir: &Path,
    earlier: &[Step],
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
                Some(i) if !matches!(earlier[i].source, Source::Redecide(_)) => {
                    Some(Source::Redecide(i))
                }
                _ => {
                    cx.err(pos(r), "`redecide` names an earlier step (by name, or by number from 1) that has an event");
                    None
                }
            }
        }
        (None, None, None) => {
            cx.err(pos(n), "give the event: `event` (a normalized event) or `from` (a vendor payload and its normalizer)");
            None
        }
        _ => {
            cx.err(pos(n), "give only one of `event`, `from` and `redecide`");
            None
        }
    }
}

fn from_spec(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, dir: &Path) -> Option<From> {
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
    let get = |k: &str| {
        entries
            .iter()
            .find(|(key, _, _)| key == k)
            .map(|(_, _, v)| *v)
    };
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
        match std::fs::read(&path) {
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

fn string_list(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Vec<String> {
    match &n.data {
        YamlData::Sequence(items) => items.iter().filter_map(|i| cx.string(i, what)).collect(),
        _ => cx.string(n, what).into_iter().collect(),
    }
}

fn time_spec(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<TimeSpec> {
    let s = cx.string(n, what)?;
    if let Some(rel) = s.strip_prefix('+') {
        if let Some(secs) = policy::parse_duration(rel) {
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

fn expect(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Option<Expect> {
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
        || e.events.is_some();
    if !asserts && cx.diags.len() == before {
        cx.err(
            pos(n),
            "`expect` asserts nothing (empty lists and maps check nothing): a case must assert something",
        );
    }
    (cx.diags.len() == before).then_some(e)
}

fn totals(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Totals {
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
fn build_event(mut v: Value, at: Option<Timestamp>) -> Result<Event, String> {
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
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        if let Value::Object(obj) = &mut v {
            obj.insert("id".into(), Value::String(format!("test:{hex}")));
        }
    }
    serde_json::from_value(v).map_err(|e| crate::event::strip_serde_position(&e.to_string()))
}

/// Merges `patch` into `base` (objects recursively; anything else replaces).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

fn load_tests(root: &Path) -> Result<Vec<TestFile>, LoadError> {
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
struct Set {
    engine: Engine,
    files: Vec<usize>,
}

/// Groups the files by policy set (the same directory however it is written) and loads each
/// set once. Every invalid set is reported.
fn load_sets(
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

/// A policy whose mutation no case noticed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Survivor {
    /// The policy.
    pub policy: String,
    /// Its file.
    pub file: PathBuf,
    /// What was done to it: `disabled` or `when forced false`.
    pub mutation: String,
}

/// The outcome of [`mutation_check`].
#[derive(Debug, Clone, Serialize)]
pub struct MutationReport {
    /// Steps that fail without any mutation (the check needs a passing suite).
    pub baseline_failures: usize,
    /// Mutations tried.
    pub tried: usize,
    /// Mutations under which every case still passed.
    pub survivors: Vec<Survivor>,
}

/// Proves the cases are not vacuous: for every policy of every set, runs the set's cases with
/// the policy disabled, then with its `when` forced false, and reports the mutations under
/// which every case still passed. The suite must pass unmutated first.
pub fn mutation_check(root: &Path, opts: &TestOptions) -> Result<MutationReport, LoadError> {
    let files = load_tests(root)?;
    let sets = load_sets(&files, None)?;
    let baseline_failures = run_sets(&sets, &files, opts).failed();
    let mut survivors = Vec::new();
    let mut tried = 0;
    if baseline_failures > 0 {
        return Ok(MutationReport {
            baseline_failures,
            tried,
            survivors,
        });
    }
    for (key, set) in &sets {
        let mine: Vec<TestFile> = set.files.iter().map(|&i| files[i].clone()).collect();
        for p in set.engine.policies() {
            for (m, label) in [
                (Mutation::Disable(p.name.clone()), "disabled"),
                (Mutation::ForceFalse(p.name.clone()), "when forced false"),
            ] {
                tried += 1;
                let mutated = load_sets(&mine, Some((key, m)))?;
                if run_sets(&mutated, &mine, opts).failed() == 0 {
                    survivors.push(Survivor {
                        policy: p.name.clone(),
                        file: p.file.clone(),
                        mutation: label.into(),
                    });
                }
            }
        }
    }
    Ok(MutationReport {
        baseline_failures,
        tried,
        survivors,
    })
}

fn run_sets(sets: &[(PathBuf, Set)], files: &[TestFile], opts: &TestOptions) -> TestReport {
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
                let steps = run_case(&set.engine, c, &ids, &file, &mut coverage[start..]);
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

fn run_case(
    engine: &Engine,
    c: &Case,
    ids: &[String],
    file: &str,
    coverage: &mut [PolicyCoverage],
) -> Vec<StepResult> {
    // Every case starts from fresh plugin instances (and a fresh history): no case depends on
    // the ones before it.
    engine.reset_plugin_instances();
    let mut history = History::new();
    let mut nstate = NormalizerState::default();
    let mut step_events: Vec<Vec<Event>> = Vec::new();
    let mut all: Vec<Decision> = Vec::new();
    let mut results = Vec::new();
    for (step, id) in c.steps.iter().zip(ids) {
        let mut failures = Vec::new();
        let (events, redecide) = match &step.source {
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
        let mut decisions = Vec::new();
        for ev in &events {
            if !redecide {
                history.record(ev);
            }
            let d = engine.decide(
                ev,
                &Ctx::new(step.at)
                    .with_mode(Mode::Full)
                    .with_history(&history),
            );
            history.record_decision(ev, &d);
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
        } else if events.is_empty() && failures.is_empty() {
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
        results.push(StepResult {
            id: id.clone(),
            passed: failures.is_empty(),
            failures,
            decisions,
        });
    }
    if c.sequence {
        let failures = check_totals(&c.totals, &all);
        if c.totals.pages.is_some()
            || !c.totals.pages_by_policy.is_empty()
            || !c.totals.actions.is_empty()
        {
            results.push(StepResult {
                id: format!("{file}::{}::totals", c.name),
                passed: failures.is_empty(),
                failures,
                decisions: Vec::new(),
            });
        }
    }
    results
}

fn run_normalizer(
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

fn make_input<'a>(bytes: &'a [u8], at: Timestamp, me: Option<&'a str>) -> Input<'a> {
    let i = Input::new(bytes, at);
    match me {
        Some(n) => i.self_name(n),
        None => i,
    }
}

fn show_time(t: Option<Timestamp>) -> String {
    t.map_or_else(|| "none".into(), |t| t.to_rfc3339())
}

fn resolve(spec: TimeSpec, now: Timestamp) -> Option<Timestamp> {
    match spec {
        TimeSpec::Absolute(t) => Some(t),
        TimeSpec::After(s) => Duration::try_seconds(s).and_then(|d| now.checked_add_signed(d)),
    }
}

fn check(e: &Expect, d: &Decision, now: Timestamp, out: &mut Vec<Mismatch>) {
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
            miss("reason", r.clone(), d.reason.clone().unwrap_or_default());
        }
    }
    if let Some(r) = &e.reason_contains {
        if !d.reason.as_deref().unwrap_or("").contains(r.as_str()) {
            miss(
                "reason",
                format!("containing {r:?}"),
                d.reason.clone().unwrap_or_default(),
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
            .map(|(p, _)| p.policy.clone())
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

fn check_totals(t: &Totals, all: &[Decision]) -> Vec<Mismatch> {
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
