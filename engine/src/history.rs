//! Correlation across VMs: a bounded, windowed history of events and decisions that policies
//! query from CEL.
//!
//! A single VM cannot tell "my create failed" from "every Windows create in the region is
//! failing". The [`History`] remembers recent events (their discrete fields and resource) and
//! decisions, so a policy can ask:
//!
//! * `history.count({"failure.category": "vm_agent", "resource.region": event.resource.region}, duration("15m"))`:
//!   how many matching events were seen in the window;
//! * `history.resources({...}, duration("15m"))`: from how many distinct resources;
//! * `history.actions(event.resource.id, "drain", duration("1h"))`: how many times that
//!   action was decided for the resource (so "not drained twice" can be written).
//!
//! Windows end at the current event's time and use the events' own times, never a clock. The
//! history is state and the [`crate::Engine`] is not: the caller owns it, records each event
//! before deciding it ([`History::record`]) and the decision after
//! ([`History::record_decision`]), and passes it to [`crate::Engine::decide`] in [`crate::Ctx::with_history`]. Memory is
//! bounded by [`History::with_limits`]: when the bound is reached the oldest entries go, and a
//! decision whose window reaches past them carries a warning.

use std::collections::VecDeque;
use std::sync::Arc;

// The history's maps are keyed by what events say (resources, scopes, escalation keys):
// foldhash, seeded per process, hashes them in a fraction of SipHash's time (a tenth of
// recording an event was SipHash). Its seed is not cryptographic: a client holding the ingest
// token who could observe the host's timing long enough might build colliding keys; the
// maps stay bounded by the history's limits, so that costs time per event, not memory.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use chrono::Duration;

use crate::decision::{Action, Decision};
use crate::event::{Event, Timestamp};
use crate::fields::{self, FieldId, FieldValue};
use crate::scope;

mod save;
pub use save::{HistoryLoadError, HISTORY_FORMAT};

/// Default bound on remembered events.
pub const DEFAULT_MAX_EVENTS: usize = 50_000;
/// Default retention: entries older than this (relative to the event being recorded) are dropped.
pub const DEFAULT_RETENTION_S: i64 = 24 * 3600;

/// Paths a history filter may test: the discrete fields plus the resource's identity and
/// placement, and the vendor's maintenance event id (so that a policy can ask whether this
/// very event was announced before, rather than whether anything happened to its resource).
pub fn correlatable(id: FieldId) -> bool {
    let f = fields::field(id);
    f.discrete
        || matches!(
            f.path,
            "resource.id"
                | "resource.name"
                | "resource.availability_set"
                | "resource.scale_set"
                | "resource.fault_domain"
                | "resource.update_domain"
                | "maintenance.vendor_id"
        )
}

/// A remembered scalar value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Val {
    Str(Arc<str>),
    Int(i64),
    Bool(bool),
}

#[derive(Debug, Clone)]
struct Entry {
    time: Timestamp,
    resource: Option<Arc<str>>,
    values: Box<[(FieldId, Val)]>,
}

#[derive(Debug, Clone)]
struct DecisionEntry {
    time: Timestamp,
    resource: Arc<str>,
}

/// The remembered events and decisions, shared copy-on-write between a [`History`] and the
/// plugin calls reading it during a decision.
#[derive(Debug, Clone)]
pub(crate) struct HistoryData {
    events: VecDeque<Entry>,
    decisions: VecDeque<DecisionEntry>,
    /// The decisions again, per resource, in the same order (`history.actions` reads these).
    by_resource: HashMap<Arc<str>, VecDeque<(Timestamp, Action)>>,
    fired: HashMap<String, Timestamp>,
    /// No time in `fired` is older than this (when it holds any): the retention sweeps
    /// `fired` only once something in it may have expired.
    fired_oldest: Option<Timestamp>,
    interned: HashSet<Arc<str>>,
    /// The size `interned` must pass before the next sweep (twice what the last one kept).
    interned_floor: usize,
    max_events: usize,
    retention: Duration,
    /// The newest time of an entry dropped because of the size bound (not of retention).
    evicted_until: Option<Timestamp>,
    /// What the blast-radius guards count (the `guard` module).
    guards: GuardIndex,
}

