//! [`Engine::decide`]: what a caller passes in ([`Ctx`], [`Mode`]), candidate selection,
//! resolution, escalation, plugin calls and the escalation dedup key.

use chrono::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::compile::{Compiled, Interp, V};
use crate::decision::{
    Action, Decision, Escalation, Matched, Outcome, PolicyError, Retry, Severity, SharedStr, Trace,
};
use crate::engine::{kind_slot, Engine, Policy};
use crate::event::{Event, Timestamp};
use crate::fields::{self, FieldId, FieldValue};
use crate::history::History;
use crate::index::{Bits, Found64, KindIndex};
use crate::policy::Backoff;

/// How much work [`crate::Engine::decide`] may skip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Stop as soon as no remaining candidate can win (escalate policies are still all
    /// evaluated); skipped candidates are listed in [`Decision::not_evaluated`].
    #[default]
    Fast,
    /// Evaluate every candidate the index selects and record a per-policy [`Decision::trace`].
    Full,
}

/// The context of one decision. Time comes in here: the engine never reads a clock.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Ctx<'h> {
    /// The current time, as CEL `now`, and the base of `defer` and `retry` delays.
    pub now: Timestamp,
    /// The correlation history that `history.*` in CEL reads (owned by the caller); `None`
    /// reads as empty, and the decision says so in a warning.
    pub history: Option<&'h History>,
    /// Fast or full evaluation.
    pub mode: Mode,
}

impl Ctx<'static> {
    /// A fast-mode context at `now`, without history.
    pub fn new(now: Timestamp) -> Ctx<'static> {
        Ctx {
            now,
            history: None,
            mode: Mode::Fast,
        }
    }
}

impl<'h> Ctx<'h> {
    /// The same context in `mode`.
    pub fn with_mode(mut self, mode: Mode) -> Ctx<'h> {
        self.mode = mode;
        self
    }

    /// The same context reading `history`.
    pub fn with_history<'a>(self, history: &'a History) -> Ctx<'a> {
        Ctx {
            now: self.now,
            history: Some(history),
            mode: self.mode,
        }
    }
}

pub use crate::decision::DEFAULT_DEDUP_WINDOW_S;

impl Engine {
    fn candidates(&self, ev: &Event, set: &mut Bits) -> (Found64, &KindIndex) {
        let idx = &self.kinds[kind_slot(ev.kind)];
        let found = if self.indexed {
            idx.candidates(ev, set)
        } else {
            idx.members(set);
            Found64::default()
        };
        (found, idx)
    }

    /// Decides what to do about `event` at `ctx.now`. Never fails: a policy that cannot be
    /// evaluated is reported in [`Decision::errors`] and the others still decide.
    ///
    /// Policies that query `history` read [`Ctx::history`]: the correlation [`History`],
    /// which the caller owns (pass it with [`Ctx::with_history`]): record the event in it
    /// first ([`History::record`]) and the decision after ([`History::record_decision`]).
    /// Escalations whose key the history has seen fire are marked
    /// [`crate::Escalation::repeat`]. Without a history, policies see an empty one, and the
    /// decision says so in a warning.
    pub fn decide(&self, event: &Event, ctx: &Ctx<'_>) -> Decision {
        thread_local! {
            /// The last decision's candidate set, reused: no allocation for it per decision.
            static CANDIDATES: std::cell::RefCell<Bits> = std::cell::RefCell::default();
        }
        let mut cands = CANDIDATES.with(|c| c.take());
        let d = self.decide_among(event, ctx, &mut cands);
        CANDIDATES.with(|c| *c.borrow_mut() = cands);
        d
    }

