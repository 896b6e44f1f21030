//! The report of a test run: per file, case and step, with coverage, and its JUnit XML form.

use std::path::PathBuf;

use serde::Serialize;

use crate::decision::Decision;

use super::{GateChange, HeldDecision};

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
    /// The 1-based line of the step in its test file (of the case, for a single-event case
    /// and for a sequence's `totals`).
    pub line: usize,
    /// How long the step took, in seconds (0 without a clock in [`super::TestOptions`]).
    pub time_s: f64,
    /// Whether every assertion held.
    pub passed: bool,
    /// The assertions that did not.
    pub failures: Vec<Mismatch>,
    /// The decisions made (one per decided event).
    pub decisions: Vec<Decision>,
    /// The decisions of this step a budget held (a case with `budgets:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldDecision>,
    /// Held decisions of earlier steps released since the previous step (their runbooks
    /// started).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<GateChange>,
    /// Held decisions of earlier steps escalated since the previous step (their deadline
    /// passed while held).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub escalated: Vec<GateChange>,
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
    /// `file::case::step`), valid against the `junit-10.xsd` schema: each step's time, and a
    /// failure's message led by the step's `file:line`.
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
            let path = f.file.display().to_string();
            let file = xml(&path);
            let time: f64 = steps.iter().map(|s| s.time_s).sum();
            x.push_str(&format!(
                "  <testsuite name=\"{file}\" id=\"{i}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time:.3}\">\n",
                steps.len()
            ));
            for s in steps {
                x.push_str(&format!(
                    "    <testcase name=\"{}\" classname=\"{file}\" time=\"{:.6}\"",
                    xml(&s.id),
                    s.time_s
                ));
                let gate = gate_lines(s);
                if s.passed && gate.is_empty() {
                    x.push_str("/>\n");
                    continue;
                }
                x.push_str(">\n");
                if s.passed {
                    x.push_str(&format!("      <system-out>{}</system-out>\n", xml(&gate)));
                    x.push_str("    </testcase>\n");
                    continue;
                }
                let msg = s
                    .failures
                    .iter()
                    .map(|m| format!("{}: expected {}, got {}", m.what, m.expected, m.actual))
                    .collect::<Vec<_>>()
                    .join("; ");
                // The case's location leads the message, as a compiler's would: JUnit's schema
                // has no attribute for it.
                let located = format!("{path}:{}: {msg}", s.line);
                x.push_str(&format!(
                    "      <failure message=\"{}\" type=\"assertion\">{}</failure>\n",
                    xml(&located),
                    xml(&located)
                ));
                if !gate.is_empty() {
                    x.push_str(&format!("      <system-out>{}</system-out>\n", xml(&gate)));
                }
                x.push_str("    </testcase>\n");
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

/// What the budgets did at a step, one line each: decisions held, and earlier ones released
/// or escalated since the previous step.
fn gate_lines(s: &StepResult) -> String {
    let mut lines = Vec::new();
    for h in &s.held {
        lines.push(format!(
            "held {} by {} `{}`: {}",
            h.event_id, h.by, h.scope, h.reason
        ));
    }
    for r in &s.released {
        lines.push(format!(
            "released {} at {} ({})",
            r.event_id,
            r.at.to_rfc3339(),
            r.step
        ));
    }
    for e in &s.escalated {
        lines.push(format!(
            "escalated {} at {}: {}",
            e.event_id,
            e.at.to_rfc3339(),
            e.reason.as_deref().unwrap_or_default()
        ));
    }
    lines.join("\n")
}

/// Escapes text for XML attributes and content, dropping characters XML 1.0 forbids.
pub(super) fn xml(s: &str) -> String {
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