/// Times, per key, sorted; what the guards count (the `guard` module). Every list is indexed by
/// its scope or resource, so a guard's cost does not grow with the fleet.
#[derive(Debug, Clone, Default)]
struct GuardIndex {
    /// Per scope (`region/category`): failure events (operation failures, unhealthy health).
    failures: HashMap<Arc<str>, VecDeque<Timestamp>>,
    /// Per scope, and host-wide under [`scope::HOST_WIDE`]: failures of first attempts.
    firsts: HashMap<Arc<str>, VecDeque<Timestamp>>,
    /// Per scope and host-wide: `retry` and `retry_without_agent` decisions on failures.
    retries: HashMap<Arc<str>, VecDeque<Timestamp>>,
    /// Per resource: its failure events.
    resource_failures: HashMap<Arc<str>, VecDeque<Timestamp>>,
    /// Per page scope (a scope, or `resource:<id>`): the first and the last escalation of the
    /// current run (escalations less than [`scope::PAGE_GAP_S`] apart).
    pages: HashMap<Arc<str>, (Timestamp, Timestamp)>,
    /// Records since the last sweep of lists no longer touched.
    since_sweep: usize,
}

impl GuardIndex {
    fn push(
        map: &mut HashMap<Arc<str>, VecDeque<Timestamp>>,
        key: Arc<str>,
        t: Timestamp,
        max: usize,
    ) {
        let q = map.entry(key).or_default();
        let pos = q.iter().rposition(|x| *x <= t).map_or(0, |p| p + 1);
        q.insert(pos, t);
        while q.len() > max {
            q.pop_front();
        }
    }

    fn page(&mut self, key: Arc<str>, t: Timestamp) {
        let gap = Duration::seconds(scope::PAGE_GAP_S);
        let run = self.pages.entry(key).or_insert((t, t));
        let past_gap = run.1.checked_add_signed(gap).is_some_and(|end| t > end);
        if past_gap || t < run.0 {
            *run = (t, t);
        } else if t > run.1 {
            run.1 = t;
        }
    }

    /// Drops times older than `horizon`: all of them every so often (amortized over the
    /// records), so that a scope or resource no longer seen does not stay; and past twice
    /// `max` keys in a map, all but the `max` most recently seen.
    fn trim(&mut self, horizon: Timestamp, max: usize) {
        self.since_sweep += 1;
        let maps = [
            self.failures.len(),
            self.firsts.len(),
            self.retries.len(),
            self.resource_failures.len(),
            self.pages.len(),
        ];
        let over = maps.iter().any(|n| *n > max.saturating_mul(2));
        if self.since_sweep < maps.iter().sum::<usize>().max(64) && !over {
            return;
        }
        self.since_sweep = 0;
        for map in [
            &mut self.failures,
            &mut self.firsts,
            &mut self.retries,
            &mut self.resource_failures,
        ] {
            map.retain(|_, q| {
                while q.front().is_some_and(|t| *t < horizon) {
                    q.pop_front();
                }
                !q.is_empty()
            });
        }
        self.pages.retain(|_, (_, last)| *last >= horizon);
        for map in [
            &mut self.failures,
            &mut self.firsts,
            &mut self.retries,
            &mut self.resource_failures,
        ] {
            if map.len() > max {
                let mut last: Vec<Timestamp> =
                    map.values().filter_map(|q| q.back().copied()).collect();
                last.sort_unstable();
                if let Some(cut) = last.get(last.len().saturating_sub(max)).copied() {
                    map.retain(|_, q| q.back().is_some_and(|t| *t >= cut));
                }
            }
        }
        if self.pages.len() > max {
            let mut last: Vec<Timestamp> = self.pages.values().map(|r| r.1).collect();
            last.sort_unstable();
            if let Some(cut) = last.get(last.len().saturating_sub(max)).copied() {
                self.pages.retain(|_, r| r.1 >= cut);
            }
        }
    }
}

/// How many times of the sorted list `q` fall in `(end - window, end]`.
fn count_in(q: &VecDeque<Timestamp>, end: Timestamp, window: Duration) -> u64 {
    let hi = q.partition_point(|t| *t <= end);
    let lo = match end.checked_sub_signed(window) {
        Some(start) => q.partition_point(|t| *t <= start),
        None => 0,
    };
    hi.saturating_sub(lo) as u64
}

/// The bounded, windowed history of events and decisions. See the module docs.
///
/// It also holds the fault counters of Wasm plugin policies (see [`History::plugin_faults`]):
/// quarantine is state, and the caller owns state.
#[derive(Debug, Clone)]
pub struct History {
    data: Arc<HistoryData>,
    faults: crate::faults::Faults,
}

impl Default for History {
    fn default() -> History {
        History::with_limits(DEFAULT_MAX_EVENTS, DEFAULT_RETENTION_S)
    }
}

impl History {
    /// An empty history with the default bounds.
    pub fn new() -> History {
        History::default()
    }

    /// An empty history that keeps at most `max_events` events (and as many decisions) and
    /// nothing older than `retention_s` seconds before the event being recorded.
    pub fn with_limits(max_events: usize, retention_s: i64) -> History {
        History {
            data: Arc::new(HistoryData::with_limits(max_events, retention_s)),
            faults: crate::faults::Faults::default(),
        }
    }