    fn decide_among(&self, event: &Event, ctx: &Ctx<'_>, cands: &mut Bits) -> Decision {
        let history = ctx.history;
        let (found, idx) = self.candidates(event, cands);
        let cands = &*cands;
        let full = ctx.mode == Mode::Full;
        // Every candidate lands in at most one of `matched` and `not_evaluated`: room for
        // all of them up front (one allocation each instead of a doubling per few).
        let room = cands.count();
        let mut d = Decision {
            event_id: event.id.clone(),
            action: self.default_action,
            policy: None,
            reason: None,
            params: serde_json::Map::new(),
            escalations: Vec::new(),
            retry: None,
            due: None,
            matched: Vec::with_capacity(room),
            not_evaluated: Vec::with_capacity(if full { 0 } else { room }),
            errors: Vec::new(),
            warnings: Vec::new(),
            trace: Trace::default(),
            guard: None,
        };
        let mut interp = Interp::new(&self.env, history, &idx.reads);
        // Each candidate's outcome, kept for the full-mode trace only.
        let mut outcomes: Vec<(u32, Outcome)> = Vec::new();
        let mut record = |pi: u32, o: Outcome| {
            if full {
                outcomes.push((pi, o));
            }
        };
        let mut winner: Option<(u32, Option<PluginHit>)> = None;
        let mut winner_key: Option<RankKey<'_>> = None;
        let mut no_history: Vec<&str> = Vec::new();
        for pi in cands.ones() {
            let p = &self.policies[pi as usize];
            // Escalate policies are always evaluated, and so are plugin policies (a plugin
            // may escalate); others only while they can still beat the current winner.
            let always = p.spec.action == Action::Escalate || p.is_plugin();
            if let (false, false, Some(w)) = (always, full, &winner_key) {
                let best = RankKey {
                    priority: p.spec.priority,
                    severity: p.rank_severity(),
                    name: &p.spec.name,
                };
                if !best.beats(w) {
                    d.not_evaluated.push(p.name.clone());
                    record(pi, Outcome::NotEvaluated);
                    continue;
                }
            }
            if let Some(w) = p.when.as_ref().filter(|w| w.uses_history) {
                match history {
                    None => no_history.push(p.spec.name.as_str()),
                    Some(h) => truncation_warning(&mut d, &p.spec.name, w, event, h),
                }
            }
            let res = match &p.when {
                None => Ok(true),
                Some(w) => {
                    // Where the index proved the atoms true, the rest of the conjunction
                    // decides.
                    let value = match w.residual.as_ref() {
                        Some(r) if idx.residual_decides(pi, found) => {
                            r.eval(event, ctx.now, history)
                        }
                        _ => interp.eval(w, event, ctx.now),
                    };
                    match value {
                        Ok(V::Bool(b)) => Ok(b),
                        Ok(other) => Err(format!("`when` evaluated to {other:?}, not a bool")),
                        Err(e) => Err(e),
                    }
                }
            };
            // The action the policy takes, if it matched; a plugin's decision rides along.
            let hit: Result<Option<(Action, Option<PluginHit>)>, Outcome> = match res {
                Ok(false) => Ok(None),
                Err(e) => {
                    d.errors.push(PolicyError {
                        policy: p.name.clone(),
                        message: e,
                    });
                    Err(Outcome::Errored)
                }
                Ok(true) => self.call(p, event, ctx, history, &mut d),
            };
            let outcome = match hit {
                Err(o) => o,
                Ok(None) => Outcome::False,
                Ok(Some((Action::Escalate, hit))) => {
                    d.matched.push(matched(p, Action::Escalate));
                    self.escalate(p, event, ctx, &mut interp, &mut d, None, hit.as_ref());
                    Outcome::Matched
                }
                Ok(Some(_)) if !p.is_plugin() && exhausted(p, event) => {
                    d.warnings.push(format!(
                        "policy `{}` matched but its retry budget is spent (max_attempts {})",
                        p.spec.name,
                        p.spec.params.max_attempts.unwrap_or(0)
                    ));
                    Outcome::Exhausted
                }
                Ok(Some((action, hit))) => {
                    d.matched.push(matched(p, action));
                    let key = RankKey {
                        priority: p.spec.priority,
                        severity: action.severity(),
                        name: &p.spec.name,
                    };
                    if winner_key.as_ref().is_none_or(|w| key.beats(w)) {
                        winner = Some((pi, hit));
                        winner_key = Some(key);
                    }
                    Outcome::Matched
                }
            };
            record(pi, outcome);
        }
        if !no_history.is_empty() {
            d.warnings.push(format!(
                "no correlation history was given, so history queries count 0 (policies {})",
                no_history
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if winner.is_some() && d.matched.len() > 1 {
            // Plugins decide their action at run time: keep `matched` best first.
            d.matched.sort_by(|a, b| {
                b.priority
                    .cmp(&a.priority)
                    .then(b.action.severity().cmp(&a.action.severity()))
                    .then(a.policy.cmp(&b.policy))
            });
        }
        if let Some((w, hit)) = &winner {
            self.apply_winner(
                &self.policies[*w as usize],
                hit.as_ref(),
                event,
                ctx,
                &mut interp,
                &mut d,
            );
        }
        if let Some(h) = history {
            crate::guard::apply(&self.guards, event, h, &mut d);
        }
        if full {
            let mut all: Vec<Outcome> = vec![Outcome::SkippedByIndex; self.policies.len()];
            for (pi, o) in outcomes {
                if let Some(slot) = all.get_mut(pi as usize) {
                    *slot = o;
                }
            }
            d.trace = Trace::new(self.names.clone(), all);
        }
        d
    }

    /// A policy whose `when` held: its action, or for a plugin policy, the plugin's decision.
    #[allow(clippy::type_complexity)]
    fn call(
        &self,
        p: &Policy,
        event: &Event,
        ctx: &Ctx<'_>,
        history: Option<&History>,
        d: &mut Decision,
    ) -> Result<Option<(Action, Option<PluginHit>)>, Outcome> {
        #[cfg(feature = "plugins")]
        if let Some(plugin) = &p.plugin {
            return self
                .call_plugin(p, plugin, event, ctx, history, d)
                .map(|hit| hit.map(|h| (h.action, Some(h))));
        }
        let _ = (event, ctx, history, &d);
        Ok(Some((p.spec.action, None)))
    }

    #[cfg(feature = "plugins")]
    fn call_plugin(
        &self,
        p: &Policy,
        plugin: &crate::plugin::Plugin,
        event: &Event,
        ctx: &Ctx<'_>,
        history: Option<&History>,
        d: &mut Decision,
    ) -> Result<Option<PluginHit>, Outcome> {
        let name = &p.spec.name;
        if history.is_some_and(|h| h.faults().is_quarantined(name)) {
            d.errors.push(PolicyError {
                policy: p.name.clone(),
                message: format!(
                    "quarantined after {} consecutive plugin faults: not called",
                    crate::faults::PLUGIN_QUARANTINE_FAULTS
                ),
            });
            return Err(Outcome::Quarantined);
        }
        let r = plugin.evaluate(event, ctx.now, history.map(History::data));
        for line in r.logs {
            d.warnings
                .push(format!("policy `{name}`: plugin log {line}"));
        }
        if r.retried && r.outcome.is_ok() {
            d.warnings.push(format!(
                "policy `{name}`: the plugin ran past its deadline once; the retry succeeded"
            ));
        }
        let res = r
            .outcome
            .map_err(|f| f.to_string())
            .and_then(|raw| raw.map(validate_plugin_decision).transpose());
        match res {
            Ok(hit) => {
                if let Some(h) = history {
                    h.faults().success(name);
                }
                Ok(hit)
            }
            Err(message) => {
                d.errors.push(PolicyError {
                    policy: p.name.clone(),
                    message,
                });
                if history.is_some_and(|h| h.faults().fault(name)) {
                    d.warnings.push(format!(
                        "policy `{name}` is quarantined after {} consecutive plugin faults; later decisions with this history skip it",
                        crate::faults::PLUGIN_QUARANTINE_FAULTS
                    ));
                }
                Err(Outcome::Errored)
            }
        }
    }

    fn reason(
        &self,
        p: &Policy,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
    ) -> SharedStr {
        if let Some(r) = &p.reason {
            return r.clone();
        }
        if let Some(c) = &p.reason_expr {
            match interp.eval(c, ev, ctx.now) {
                Ok(V::Str(s)) => return SharedStr::from(s.as_ref()),
                Ok(other) => d.errors.push(PolicyError {
                    policy: p.name.clone(),
                    message: format!("`reason_expr` evaluated to {other:?}, not a string"),
                }),
                Err(e) => d.errors.push(PolicyError {
                    policy: p.name.clone(),
                    message: format!("`reason_expr`: {e}"),
                }),
            }
        }
        p.fallback_reason.clone()
    }

    fn apply_winner(
        &self,
        p: &Policy,
        hit: Option<&PluginHit>,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
    ) {
        let action = hit.map_or(p.spec.action, |h| h.action);
        d.action = action;
        d.policy = Some(p.name.clone());
        d.reason = Some(match hit.and_then(|h| h.reason.as_deref()) {
            Some(r) => SharedStr::from(r),
            None => self.reason(p, ev, ctx, interp, d),
        });
        d.params = match hit {
            Some(h) => h.params.clone(),
            None => p.spec.params.json.clone(),
        };
        match action {
            Action::Retry | Action::RetryWithoutAgent => {
                let failure = ev.failure.as_ref();
                let attempt = failure.map(|f| f.attempt.max(1)).unwrap_or(1);
                let plugin_delay = hit.and_then(|h| h.params.get("delay_s")?.as_i64());
                let delay = failure
                    .and_then(|f| f.retry_after_s)
                    .or(plugin_delay)
                    .or_else(|| {
                        p.spec
                            .params
                            .delay_s
                            .map(|base| match p.spec.params.backoff {
                                Some(Backoff::Exponential) => {
                                    let shift = u32::try_from(attempt - 1).unwrap_or(0).min(20);
                                    base.saturating_mul(1i64 << shift)
                                }
                                _ => base,
                            })
                    });
                let not_before = delay.and_then(|s| add_secs(ctx.now, s));
                let mut transform_error = None;
                let request = match (action, failure.and_then(|f| f.request.as_ref())) {
                    (Action::Retry, req) => req.cloned(),
                    (_, None) => None,
                    (_, Some(req)) => match crate::normalize::transform::retry_without_agent(req) {
                        Ok(body) => Some(body),
                        Err(e) => {
                            transform_error = Some(e.to_string());
                            None
                        }
                    },
                };
                if let Some(e) = transform_error {
                    let reason = format!("retry_without_agent cannot rewrite the request: {e}");
                    d.warnings
                        .push(format!("policy `{}`: {reason}", p.spec.name));
                    self.escalate(p, ev, ctx, interp, d, Some(reason), None);
                }
                d.retry = Some(Retry {
                    request,
                    not_before,
                });
            }
            Action::Defer => {
                let due = if let Some(h) = hit {
                    h.due
                } else if let Some(c) = &p.until {
                    match interp.eval(c, ev, ctx.now) {
                        Ok(V::Time(t)) => Some(t),
                        Ok(other) => {
                            d.errors.push(PolicyError {
                                policy: p.name.clone(),
                                message: format!(
                                    "`params.until` evaluated to {other:?}, not a timestamp"
                                ),
                            });
                            None
                        }
                        Err(e) => {
                            d.errors.push(PolicyError {
                                policy: p.name.clone(),
                                message: format!("`params.until`: {e}"),
                            });
                            None
                        }
                    }
                } else {
                    p.spec.params.delay.and_then(|s| add_secs(ctx.now, s))
                };
                match due {
                    // A due time not after the decision has nothing to wait for: deciding
                    // again at it would defer again to the same past time, every time the host
                    // looks (a policy deferring to `not_before - 5m` for a notice given with
                    // less lead than that).
                    Some(due) if due <= ctx.now => {
                        d.action = self.default_action;
                        d.warnings.push(format!(
                            "policy `{}` deferred until {}, not after the decision time {}; the default action applies",
                            p.spec.name,
                            due.to_rfc3339(),
                            ctx.now.to_rfc3339()
                        ));
                    }
                    Some(due) => {
                        d.due = Some(due);
                        let nb = ev.maintenance.as_ref().and_then(|m| m.not_before);
                        if let Some(nb) = nb.filter(|nb| due > *nb) {
                            let reason = format!(
                                "deferral until {} is past the event's not_before {}",
                                due.to_rfc3339(),
                                nb.to_rfc3339()
                            );
                            d.warnings
                                .push(format!("policy `{}`: {reason}", p.spec.name));
                            self.escalate(p, ev, ctx, interp, d, Some(reason), None);
                        }
                    }
                    None => {
                        // A deferral with no due time would never come back: fall back to the
                        // default action rather than losing the event.
                        d.action = self.default_action;
                        d.warnings.push(format!(
                            "policy `{}` could not compute its due time; the default action applies",
                            p.spec.name
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn escalate(
        &self,
        p: &Policy,
        ev: &Event,
        ctx: &Ctx<'_>,
        interp: &mut Interp<'_>,
        d: &mut Decision,
        reason: Option<String>,
        hit: Option<&PluginHit>,
    ) {
        let reason = match reason
            .as_deref()
            .or_else(|| hit.and_then(|h| h.reason.as_deref()))
        {
            Some(r) => SharedStr::from(r),
            None => self.reason(p, ev, ctx, interp, d),
        };
        let severity = hit
            .and_then(|h| h.params.get("severity")?.as_str().and_then(Severity::parse))
            .or(p.spec.params.severity)
            .unwrap_or(Severity::Error);
        let window = p
            .spec
            .params
            .dedup_window_s
            .unwrap_or(DEFAULT_DEDUP_WINDOW_S)
            .max(1);
        let key = dedup_key(&p.spec.name, &p.dedup_by, ev, window);
        if d.escalations.iter().any(|e| e.key == key) {
            return;
        }
        let repeat = interp.history.is_some_and(|h| h.fired(&key));
        d.escalations.push(Escalation {
            policy: p.name.clone(),
            reason,
            key,
            severity,
            repeat,
        });
    }
}

/// Checks what a plugin returned: a known action, params that are a JSON object, a due time
/// for `defer`, sizes within bounds.
#[cfg(feature = "plugins")]
fn validate_plugin_decision(raw: crate::plugin::RawDecision) -> Result<PluginHit, String> {
    let action = Action::parse(&raw.action).ok_or_else(|| {
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
        format!(
            "plugin returned an action `{}` that does not exist (actions are {})",
            raw.action.chars().take(64).collect::<String>(),
            names.join(", ")
        )
    })?;
    if let Some(r) = &raw.reason {
        crate::plugin::check_size("reason", r)?;
    }
    let params = match &raw.params_json {
        None => serde_json::Map::new(),
        Some(text) => {
            crate::plugin::check_size("params", text)?;
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(m)) => m,
                Ok(_) => return Err("plugin returned params that are not a JSON object".into()),
                Err(e) => return Err(format!("plugin returned params that are not JSON: {e}")),
            }
        }
    };
    let due = match raw.due_ms {
        None => None,
        Some(ms) => Some(
            chrono::DateTime::from_timestamp_millis(ms)
                .ok_or_else(|| format!("plugin returned a due time out of range ({ms} ms)"))?,
        ),
    };
    if action == Action::Defer && due.is_none() {
        return Err("plugin returned `defer` without a `due` time".into());
    }
    Ok(PluginHit {
        action,
        reason: raw.reason,
        params,
        due,
    })
}

fn truncation_warning(d: &mut Decision, policy: &str, w: &Compiled, ev: &Event, h: &History) {
    if w.windows.iter().any(|win| h.truncated(ev.time, *win)) {
        d.warnings.push(format!(
            "policy `{policy}`: the history reached its size bound and dropped entries inside the query window; counts may be low"
        ));
    }
}

/// `t + secs`, or `None` when that is not a representable time (never a panic).
fn add_secs(t: Timestamp, secs: i64) -> Option<Timestamp> {
    Duration::try_seconds(secs).and_then(|d| t.checked_add_signed(d))
}

fn matched(p: &Policy, action: Action) -> Matched {
    Matched {
        policy: p.name.clone(),
        action,
        priority: p.spec.priority,
    }
}

/// How a matching policy ranks: priority, then its action's severity, then name.
struct RankKey<'a> {
    priority: i64,
    severity: u8,
    name: &'a str,
}

impl RankKey<'_> {
    fn beats(&self, other: &RankKey<'_>) -> bool {
        (self.priority, self.severity, std::cmp::Reverse(self.name))
            > (
                other.priority,
                other.severity,
                std::cmp::Reverse(other.name),
            )
    }
}

/// What a plugin decided, validated.
#[derive(Debug)]
#[cfg_attr(not(feature = "plugins"), allow(dead_code))]
struct PluginHit {
    action: Action,
    reason: Option<String>,
    params: serde_json::Map<String, serde_json::Value>,
    due: Option<Timestamp>,
}

fn exhausted(p: &Policy, ev: &Event) -> bool {
    matches!(p.spec.action, Action::Retry | Action::RetryWithoutAgent)
        && match (p.spec.params.max_attempts, &ev.failure) {
            (Some(max), Some(f)) => f.attempt > max,
            _ => false,
        }
}

/// `n` in decimal, written into `buf` (an `i64` takes at most 20 bytes) without allocating:
/// the same bytes as `n.to_string()`.
fn decimal(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// The escalation dedup key: hex SHA-256 of the policy name, the values of its `dedup.by`
/// paths and `floor(event.time / window)`. When none of the `dedup.by` values is known, the
/// resource's name (else the event id) stands in, so unrelated events never share a key. Uses the vendor's event time, never a clock, so
/// independent hosts agree. An event near a window edge may land in the next bucket on
/// another host and page twice.
pub fn dedup_key(policy: &str, by: &[FieldId], ev: &Event, window_s: i64) -> String {
    let mut h = Sha256::new();
    let mut buf = [0u8; 20];
    h.update(policy.as_bytes());
    let mut known = 0;
    for f in by {
        h.update([0x1f]);
        h.update(fields::field(*f).path.as_bytes());
        h.update([b'=']);
        known += 1;
        match fields::read(ev, *f) {
            Ok(Some(FieldValue::Str(s))) => h.update(s.as_bytes()),
            Ok(Some(FieldValue::Int(i))) => h.update(decimal(i, &mut buf)),
            Ok(Some(FieldValue::Bool(b))) => h.update(if b { b"true" as &[u8] } else { b"false" }),
            Ok(Some(FieldValue::Time(t))) => h.update(t.to_rfc3339().as_bytes()),
            _ => {
                known -= 1;
                h.update([0]);
            }
        }
    }
    if known == 0 {
        // Nothing to group by is known (a bare ARM error names no resource): do not merge
        // unrelated events under one key; fall back to the resource's name, then the event.
        h.update([0x1d]);
        h.update(ev.resource.name.as_deref().unwrap_or(&ev.id).as_bytes());
    }
    h.update([0x1e]);
    let bucket = ev.time.timestamp().div_euclid(window_s.max(1));
    h.update(decimal(bucket, &mut buf));
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // ASCII digits pushed as chars: no UTF-8 validation of the result (that was a fifth of
    // this function's time).
    let mut hex = String::with_capacity(64);
    for b in h.finalize() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    #[test]
    fn decimal_writes_what_to_string_writes() {
        let mut buf = [0u8; 20];
        for n in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            1_634_133_900,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string().as_bytes(), "{n}");
        }
    }
}
