//! Saving a [`History`] and restoring it, so that an agent embedding the engine keeps its
//! correlation (retry budgets, repeats, guard counts, plugin quarantines) across restarts.
//!
//! The format is JSON, versioned by its `format` key (`keel.history/1`): the remembered events
//! as their correlatable fields by path (a field a later version no longer has is skipped),
//! the decisions, the escalation keys, the guards' counts and the plugin fault counters. A
//! restored history is trimmed to its bounds, so a file edited by hand cannot make it hold
//! more than [`History::with_limits`] allows.

use std::collections::{BTreeMap, VecDeque};

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Entry, GuardIndex, History, HistoryData, Val};
use crate::decision::Action;
use crate::event::Timestamp;
use crate::fields;

/// The `format` of a saved history this version writes and reads.
pub const HISTORY_FORMAT: &str = "keel.history/1";

/// Why a saved history could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum HistoryLoadError {
    /// Not JSON, or not a saved history's shape (with its line and column).
    #[error("not a saved Keel history: {0}")]
    Json(#[from] serde_json::Error),
    /// A saved history of another format version.
    #[error("a saved history in format {found:?}; this version reads {HISTORY_FORMAT:?}")]
    Format {
        /// The `format` the file has.
        found: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    format: String,
    max_events: usize,
    retention_s: i64,
    events: Vec<SavedEvent>,
    #[serde(default)]
    decisions: Vec<SavedDecision>,
    #[serde(default)]
    fired: BTreeMap<String, Timestamp>,
    #[serde(default)]
    evicted_until: Option<Timestamp>,
    #[serde(default)]
    guards: SavedGuards,
    #[serde(default)]
    plugin_faults: BTreeMap<String, SavedFault>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedEvent {
    time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    values: BTreeMap<String, SavedVal>,
}

#[derive(Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
enum SavedVal {
    Bool(bool),
    Int(i64),
    Str(String),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedDecision {
    time: Timestamp,
    resource: String,
    action: Action,
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SavedGuards {
    #[serde(default)]
    failures: BTreeMap<String, Vec<Timestamp>>,
    #[serde(default)]
    firsts: BTreeMap<String, Vec<Timestamp>>,
    #[serde(default)]
    retries: BTreeMap<String, Vec<Timestamp>>,
    #[serde(default)]
    resource_failures: BTreeMap<String, Vec<Timestamp>>,
    #[serde(default)]
    pages: BTreeMap<String, (Timestamp, Timestamp)>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedFault {
    consecutive: u32,
    quarantined: bool,
}

fn save_lists(m: &HashMap<Arc<str>, VecDeque<Timestamp>>) -> BTreeMap<String, Vec<Timestamp>> {
    m.iter()
        .map(|(k, q)| (k.to_string(), q.iter().copied().collect()))
        .collect()
}

impl History {
    /// The history as JSON (format `keel.history/1`), for [`History::from_json`] after a
    /// restart.
    ///
    /// ```
    /// use keel_engine::{Event, History};
    ///
    /// let mut h = History::new();
    /// h.record(&Event::from_json_str(r#"{"id": "e-1", "time": "2021-10-13T14:05:00Z",
    ///     "source": "azure.arm", "kind": "operation_failure", "resource": {"name": "web-1"},
    ///     "failure": {"operation": "create", "code": "ArtifactVersionNotFound",
    ///                 "category": "vm_agent"}}"#)?);
    /// let saved = h.to_json();
    /// let restored = History::from_json(&saved)?;
    /// assert_eq!(restored.len(), 1);
    /// assert_eq!(restored.to_json(), saved);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_json(&self) -> String {
        let d = &*self.data;
        let saved = Saved {
            format: HISTORY_FORMAT.into(),
            max_events: d.max_events,
            retention_s: d.retention.num_seconds(),
            events: d
                .events
                .iter()
                .map(|e| SavedEvent {
                    time: e.time,
                    resource: e.resource.as_deref().map(str::to_string),
                    values: e
                        .values
                        .iter()
                        .map(|(id, v)| {
                            let v = match v {
                                Val::Str(s) => SavedVal::Str(s.to_string()),
                                Val::Int(i) => SavedVal::Int(*i),
                                Val::Bool(b) => SavedVal::Bool(*b),
                            };
                            (fields::field(*id).path.to_string(), v)
                        })
                        .collect(),
                })
                .collect(),
            decisions: {
                // `decisions` and `by_resource` hold the same decisions in the same order:
                // walk both, taking each resource's next action.
                let mut next: HashMap<&str, usize> = HashMap::new();
                d.decisions
                    .iter()
                    .filter_map(|e| {
                        let i = next.entry(&e.resource).or_insert(0);
                        let action = d.by_resource.get(&e.resource)?.get(*i)?.1;
                        *i += 1;
                        Some(SavedDecision {
                            time: e.time,
                            resource: e.resource.to_string(),
                            action,
                        })
                    })
                    .collect()
            },
            fired: d.fired.iter().map(|(k, t)| (k.clone(), *t)).collect(),
            evicted_until: d.evicted_until,
            guards: SavedGuards {
                failures: save_lists(&d.guards.failures),
                firsts: save_lists(&d.guards.firsts),
                retries: save_lists(&d.guards.retries),
                resource_failures: save_lists(&d.guards.resource_failures),
                pages: d
                    .guards
                    .pages
                    .iter()
                    .map(|(k, r)| (k.to_string(), *r))
                    .collect(),
            },
            plugin_faults: self
                .faults
                .entries()
                .into_iter()
                .map(|(k, consecutive, quarantined)| {
                    (
                        k,
                        SavedFault {
                            consecutive,
                            quarantined,
                        },
                    )
                })
                .collect(),
        };
        // Serializing these plain types cannot fail; an empty object would be refused on
        // restore rather than silently restore nothing.
        serde_json::to_string(&saved).unwrap_or_else(|_| "{}".into())
    }

    /// Restores a history saved by [`History::to_json`], with the bounds it was saved with
    /// (the events and decisions beyond them, or out of order, are dropped or sorted).
    pub fn from_json(text: &str) -> Result<History, HistoryLoadError> {
        let saved: Saved = serde_json::from_str(text)?;
        if saved.format != HISTORY_FORMAT {
            return Err(HistoryLoadError::Format {
                found: saved.format,
            });
        }
        let mut d = HistoryData::with_limits(saved.max_events, saved.retention_s);
        let mut events: Vec<Entry> = saved
            .events
            .into_iter()
            .map(|e| {
                let mut values: Vec<_> = e
                    .values
                    .into_iter()
                    .filter_map(|(path, v)| {
                        let id = fields::lookup(&path).filter(|id| super::correlatable(*id))?;
                        let v = match v {
                            SavedVal::Str(s) => Val::Str(d.intern(&s)),
                            SavedVal::Int(i) => Val::Int(i),
                            SavedVal::Bool(b) => Val::Bool(b),
                        };
                        Some((id, v))
                    })
                    .collect();
                values.sort_by_key(|(id, _)| *id);
                Entry {
                    time: e.time,
                    resource: e.resource.map(|r| d.intern(&r)),
                    values: values.into_boxed_slice(),
                }
            })
            .collect();
        events.sort_by_key(|e| e.time);
        d.events = events.into();
        let mut decisions = saved.decisions;
        decisions.sort_by_key(|x| x.time);
        for x in decisions {
            d.push_decision(x.time, &x.resource, x.action);
        }
        d.fired = saved.fired.into_iter().collect();
        d.fired_oldest = d.fired.values().min().copied();
        d.evicted_until = saved.evicted_until;
        let mut lists = |saved: BTreeMap<String, Vec<Timestamp>>| {
            let mut out = HashMap::new();
            for (k, mut ts) in saved {
                ts.sort_unstable();
                let start = ts.len().saturating_sub(d.max_events);
                let q: VecDeque<Timestamp> = ts.split_off(start).into();
                if !q.is_empty() {
                    out.insert(d.intern(&k), q);
                }
            }
            out
        };
        let g = saved.guards;
        let guards = GuardIndex {
            failures: lists(g.failures),
            firsts: lists(g.firsts),
            retries: lists(g.retries),
            resource_failures: lists(g.resource_failures),
            pages: g
                .pages
                .into_iter()
                .map(|(k, (first, last))| (Arc::from(k.as_str()), (first.min(last), last)))
                .collect(),
            since_sweep: 0,
        };
        d.guards = guards;
        // Apply the size bounds only (trimming as of the oldest thing remembered forgets
        // nothing by age): the newest may be an event dated ahead of the clock, and what the
        // retention forgets is forgotten at the next record, on the caller's clock.
        let oldest = [
            d.events.front().map(|e| e.time),
            d.decisions.front().map(|x| x.time),
        ]
        .into_iter()
        .flatten()
        .min();
        if let Some(then) = oldest {
            d.trim(then);
        }
        Ok(History {
            data: Arc::new(d),
            faults: crate::faults::Faults::from_entries(
                saved
                    .plugin_faults
                    .into_iter()
                    .map(|(k, f)| (k, f.consecutive, f.quarantined)),
            ),
        })
    }
}