    /// The number of remembered events.
    pub fn len(&self) -> usize {
        self.data.events.len()
    }

    /// Whether no event is remembered.
    pub fn is_empty(&self) -> bool {
        self.data.events.is_empty()
    }

    /// Remembers an event. Call it before deciding the event, so that its own occurrence
    /// counts. What is older than the retention before the event's time is forgotten: where
    /// an event can be dated ahead of the clock (an AWS scheduled event is dated by its
    /// `NotBefore`), use [`History::record_at`], or such an event forgets everything.
    pub fn record(&mut self, ev: &Event) {
        Arc::make_mut(&mut self.data).record(ev, ev.time);
    }

    /// [`History::record`] with the caller's clock: what is older than the retention before
    /// `now` or the event's time, whichever is earlier, is forgotten. An event dated in the
    /// future is remembered (and counted once its time comes) without making the rest look
    /// old.
    pub fn record_at(&mut self, ev: &Event, now: Timestamp) {
        Arc::make_mut(&mut self.data).record(ev, ev.time.min(now));
    }

    /// Remembers a decision: its action for the event's resource, and the keys of its
    /// escalations (so that repeats are marked [`crate::Escalation::repeat`]). Forgets as
    /// [`History::record`] does.
    pub fn record_decision(&mut self, ev: &Event, d: &Decision) {
        Arc::make_mut(&mut self.data).record_decision(ev, d, ev.time);
    }

    /// [`History::record_decision`] with the caller's clock, as [`History::record_at`].
    pub fn record_decision_at(&mut self, ev: &Event, d: &Decision, now: Timestamp) {
        Arc::make_mut(&mut self.data).record_decision(ev, d, ev.time.min(now));
    }

    /// Whether an escalation key was recorded before.
    pub fn fired(&self, key: &str) -> bool {
        self.data.fired.contains_key(key)
    }

    /// Consecutive faults of the Wasm plugin policy `policy` (0 after a clean call).
    pub fn plugin_faults(&self, policy: &str) -> u32 {
        self.faults.consecutive(policy)
    }

    /// The Wasm plugin policies quarantined after [`crate::PLUGIN_QUARANTINE_FAULTS`]
    /// consecutive faults: the engine skips them, and says so in every decision they would
    /// have taken part in.
    pub fn quarantined(&self) -> Vec<String> {
        self.faults.quarantined()
    }

    /// Lifts the quarantine of `policy` (e.g. after deploying a fixed plugin) and resets its
    /// fault count.
    pub fn release_quarantine(&mut self, policy: &str) {
        self.faults.release(policy);
    }

    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub(crate) fn faults(&self) -> &crate::faults::Faults {
        &self.faults
    }

    /// A shared, read-only handle on the remembered events, for plugin calls.
    #[cfg_attr(not(feature = "plugins"), allow(dead_code))]
    pub(crate) fn data(&self) -> Arc<HistoryData> {
        self.data.clone()
    }

    pub(crate) fn truncated(&self, end: Timestamp, window: Duration) -> bool {
        self.data.truncated(end, window)
    }

    pub(crate) fn count(
        &self,
        filter: &[(FieldId, Val)],
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        self.data.count(filter, end, window, cap)
    }

    pub(crate) fn resources(
        &self,
        filter: &[(FieldId, Val)],
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        self.data.resources(filter, end, window, cap)
    }

    pub(crate) fn actions(
        &self,
        resource: &str,
        action: Action,
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        self.data.actions(resource, action, end, window, cap)
    }

    /// Failure events of a guard scope in `(end - window, end]`.
    pub(crate) fn failures_in(&self, scope: &str, end: Timestamp, window: Duration) -> u64 {
        self.data
            .guards
            .failures
            .get(scope)
            .map_or(0, |q| count_in(q, end, window))
    }

    /// Failed first attempts of a guard scope (or [`scope::HOST_WIDE`]) in the window.
    pub(crate) fn firsts_in(&self, scope: &str, end: Timestamp, window: Duration) -> u64 {
        self.data
            .guards
            .firsts
            .get(scope)
            .map_or(0, |q| count_in(q, end, window))
    }

    /// Retries decided for a guard scope (or [`scope::HOST_WIDE`]) in the window.
    pub(crate) fn retries_in(&self, scope: &str, end: Timestamp, window: Duration) -> u64 {
        self.data
            .guards
            .retries
            .get(scope)
            .map_or(0, |q| count_in(q, end, window))
    }

