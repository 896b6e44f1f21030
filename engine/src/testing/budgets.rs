//! Budgets in `keel test`: the test-file keys (`budgets:`, a step's `runbook:`, `expect.held`,
//! `expect.released`, `expect.escalated`) and the gate a sequence runs its decisions through,
//! on the case's virtual clock, with the engine's budget model ([`crate::budget`]): the same
//! admission and reasons as the host.
//!
//! A decision whose action a budget names takes its slots at its step's time if every such
//! budget admits it, else it is held. Held decisions are looked at again, oldest first, at
//! every instant something changes before the next step (a runbook ends, a bake ends, a
//! deadline comes) and at the next step's time: one whose deadline
//! ([`crate::budget::hold_deadline`]) has come escalates, one the budgets now admit is
//! released and its runbook starts then. A runbook runs for its step's `runbook:` time (none by
//! default) and its slots then bake for the budget's `bake`. On the virtual clock a holder never
//! dies: leases do not expire while their runbook runs.

use std::collections::BTreeMap;

use saphyr::{MarkedYaml, YamlData};
use serde::Serialize;

use crate::budget::{self, BudgetSpec, KeyView, Lease, Member};
use crate::decision::Decision;
use crate::diag::Pos;
use crate::event::{Event, Timestamp};
use crate::yaml::{pos, scalar_str, Cx};

use super::format::{Case, Expect, Source, Step};
use super::report::Mismatch;

/// `expect.held: {by, reason_contains, scope}`.
#[derive(Debug, Clone, Default)]
pub(super) struct ExpectHeld {
    pub(super) reason_contains: Option<String>,
    pub(super) scope: Option<String>,
}

/// Step names as written in `released` or `escalated`, with the list's position.
#[derive(Debug, Clone)]
pub(super) struct StepNames {
    pub(super) at: Pos,
    pub(super) names: Vec<String>,
}

impl Expect {
    /// Whether it asserts only what happens to earlier held decisions (a step may then have
    /// no event of its own).
    pub(super) fn only_gate_changes(&self) -> bool {
        (self.released.is_some() || self.escalated.is_some())
            && self.action.is_none()
            && self.policy.is_none()
            && self.reason.is_none()
            && self.reason_contains.is_none()
            && self.params.is_none()
            && self.escalations.is_none()
            && self.matched.is_empty()
            && self.not_matched.is_empty()
            && self.errors.is_none()
            && self.warnings_contain.is_empty()
            && self.due.is_none()
            && self.retry_not_before.is_none()
            && self.retry_request.is_none()
            && self.events.is_none()
            && self.guard.is_none()
            && self.held.is_none()
    }
}