    /// The newest time `f` in `(end - window - cooldown, end]` at which the scope's failures
    /// in `(f - window, f]` reached `threshold`: the storm the scope is in, if any (it ends
    /// `cooldown` after `f` left the window, i.e. after the rate fell below the threshold).
    pub(crate) fn storm_over(
        &self,
        scope: &str,
        end: Timestamp,
        window: Duration,
        cooldown: Duration,
        threshold: u32,
    ) -> Option<Timestamp> {
        let q = self.data.guards.failures.get(scope)?;
        let hi = q.partition_point(|t| *t <= end);
        let since = end
            .checked_sub_signed(cooldown)
            .and_then(|s| s.checked_sub_signed(window));
        // Newest first: in a storm the first one looked at answers.
        for i in (0..hi).rev() {
            let f = q[i];
            if since.is_some_and(|s| f <= s) {
                break;
            }
            let lo = match f.checked_sub_signed(window) {
                Some(start) => q.partition_point(|t| *t <= start),
                None => 0,
            };
            if (i + 1).saturating_sub(lo) >= threshold as usize {
                return Some(f);
            }
        }
        None
    }

    /// Remediations (retry, retry without agent, drain) decided for `resource` in
    /// `(end - window, end]` since its current run of failures began (failures less than
    /// `reset_after` apart; a longer healthy gap starts a new run).
    pub(crate) fn remediations_in_run(
        &self,
        resource: &str,
        end: Timestamp,
        window: Duration,
        reset_after: Duration,
    ) -> u64 {
        let Some(fails) = self.data.guards.resource_failures.get(resource) else {
            return 0;
        };
        let hi = fails.partition_point(|t| *t <= end);
        let mut start = end;
        for i in (0..hi).rev() {
            let f = fails[i];
            if start.signed_duration_since(f) > reset_after {
                break;
            }
            start = f;
        }
        let from = end
            .checked_sub_signed(window)
            .map_or(start, |w| w.max(start));
        let Some(list) = self.data.by_resource.get(resource) else {
            return 0;
        };
        list.iter()
            .rev()
            .skip_while(|(t, _)| *t > end)
            .take_while(|(t, _)| *t >= from)
            .filter(|(_, a)| scope::is_remediation(*a))
            .count() as u64
    }

    /// The current run of escalations of a page scope: (first, last).
    pub(crate) fn page_run(&self, page_scope: &str) -> Option<(Timestamp, Timestamp)> {
        self.data.guards.pages.get(page_scope).copied()
    }
}