/// `budgets:` of a test file or case: the same keys as `keel.yaml`'s, read by the same reader.
pub(super) fn read_budgets_node(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Vec<BudgetSpec> {
    let doc = crate::yaml::subtree_doc(&cx.file, n);
    let (budgets, diags) = budget::read_budgets(&doc, "");
    cx.diags.extend(diags);
    budgets
}

/// `held: false`, `held: true`, or `held: {by: budget, reason_contains, scope}`.
pub(super) fn expect_held(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>) -> Option<Option<ExpectHeld>> {
    if let YamlData::Value(saphyr::Scalar::Boolean(b)) = &n.data {
        return Some(b.then(ExpectHeld::default));
    }
    let entries = cx.map(n, "`held`", &["by", "reason_contains", "scope"])?;
    let mut h = ExpectHeld::default();
    for (key, _, v) in &entries {
        match key.as_str() {
            "by" => {
                if let Some(by) = cx.string(v, "`by`") {
                    if by != "budget" {
                        cx.err(
                            pos(v),
                            format!(
                                "`by: {}`: in `keel test` only budgets hold decisions (`by: budget`)",
                                crate::escape(&by)
                            ),
                        );
                    }
                }
            }
            "reason_contains" => h.reason_contains = cx.string(v, "`reason_contains`"),
            "scope" => h.scope = cx.string(v, "`scope`"),
            _ => {}
        }
    }
    Some(Some(h))
}

/// A list of step names (or numbers from 1); `[]` for none.
pub(super) fn step_names(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, what: &str) -> Option<StepNames> {
    let YamlData::Sequence(items) = &n.data else {
        cx.err(
            pos(n),
            format!(
                "{what} must be a list of earlier steps (names, or numbers from 1); [] for none"
            ),
        );
        return None;
    };
    let names = items
        .iter()
        .filter_map(|i| match scalar_str(i) {
            Some(s) => Some(s.into_owned()),
            None => {
                cx.err(pos(i), format!("{what}: expected a step's name or number"));
                None
            }
        })
        .collect();
    Some(StepNames { at: pos(n), names })
}

/// The earlier steps `names` name, by index (by name, else by number from 1).
pub(super) fn resolve_steps(
    cx: &mut Cx<'_, '_>,
    names: Option<&StepNames>,
    earlier: &[Step],
    what: &str,
) -> Option<Option<Vec<usize>>> {
    let Some(names) = names else {
        return Some(None);
    };
    let mut out = Vec::new();
    for n in &names.names {
        let idx = earlier.iter().position(|s| &s.name == n).or_else(|| {
            n.parse::<usize>()
                .ok()
                .filter(|i| (1..=earlier.len()).contains(i))
                .map(|i| i - 1)
        });
        match idx {
            Some(i) => out.push(i),
            None => {
                let help = crate::fields::did_you_mean(n, earlier.iter().map(|s| s.name.as_str()))
                    .map(|h| format!("did you mean `{h}`?"));
                cx.err_help(
                    names.at,
                    format!(
                        "`{what}` names `{}`, which is not an earlier step (a name, or a number from 1)",
                        crate::escape(n)
                    ),
                    help,
                );
                return None;
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Some(Some(out))
}

/// The budget keys of a case need budgets to act on.
pub(super) fn check_gate_keys(cx: &mut Cx<'_, '_>, n: &MarkedYaml<'_>, c: &Case) {
    if !c.budgets.is_empty() {
        return;
    }
    let uses = c.steps.iter().any(|s| {
        s.expect.held.is_some()
            || s.expect.released.is_some()
            || s.expect.escalated.is_some()
            || s.runbook_s != 0
    });
    if uses {
        cx.err(
            pos(n),
            "`held`, `released`, `escalated` and `runbook` need budgets: declare `budgets:` in the test file or the case",
        );
    }
}

/// A decision held at its step's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldDecision {
    /// The event decided.
    pub event_id: String,
    /// What held it: `budget`.
    pub by: String,
    /// Which one: `<budget>/<key>`.
    pub scope: String,
    /// Why, as the host writes it (`held: budget ud/web full, ...`).
    pub reason: String,
    /// By when it must run, else it escalates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Timestamp>,
}

/// A held decision released, or escalated at its deadline, since the previous step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateChange {
    /// The step that made the decision (its full name).
    pub step: String,
    /// The event decided.
    pub event_id: String,
    /// When.
    pub at: Timestamp,
    /// For an escalation: why, as the host's escalation says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
struct SimLease {
    budget: String,
    key: String,
    unit: String,
    decision: usize,
    holder: String,
    /// When its runbook ends.
    end: Timestamp,
    /// When its bake ends.
    free: Timestamp,
}

#[derive(Debug, Clone)]
struct Held {
    step: usize,
    decision: usize,
    event: Event,
    action: crate::decision::Action,
    deadline: Option<Timestamp>,
    scope: String,
    reason: String,
    runbook_s: i64,
}

/// What happened to held decisions while the clock advanced.
#[derive(Debug, Default)]
pub(super) struct Changes {
    /// (step index, event id, when).
    pub(super) released: Vec<(usize, String, Timestamp)>,
    /// (step index, event id, when, why).
    pub(super) escalated: Vec<(usize, String, Timestamp, String)>,
}

/// The budgets' state of one sequence on its virtual clock.
pub(super) struct Gate<'a> {
    budgets: &'a [BudgetSpec],
    leases: Vec<SimLease>,
    members: BTreeMap<(String, String), BTreeMap<String, bool>>,
    held: Vec<Held>,
    decisions: usize,
    now: Option<Timestamp>,
}

impl<'a> Gate<'a> {
    pub(super) fn new(budgets: &'a [BudgetSpec]) -> Gate<'a> {
        Gate {
            budgets,
            leases: Vec::new(),
            members: BTreeMap::new(),
            held: Vec::new(),
            decisions: 0,
            now: None,
        }
    }

    /// Whether any budget is declared.
    pub(super) fn active(&self) -> bool {
        !self.budgets.is_empty()
    }

    /// Records `ev`'s unit as a member of each budget's group, with the health it reports.
    pub(super) fn note(&mut self, ev: &Event) {
        let healthy = budget::health_of(ev);
        for b in self.budgets {
            let (key, unit) = budget::key_and_unit(b, ev);
            let group = self.members.entry((b.name.clone(), key)).or_default();
            let h = group.entry(unit).or_insert(true);
            if let Some(v) = healthy {
                *h = v;
            }
        }
    }

    fn view(&self, budget: &str, key: &str, now: Timestamp) -> KeyView {
        let mut live: Vec<(Timestamp, usize, Lease)> = self
            .leases
            .iter()
            .filter(|l| l.budget == budget && l.key == key && now < l.free)
            .map(|l| {
                let released = now >= l.end;
                let expires_at = if released { l.free } else { l.end };
                let lease = Lease {
                    unit: l.unit.clone(),
                    holder: l.holder.clone(),
                    expires_at,
                    released,
                };
                (expires_at, l.decision, lease)
            })
            .collect();
        live.sort_by_key(|l| (l.0, l.1));
        let members = self
            .members
            .get(&(budget.to_string(), key.to_string()))
            .map(|m| {
                m.iter()
                    .map(|(member, healthy)| Member {
                        member: member.clone(),
                        healthy: *healthy,
                    })
                    .collect()
            })
            .unwrap_or_default();
        KeyView {
            live: live.into_iter().map(|(_, _, l)| l).collect(),
            members,
        }
    }

    /// Takes every slot the decision needs at `now` (all or none), its runbook running for
    /// `runbook_s`; else the first full budget's (scope, reason).
    fn take(
        &mut self,
        decision: usize,
        ev: &Event,
        action: crate::decision::Action,
        now: Timestamp,
        runbook_s: i64,
    ) -> Result<(), (String, String)> {
        let mut wants = Vec::new();
        for b in self.budgets.iter().filter(|b| b.applies_to(action)) {
            let (key, unit) = budget::key_and_unit(b, ev);
            let view = self.view(&b.name, &key, now);
            if let Err(why) = budget::admit(b, &key, &unit, &view) {
                return Err((
                    format!("{}/{}", b.name, crate::escape(&key)),
                    format!("held: {why}"),
                ));
            }
            wants.push((b, key, unit));
        }
        let end = add(now, runbook_s);
        for (b, key, unit) in wants {
            self.leases.push(SimLease {
                budget: b.name.clone(),
                key,
                unit,
                decision,
                holder: ev.id.clone(),
                end,
                free: add(end, b.bake_s),
            });
        }
        Ok(())
    }

    /// Advances the clock to `to`, looking at the held decisions at every instant something
    /// changes on the way and at `to`.
    pub(super) fn advance(&mut self, to: Timestamp, out: &mut Changes) {
        loop {
            let from = self.now;
            let next = self
                .leases
                .iter()
                .flat_map(|l| [l.end, l.free])
                .chain(self.held.iter().filter_map(|h| h.deadline))
                .filter(|t| from.is_none_or(|f| *t > f) && *t < to)
                .min();
            let at = next.unwrap_or(to);
            self.look(at, out);
            self.now = Some(at);
            if at >= to {
                return;
            }
        }
    }

    /// One look at the held decisions at `now`, oldest first.
    fn look(&mut self, now: Timestamp, out: &mut Changes) {
        let held = std::mem::take(&mut self.held);
        for mut h in held {
            if let Some(deadline) = h.deadline.filter(|d| *d <= now) {
                let why = budget::held_past_deadline(deadline, "budget", &h.scope, &h.reason);
                out.escalated.push((h.step, h.event.id.clone(), now, why));
                continue;
            }
            match self.take(h.decision, &h.event, h.action, now, h.runbook_s) {
                Ok(()) => out.released.push((h.step, h.event.id.clone(), now)),
                Err((scope, reason)) => {
                    h.scope = scope;
                    h.reason = reason;
                    self.held.push(h);
                }
            }
        }
    }

    /// The gate for a new decision `d` on `ev` of step `step` at `now` (the clock advanced to
    /// it): passes (its slots taken, or no budget names its action) or holds.
    pub(super) fn decide(
        &mut self,
        step: usize,
        ev: &Event,
        d: &Decision,
        now: Timestamp,
        runbook_s: i64,
    ) -> Option<HeldDecision> {
        self.decisions += 1;
        let decision = self.decisions;
        match self.take(decision, ev, d.action, now, runbook_s) {
            Ok(()) => None,
            Err((scope, reason)) => {
                let deadline = budget::hold_deadline(ev, d, now);
                self.held.push(Held {
                    step,
                    decision,
                    event: ev.clone(),
                    action: d.action,
                    deadline,
                    scope: scope.clone(),
                    reason: reason.clone(),
                    runbook_s,
                });
                Some(HeldDecision {
                    event_id: ev.id.clone(),
                    by: "budget".into(),
                    scope,
                    reason,
                    deadline,
                })
            }
        }
    }
}

fn add(t: Timestamp, secs: i64) -> Timestamp {
    chrono::Duration::try_seconds(secs)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(t)
}

/// Checks `expect.held` against what the gate said of one decision.
pub(super) fn check_held(e: &Expect, got: Option<&HeldDecision>, out: &mut Vec<Mismatch>) {
    let Some(want) = &e.held else { return };
    let mut miss = |expected: String, actual: String| {
        out.push(Mismatch {
            what: "held".into(),
            expected,
            actual,
        })
    };
    let shown = |h: Option<&HeldDecision>| {
        h.map_or_else(
            || "not held".to_string(),
            |h| format!("held by {} `{}`: {}", h.by, h.scope, h.reason),
        )
    };
    match (want, got) {
        (None, None) => {}
        (None, Some(_)) => miss("not held".into(), shown(got)),
        (Some(_), None) => miss("held by a budget".into(), shown(got)),
        (Some(w), Some(h)) => {
            if let Some(r) = &w.reason_contains {
                if !h.reason.contains(r.as_str()) {
                    miss(format!("held, the reason containing {r:?}"), shown(got));
                }
            }
            if let Some(s) = &w.scope {
                if *s != h.scope {
                    miss(format!("held by budget `{s}`"), shown(got));
                }
            }
        }
    }
}

/// Checks `expect.released` / `expect.escalated` (the steps, exactly) against the changes
/// since the previous step.
pub(super) fn check_changes(
    step: &Step,
    steps: &[Step],
    changes: &Changes,
    out: &mut Vec<Mismatch>,
) {
    let names = |idx: &mut Vec<usize>| {
        idx.sort_unstable();
        idx.dedup();
        let shown: Vec<&str> = idx
            .iter()
            .filter_map(|i| steps.get(*i).map(|s| s.name.as_str()))
            .collect();
        format!("{shown:?}")
    };
    if let Some(want) = &step.released {
        let mut got: Vec<usize> = changes.released.iter().map(|c| c.0).collect();
        let mut w = want.clone();
        let (w, g) = (names(&mut w), names(&mut got));
        if w != g {
            out.push(Mismatch {
                what: "released".into(),
                expected: w,
                actual: g,
            });
        }
    }
    if let Some(want) = &step.escalated {
        let mut got: Vec<usize> = changes.escalated.iter().map(|c| c.0).collect();
        let mut w = want.clone();
        let (w, g) = (names(&mut w), names(&mut got));
        if w != g {
            out.push(Mismatch {
                what: "escalated".into(),
                expected: w,
                actual: g,
            });
        }
    }
}

/// Whether a step has an event to decide.
pub(super) fn has_event(s: &Step) -> bool {
    !matches!(s.source, Source::None)
}