impl HistoryData {
    fn with_limits(max_events: usize, retention_s: i64) -> HistoryData {
        HistoryData {
            events: VecDeque::new(),
            decisions: VecDeque::new(),
            by_resource: HashMap::new(),
            fired: HashMap::new(),
            fired_oldest: None,
            interned: HashSet::new(),
            interned_floor: 0,
            // Each remembered event costs a few hundred bytes; beyond this nothing sensible fits.
            max_events: max_events.clamp(1, 10_000_000),
            retention: Duration::try_seconds(retention_s.clamp(1, 100 * 365 * 86400))
                .unwrap_or(Duration::days(1)),
            evicted_until: None,
            guards: GuardIndex::default(),
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    /// Remembers `ev`; forgets what is older than the retention before `clock`.
    fn record(&mut self, ev: &Event, clock: Timestamp) {
        let mut values = Vec::new();
        for id in FieldId::all() {
            if !correlatable(id) {
                continue;
            }
            let v = match fields::read(ev, id) {
                Ok(Some(FieldValue::Str(s))) => Val::Str(self.intern(s)),
                Ok(Some(FieldValue::Int(i))) => Val::Int(i),
                Ok(Some(FieldValue::Bool(b))) => Val::Bool(b),
                _ => continue,
            };
            values.push((id, v));
        }
        let resource = resource_key(ev).map(|r| self.intern(r));
        let entry = Entry {
            time: ev.time,
            resource,
            values: values.into_boxed_slice(),
        };
        // Keep the deque ordered by time; events mostly arrive in order.
        let pos = self
            .events
            .iter()
            .rposition(|e| e.time <= entry.time)
            .map_or(0, |p| p + 1);
        self.events.insert(pos, entry);
        if let Some(scope) = scope::scope(ev) {
            let max = self.max_events;
            let scope = self.intern(&scope);
            GuardIndex::push(&mut self.guards.failures, scope.clone(), ev.time, max);
            if scope::is_first_attempt(ev) {
                let all = self.intern(scope::HOST_WIDE);
                GuardIndex::push(&mut self.guards.firsts, scope, ev.time, max);
                GuardIndex::push(&mut self.guards.firsts, all, ev.time, max);
            }
            if let Some(r) = resource_key(ev) {
                let r = self.intern(r);
                GuardIndex::push(&mut self.guards.resource_failures, r, ev.time, max);
            }
        }
        self.trim(clock);
    }

    /// Remembers `action` for `resource` at `time`, in both lists (in the same order).
    fn push_decision(&mut self, time: Timestamp, resource: &str, action: Action) {
        let resource = self.intern(resource);
        self.by_resource
            .entry(resource.clone())
            .or_default()
            .push_back((time, action));
        self.decisions.push_back(DecisionEntry { time, resource });
    }

    /// Remembers `d` for `ev`; forgets what is older than the retention before `clock`.
    fn record_decision(&mut self, ev: &Event, d: &Decision, clock: Timestamp) {
        if let Some(r) = resource_key(ev) {
            self.push_decision(ev.time, r, d.action);
        }
        for e in &d.escalations {
            let t = *self.fired.entry(e.key.clone()).or_insert(ev.time);
            self.fired_oldest = Some(self.fired_oldest.map_or(t, |o| o.min(t)));
        }
        if let Some(scope) = scope::scope(ev) {
            let scope = self.intern(&scope);
            if matches!(d.action, Action::Retry | Action::RetryWithoutAgent) {
                let max = self.max_events;
                let all = self.intern(scope::HOST_WIDE);
                GuardIndex::push(&mut self.guards.retries, scope.clone(), ev.time, max);
                GuardIndex::push(&mut self.guards.retries, all, ev.time, max);
            }
            if !d.escalations.is_empty() {
                self.guards.page(scope, ev.time);
            }
        }
        if let (false, Some(r)) = (d.escalations.is_empty(), resource_key(ev)) {
            let page: Arc<str> = Arc::from(scope::resource_scope(r));
            self.guards.page(page, ev.time);
        }
        self.trim(clock);
    }

    /// Drops what is older than the retention before `now` (the time of the event being
    /// recorded, or the caller's clock when that is earlier: one event dated far in the future
    /// must not make everything else look old) and what exceeds the size bound.
    fn trim(&mut self, now: Timestamp) {
        let Some(horizon) = now.checked_sub_signed(self.retention) else {
            return;
        };
        while self.events.front().is_some_and(|e| e.time < horizon) {
            self.events.pop_front();
        }
        while self.events.len() > self.max_events {
            if let Some(e) = self.events.pop_front() {
                self.evicted_until = Some(self.evicted_until.map_or(e.time, |t| t.max(e.time)));
            }
        }
        while self
            .decisions
            .front()
            .is_some_and(|d| d.time < horizon || self.decisions.len() > self.max_events)
        {
            let Some(d) = self.decisions.pop_front() else {
                break;
            };
            // Both lists keep insertion order: the oldest of the resource's is this one.
            if let Some(list) = self.by_resource.get_mut(&d.resource) {
                list.pop_front();
                if list.is_empty() {
                    self.by_resource.remove(&d.resource);
                }
            }
        }
        if self.fired_oldest.is_some_and(|t| t < horizon) {
            self.fired.retain(|_, t| *t >= horizon);
            self.fired_oldest = self.fired.values().min().copied();
        }
        self.guards.trim(horizon, self.max_events);
        if self.fired.len() > self.max_events {
            // Keep the newest keys.
            let mut times: Vec<Timestamp> = self.fired.values().copied().collect();
            times.sort_unstable();
            if let Some(cut) = times.get(times.len() - self.max_events).copied() {
                self.fired.retain(|_, t| *t >= cut);
                self.fired_oldest = Some(cut);
            }
        }
        if self.interned.len() > self.max_events.saturating_mul(4).max(self.interned_floor) {
            // Drop strings no entry refers to any more.
            self.interned.retain(|a| Arc::strong_count(a) > 1);
            // Still large: everything is in use; sweep again only once it has doubled.
            self.interned_floor = self.interned.len().saturating_mul(2);
        }
    }

    /// Whether a window `[end - window, end]` reaches back past entries dropped by the size
    /// bound (its counts may then be low).
    pub(crate) fn truncated(&self, end: Timestamp, window: Duration) -> bool {
        match end.checked_sub_signed(window) {
            Some(start) => self.evicted_until.is_some_and(|t| t >= start),
            None => self.evicted_until.is_some(),
        }
    }

    fn matching<'a>(
        &'a self,
        filter: &'a [(FieldId, Val)],
        end: Timestamp,
        window: Duration,
    ) -> impl Iterator<Item = &'a Entry> + 'a {
        let start = end
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        self.events
            .iter()
            .rev()
            .skip_while(move |e| e.time > end)
            .take_while(move |e| e.time > start)
            .filter(move |e| {
                filter
                    .iter()
                    .all(|(f, v)| e.values.iter().any(|(g, w)| g == f && w == v))
            })
    }

    /// How many remembered events match `filter` in the window ending at `end`, counting at
    /// most `cap`.
    pub(crate) fn count(
        &self,
        filter: &[(FieldId, Val)],
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        let cap = cap_of(cap);
        self.matching(filter, end, window).take(cap).count() as i64
    }

    /// From how many distinct resources the matching events came, counting at most `cap`.
    pub(crate) fn resources(
        &self,
        filter: &[(FieldId, Val)],
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        let cap = cap_of(cap);
        let mut set: HashSet<*const u8> = HashSet::new();
        for e in self.matching(filter, end, window) {
            if set.len() >= cap {
                break;
            }
            // Resources are interned: one string, one pointer.
            if let Some(r) = &e.resource {
                set.insert(r.as_ptr());
            }
        }
        set.len().min(cap) as i64
    }

    /// How many times `action` was decided for `resource` in the window ending at `end`,
    /// counting at most `cap` (per-resource index: the cost does not grow with the fleet).
    pub(crate) fn actions(
        &self,
        resource: &str,
        action: Action,
        end: Timestamp,
        window: Duration,
        cap: Option<i64>,
    ) -> i64 {
        let cap = cap_of(cap);
        let start = end
            .checked_sub_signed(window)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        let Some(list) = self.by_resource.get(resource) else {
            return 0;
        };
        list.iter()
            .rev()
            .filter(|(t, a)| *t <= end && *t > start && *a == action)
            .take(cap)
            .count() as i64
    }
}

/// A query's cap as a count limit (none: unlimited).
fn cap_of(cap: Option<i64>) -> usize {
    cap.map_or(usize::MAX, |c| usize::try_from(c).unwrap_or(0))
}

/// The resource an event is about, for distinct counts: its id, else its name.
fn resource_key(ev: &Event) -> Option<&str> {
    ev.resource.id.as_deref().or(ev.resource.name.as_deref())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn t0() -> Timestamp {
        t("2021-10-13T14:00:00Z")
    }

    /// An operation failure of `vm` in `region` at `at` (a first attempt).
    fn failure(vm: &str, region: &str, at: Timestamp) -> Event {
        Event::from_json_str(&format!(
            r#"{{"id":"azure.arm:{vm}-{ts}","time":"{time}","source":"azure.arm","kind":"operation_failure",
            "resource":{{"id":"{vm}","name":"{vm}","os":"windows","region":"{region}"}},
            "failure":{{"operation":"create","code":"ArtifactVersionNotFound","category":"vm_agent","attempt":1}}}}"#,
            ts = at.timestamp(),
            time = at.to_rfc3339()
        ))
        .unwrap()
    }

    /// A decision for `ev` with `action` and escalations keyed by `keys`.
    fn decision(ev: &Event, action: &str, keys: &[&str]) -> Decision {
        let escalations: Vec<serde_json::Value> = keys
            .iter()
            .map(|k| serde_json::json!({"policy": "p", "reason": "r", "key": k, "severity": "error"}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "event_id": ev.id, "action": action, "escalations": escalations
        }))
        .unwrap()
    }

    fn secs(s: i64) -> Duration {
        Duration::seconds(s)
    }

    fn keys<V>(map: &HashMap<Arc<str>, V>) -> Vec<String> {
        let mut k: Vec<String> = map.keys().map(|k| k.to_string()).collect();
        k.sort();
        k
    }

    /// The guards count with binary searches (`count_in`, `storm_over`): each list must stay
    /// sorted by time, whatever order the events arrive in.
    #[test]
    fn guard_lists_stay_sorted_whatever_the_arrival_order() {
        let mut map = HashMap::new();
        let key: Arc<str> = Arc::from("s");
        for s in [10, 20, 5, 20, 15, 30] {
            GuardIndex::push(&mut map, key.clone(), t0() + secs(s), 100);
        }
        let got: Vec<Timestamp> = map[&key].iter().copied().collect();
        let want: Vec<Timestamp> = [5, 10, 15, 20, 20, 30]
            .iter()
            .map(|s| t0() + secs(*s))
            .collect();
        assert_eq!(got, want);
    }

    /// A guard list holds at most `max` times: the newest ones, exactly `max` of them.
    #[test]
    fn guard_lists_keep_the_newest_max_times() {
        let mut map = HashMap::new();
        let key: Arc<str> = Arc::from("s");
        GuardIndex::push(&mut map, key.clone(), t0(), 2);
        GuardIndex::push(&mut map, key.clone(), t0() + secs(1), 2);
        assert_eq!(map[&key].len(), 2, "exactly max times are all kept");
        GuardIndex::push(&mut map, key.clone(), t0() + secs(2), 2);
        let got: Vec<Timestamp> = map[&key].iter().copied().collect();
        assert_eq!(got, vec![t0() + secs(1), t0() + secs(2)], "the oldest went");
    }

    /// A page run (which names the guards' escalation keys and marks repeats) grows while
    /// escalations come at most `PAGE_GAP_S` apart, and starts over past the gap or before
    /// its start.
    #[test]
    fn page_runs_extend_within_the_gap_and_start_over_past_it() {
        let gap = secs(scope::PAGE_GAP_S);
        let mut g = GuardIndex::default();
        let run = |g: &GuardIndex| g.pages.get("s").copied();
        g.page(Arc::from("s"), t0());
        assert_eq!(run(&g), Some((t0(), t0())));
        g.page(Arc::from("s"), t0() + secs(10));
        assert_eq!(run(&g), Some((t0(), t0() + secs(10))), "10 s later extends");
        g.page(Arc::from("s"), t0());
        assert_eq!(
            run(&g),
            Some((t0(), t0() + secs(10))),
            "again at the run's start: no change"
        );
        let end = t0() + secs(10) + gap;
        g.page(Arc::from("s"), end);
        assert_eq!(run(&g), Some((t0(), end)), "exactly the gap later extends");
        let past = end + gap + secs(1);
        g.page(Arc::from("s"), past);
        assert_eq!(run(&g), Some((past, past)), "past the gap starts over");
        let before = past - secs(5);
        g.page(Arc::from("s"), before);
        assert_eq!(
            run(&g),
            Some((before, before)),
            "before the run's start starts over"
        );
    }

    /// An escalating decision starts a page run for its guard scope and its resource; one
    /// without escalations does not.
    #[test]
    fn escalating_decisions_start_page_runs() {
        let mut h = History::new();
        let ev = failure("vm1", "eastus", t0());
        h.record(&ev);
        h.record_decision(&ev, &decision(&ev, "escalate", &["k"]));
        assert_eq!(h.page_run("eastus/vm_agent"), Some((t0(), t0())));
        assert_eq!(h.page_run("resource:vm1"), Some((t0(), t0())));
        let quiet = failure("vm2", "westus", t0());
        h.record(&quiet);
        h.record_decision(&quiet, &decision(&quiet, "retry", &[]));
        assert_eq!(h.page_run("westus/vm_agent"), None);
        assert_eq!(h.page_run("resource:vm2"), None);
        assert_eq!(h.page_run("nowhere"), None);
    }

    /// The guard index drops times older than the horizon (and lists left empty) at the
    /// 64th record at the latest (fewer than 64 times kept), not before while no map is over
    /// twice its bound: stale scopes do not stay, and the sweep is amortized.
    #[test]
    fn guard_index_sweeps_stale_times_at_the_64th_record() {
        let horizon = t0();
        let mut g = GuardIndex::default();
        for (k, at) in [
            ("old", horizon - secs(1)),
            ("edge", horizon),
            ("new", horizon + secs(60)),
        ] {
            GuardIndex::push(&mut g.failures, Arc::from(k), at, 100);
        }
        g.page(Arc::from("old-page"), horizon - secs(1));
        g.page(Arc::from("edge-page"), horizon);
        for i in 1..64 {
            g.trim(horizon, 100);
            assert_eq!(keys(&g.failures), ["edge", "new", "old"], "record {i}");
            assert_eq!(keys(&g.pages), ["edge-page", "old-page"], "record {i}");
        }
        g.trim(horizon, 100);
        assert_eq!(
            keys(&g.failures),
            ["edge", "new"],
            "swept: a time exactly at the horizon is kept"
        );
        assert_eq!(g.failures["edge"].len(), 1);
        assert_eq!(keys(&g.pages), ["edge-page"]);
        assert_eq!(g.since_sweep, 0);
    }

    /// Past twice `max` keys in a map the guard index sweeps at once and keeps the `max` most
    /// recently seen keys; at exactly twice `max` it waits.
    #[test]
    fn guard_index_keeps_the_newest_max_keys_past_twice_max() {
        let horizon = t0() - Duration::days(1);
        let mut g = GuardIndex::default();
        for i in 1..=4 {
            GuardIndex::push(
                &mut g.failures,
                Arc::from(format!("k{i}")),
                t0() + secs(i),
                2,
            );
            g.page(Arc::from(format!("p{i}")), t0() + secs(i));
        }
        g.trim(horizon, 2);
        assert_eq!(keys(&g.failures), ["k1", "k2", "k3", "k4"], "4 = 2 * max");
        assert_eq!(keys(&g.pages), ["p1", "p2", "p3", "p4"]);
        GuardIndex::push(&mut g.failures, Arc::from("k5"), t0() + secs(5), 2);
        g.page(Arc::from("p5"), t0() + secs(5));
        g.trim(horizon, 2);
        assert_eq!(keys(&g.failures), ["k4", "k5"]);
        assert_eq!(keys(&g.pages), ["p4", "p5"]);
    }

    /// `failures_in` counts the scope's failures in the window (the storm guard's count).
    #[test]
    fn failures_in_counts_the_scope_failures() {
        let mut h = History::new();
        h.record(&failure("vm1", "eastus", t0()));
        h.record(&failure("vm2", "eastus", t0() + secs(1)));
        let w = Duration::hours(1);
        assert_eq!(h.failures_in("eastus/vm_agent", t0() + secs(2), w), 2);
        assert_eq!(h.failures_in("westus/vm_agent", t0() + secs(2), w), 0);
    }

    /// The flap guard's count: remediations of the resource since its current run of failures
    /// began (failures at most `reset_after` apart), in the window, up to the query's end.
    #[test]
    fn remediations_in_run_count_the_current_run_up_to_the_end() {
        let mut h = History::new();
        let step = |h: &mut History, vm: &str, at: Timestamp, action: &str| {
            let ev = failure(vm, "eastus", at);
            h.record(&ev);
            h.record_decision(&ev, &decision(&ev, action, &[]));
        };
        let (w, reset) = (Duration::hours(1), Duration::minutes(10));
        // vm1: retried at 0 and 1 min, drained at 5 min.
        step(&mut h, "vm1", t0(), "retry");
        step(&mut h, "vm1", t0() + Duration::minutes(1), "retry");
        step(&mut h, "vm1", t0() + Duration::minutes(5), "drain");
        let run = |h: &History, vm: &str, m: i64| {
            h.remediations_in_run(vm, t0() + Duration::minutes(m), w, reset)
        };
        assert_eq!(
            run(&h, "vm1", 2),
            2,
            "the drain after the end is not counted"
        );
        assert_eq!(run(&h, "vm1", 5), 3, "one exactly at the end is");
        assert_eq!(run(&h, "vm-none", 5), 0);
        // vm2: failures 20 min apart: the second starts a new run.
        step(&mut h, "vm2", t0(), "retry");
        step(&mut h, "vm2", t0() + Duration::minutes(20), "retry");
        assert_eq!(run(&h, "vm2", 21), 1);
        // vm3: failures exactly `reset_after` apart: still one run.
        step(&mut h, "vm3", t0(), "retry");
        step(&mut h, "vm3", t0() + Duration::minutes(10), "retry");
        assert_eq!(run(&h, "vm3", 11), 2);
    }

    /// The Wasm plugins' fault counts and quarantine are kept in the caller's history (the
    /// engine is immutable): counted, listed and released there.
    #[test]
    fn plugin_faults_and_quarantine_live_in_the_history() {
        let mut h = History::new();
        assert!(h.quarantined().is_empty());
        assert_eq!(h.plugin_faults("p"), 0);
        h.faults().fault("p");
        h.faults().fault("p");
        assert_eq!(h.plugin_faults("p"), 2);
        assert!(h.quarantined().is_empty());
        h.faults().fault("p");
        assert_eq!(h.quarantined(), ["p"]);
        h.release_quarantine("p");
        assert!(h.quarantined().is_empty());
        assert_eq!(h.plugin_faults("p"), 0);
    }

    /// The interned strings stay bounded by the events remembered: strings only evicted
    /// events referred to are swept once the set passes four per remembered event (or twice
    /// what the last sweep kept), whatever number of new strings each event brings.
    #[test]
    fn interned_strings_are_swept_with_the_events_that_used_them() {
        // Each event brings two new strings (its id and name); the first one in the second
        // run brings a third (an availability set), so the set's size takes both parities; with
        // one event remembered, the first event alone passes the floor.
        for (max, extra) in [(4, false), (4, true), (1, false)] {
            let mut h = History::with_limits(max, 86_400);
            for i in 0..400 {
                let avset = if extra && i == 0 {
                    r#","availability_set":"as-0""#
                } else {
                    ""
                };
                let ev = Event::from_json_str(&format!(
                    r#"{{"id":"azure.arm:{i}","time":"{time}","source":"azure.arm","kind":"operation_failure",
                    "resource":{{"id":"/vms/vm-{i}","name":"vm-{i}","region":"eastus2"{avset}}},
                    "failure":{{"operation":"create","code":"X","category":"vm_agent","attempt":1}}}}"#,
                    time = (t0() + secs(i)).to_rfc3339()
                ))
                .unwrap();
                h.record(&ev);
                let n = h.data.interned.len();
                assert!(n <= 64, "after {} events: {n} strings interned", i + 1);
            }
            assert!(h.data.interned.iter().any(|a| &**a == "vm-399"));
            assert!(!h.data.interned.iter().any(|a| &**a == "vm-0"));
        }
    }
}
