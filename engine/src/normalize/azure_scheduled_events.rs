//! Azure Scheduled Events: IMDS `/metadata/scheduledevents` documents (stateful) and the Event
//! Grid `ScheduledEventEmitted` channel (stateless).
//!
//! One event per (EventId, VM listed in `Resources`), with id
//! `azure.scheduled_events:<EventId lower-case>/<vm lower-case>` and `vendor_id` the EventId as
//! sent (echo it back in StartRequests). EventIds are compared case-insensitively: IMDS sends
//! upper-case GUIDs, Event Grid lower-case (docs/protocols.md#azure-scheduled-events).
//!
//! IMDS never reports completion: an event simply vanishes. Given the previous document (the
//! [`State`]), the normalizer infers:
//! * vanished after `Started`: `completed`;
//! * vanished while `Scheduled`: `canceled` only where the evidence proves it (nothing was
//!   approved, `NotBefore` has not passed, and `DocumentIncarnation` advanced by exactly one,
//!   so no state was missed); otherwise `ended`: it may have run or been withdrawn, because a
//!   poller can miss the whole Started phase (Azure/vm-scheduled-events: Microsoft's own sample
//!   sees incarnation 2, approves, and next sees 4 with the event gone);
//! * vanished with a status Keel does not know: `ended`.
//!
//! All of these are marked `inferred`.
//!
//! An `EventStatus` Keel does not know (IMDS has Scheduled and Started, Event Grid adds
//! Completed and Canceled) does not fail the document: that event gets status `unknown`, its
//! raw entry (with the status as sent) stays in `raw`, and the other events come through.
//!
//! An unchanged `DocumentIncarnation` yields no events, and re-reading a document never yields
//! the same (event, status) twice.
//!
//! Each VM's event keeps its entry (for Event Grid, the envelope) in `raw`: whole for the VM
//! the normalizer runs on ([`Input::self_name`]: approving an event starts it for every VM it
//! lists, so the approval reads them all), with `Resources` narrowed to the VM for the others.
//! A document naming more than 4096 VM events, or whose events would hold more than 16 MiB
//! of entries and descriptions, is refused whole (a `Shape` error at the entry's
//! `Resources`): an entry naming many VMs is copied once per VM.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{array, get_ci, object, opt_int, opt_str, parse, req_str, shape};
use super::{time, Input, NormalizeError, NormalizerState};
use crate::event::{
    Event, Initiator, Kind, Maintenance, MaintenanceStatus, MaintenanceType, Resource, Source,
    Timestamp,
};

const SOURCE: &str = "azure.scheduled_events";
/// Bound on tracked events, so that a hostile endpoint cannot grow the state without limit.
const MAX_TRACKED: usize = 1024;
/// The most events (an entry's VMs, summed over the entries) one document may name.
const MAX_DOCUMENT_EVENTS: usize = 4 * MAX_TRACKED;
/// Bound on what one document's events hold (each its entry, narrowed to its VM, in `raw`,
/// and its description): an entry naming many VMs is copied once per VM.
const MAX_OUTPUT_BYTES: usize = 4 * super::MAX_PAYLOAD_BYTES;

/// What a document's events may still hold ([`MAX_DOCUMENT_EVENTS`], [`MAX_OUTPUT_BYTES`]).
struct Budget {
    events: usize,
    bytes: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            events: MAX_DOCUMENT_EVENTS,
            bytes: MAX_OUTPUT_BYTES,
        }
    }

    /// Takes `n` events holding `bytes` in all, or says why the document is refused.
    fn take(&mut self, path: &str, n: usize, bytes: usize) -> Result<(), NormalizeError> {
        if n > self.events || bytes > self.bytes {
            return Err(NormalizeError::Shape {
                path: format!("{path}.Resources"),
                expected: format!(
                    "at most {MAX_DOCUMENT_EVENTS} VM events in a document, holding at most \
                     {MAX_OUTPUT_BYTES} bytes of entries"
                ),
                found: format!("{n} more VMs holding {bytes} more bytes"),
            });
        }
        self.events -= n;
        self.bytes -= bytes;
        Ok(())
    }
}

/// The key of `obj` that [`get_ci`] reads for `key`: `key` itself, else the first that
/// matches it case-insensitively.
fn key_of(obj: &Map<String, Value>, key: &str) -> Option<String> {
    if obj.contains_key(key) {
        return Some(key.to_string());
    }
    obj.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
}

/// `v` with the `Resources` list of the object at `path` (keys compared as [`get_ci`] does)
/// emptied: what each VM's event keeps of its entry in `raw`, with its own name put back by
/// [`with_vm`].
fn without_vms(v: &Value, path: &[&str]) -> Value {
    fn walk(v: &Value, path: &[&str]) -> Value {
        let Value::Object(obj) = v else {
            return v.clone();
        };
        let (target, rest) = match path.split_first() {
            Some((first, rest)) => (key_of(obj, first), rest),
            None => (key_of(obj, "Resources"), &[][..]),
        };
        let mut out = Map::new();
        for (k, x) in obj {
            if Some(k) == target.as_ref() {
                out.insert(
                    k.clone(),
                    if path.is_empty() {
                        Value::Array(Vec::new())
                    } else {
                        walk(x, rest)
                    },
                );
            } else {
                out.insert(k.clone(), x.clone());
            }
        }
        Value::Object(out)
    }
    walk(v, path)
}

/// `template` ([`without_vms`]) with `vm` as the only name of its `Resources` list.
fn with_vm(template: &Value, path: &[&str], vm: &str) -> Value {
    let mut out = template.clone();
    let mut at = &mut out;
    for key in path.iter().chain(std::iter::once(&"Resources")) {
        let Value::Object(obj) = at else {
            return out;
        };
        let Some(k) = key_of(obj, key) else {
            return out;
        };
        let Some(next) = obj.get_mut(&k) else {
            return out;
        };
        at = next;
    }
    *at = Value::Array(vec![Value::String(vm.to_string())]);
    out
}

/// What the normalizer remembers between documents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The last document's `DocumentIncarnation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<i64>,
    /// Events seen and not yet vanished, by normalized id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub events: BTreeMap<String, Tracked>,
}

/// One (EventId, VM) the normalizer has seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracked {
    /// The last event emitted for it.
    pub event: Event,
    /// When it was first seen.
    pub first_seen: Timestamp,
    /// Whether StartRequests was sent for its EventId ([`State::mark_approved`]).
    #[serde(default)]
    pub approved: bool,
}

impl State {
    /// Records that StartRequests was sent for `event_id` (compared case-insensitively), so that
    /// its disappearance is never read as a cancellation.
    pub fn mark_approved(&mut self, event_id: &str) {
        for t in self.events.values_mut() {
            let vid = t
                .event
                .maintenance
                .as_ref()
                .and_then(|m| m.vendor_id.as_deref());
            if vid.is_some_and(|v| v.eq_ignore_ascii_case(event_id)) {
                t.approved = true;
            }
        }
    }
}

/// The body of the IMDS POST that approves (starts) events early: `{"StartRequests":
/// [{"EventId": …}]}`, with each id exactly as IMDS sent it.
pub fn start_requests<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> Value {
    let reqs: Vec<Value> = event_ids
        .into_iter()
        .map(|id| serde_json::json!({ "EventId": id }))
        .collect();
    serde_json::json!({ "StartRequests": reqs })
}

/// Normalizes one Scheduled Events document (IMDS), or Event Grid `ScheduledEventEmitted`
/// events (an envelope or an array of them).
pub fn normalize(
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let doc = parse(input.payload)?;
    if is_event_grid(&doc) {
        return event_grid(&doc, input);
    }
    let obj = object(&doc, "$")?;
    if get_ci(obj, "DocumentIncarnation").is_none() && get_ci(obj, "Events").is_none() {
        if let Some(err) = get_ci(obj, "error") {
            return Err(NormalizeError::WrongPayload {
                expected: SOURCE,
                reason: format!("IMDS answered with an error: {}", super::json::kind(err)),
            });
        }
        return Err(NormalizeError::WrongPayload {
            expected: SOURCE,
            reason: "no `DocumentIncarnation` or `Events`".into(),
        });
    }
    let incarnation =
        opt_int(obj, "DocumentIncarnation", "$")?.ok_or_else(|| NormalizeError::Shape {
            path: "DocumentIncarnation".into(),
            expected: "an integer".into(),
            found: get_ci(obj, "DocumentIncarnation")
                .map(super::json::kind)
                .unwrap_or_else(|| "nothing".into()),
        })?;
    let items = match get_ci(obj, "Events") {
        None | Some(Value::Null) => &[][..],
        Some(v) => array(v, "Events")?.as_slice(),
    };
    // Parse everything before touching the state: a bad document changes nothing.
    let mut current: Vec<Event> = Vec::new();
    let mut budget = Budget::new();
    for (i, item) in items.iter().enumerate() {
        current.extend(parse_event(
            (item, item, &[]),
            &format!("Events[{i}]"),
            incarnation,
            input,
            &mut budget,
        )?);
    }
    let se = &mut state.azure_scheduled_events;
    if se.incarnation == Some(incarnation) {
        return Ok(Vec::new());
    }
    let previous = se.incarnation;
    let present: std::collections::BTreeSet<String> =
        current.iter().map(|e| e.id.clone()).collect();
    let mut out = Vec::new();
    for mut ev in current {
        let prev = se.events.get(&ev.id);
        let first_seen = prev.map_or(input.observed_at, |t| t.first_seen);
        ev.time = first_seen;
        let status = ev.maintenance.as_ref().map(|m| m.status);
        let prev_status = prev.and_then(|t| t.event.maintenance.as_ref().map(|m| m.status));
        let approved = prev.is_some_and(|t| t.approved);
        if prev_status != status {
            out.push(ev.clone());
        }
        // The state keeps what is needed to report the event when it vanishes, not the payload.
        ev.raw = None;
        se.events.insert(
            ev.id.clone(),
            Tracked {
                event: ev,
                first_seen,
                approved,
            },
        );
    }
    // Vanished events.
    let gone: Vec<String> = se
        .events
        .keys()
        .filter(|k| !present.contains(*k))
        .cloned()
        .collect();
    for id in gone {
        let Some(t) = se.events.remove(&id) else {
            continue;
        };
        let Some(m) = t.event.maintenance.clone() else {
            continue;
        };
        if previous.is_none() {
            continue;
        }
        let no_gap = previous.is_some_and(|p| incarnation.checked_sub(p) == Some(1));
        let not_due = m.not_before.is_some_and(|nb| nb > input.observed_at);
        let status = match m.status {
            // Only a cancellation the evidence proves: nothing approved, no document missed,
            // NotBefore still ahead.
            MaintenanceStatus::Scheduled if !t.approved && not_due && no_gap => {
                MaintenanceStatus::Canceled
            }
            // It may have started and finished between two polls, or been withdrawn.
            MaintenanceStatus::Scheduled | MaintenanceStatus::Unknown => MaintenanceStatus::Ended,
            MaintenanceStatus::Started => MaintenanceStatus::Completed,
            MaintenanceStatus::Completed
            | MaintenanceStatus::Canceled
            | MaintenanceStatus::Ended => continue,
        };
        let mut ev = t.event;
        ev.time = input.observed_at;
        ev.maintenance = Some(Maintenance {
            status,
            inferred: true,
            incarnation: Some(incarnation),
            ..m
        });
        out.push(ev);
    }
    se.incarnation = Some(incarnation);
    // Keep the state bounded: drop the oldest tracked events beyond the limit (in one pass:
    // first seen first, then by id, as one at a time would).
    if se.events.len() > MAX_TRACKED {
        let mut by_age: Vec<(Timestamp, String)> = se
            .events
            .iter()
            .map(|(k, t)| (t.first_seen, k.clone()))
            .collect();
        by_age.sort_unstable();
        let excess = se.events.len() - MAX_TRACKED;
        for (_, k) in by_age.into_iter().take(excess) {
            se.events.remove(&k);
        }
    }
    Ok(out)
}

fn event_id(event_id: &str, vm: &str) -> String {
    format!(
        "{SOURCE}:{}/{}",
        event_id.to_ascii_lowercase(),
        vm.to_ascii_lowercase()
    )
}

fn resources(
    obj: &Map<String, Value>,
    path: &str,
    _input: &Input<'_>,
) -> Result<Vec<String>, NormalizeError> {
    let mut out: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    match get_ci(obj, "Resources") {
        None | Some(Value::Null) => {}
        Some(v) => {
            for (i, r) in array(v, &format!("{path}.Resources"))?.iter().enumerate() {
                let name = r
                    .as_str()
                    .ok_or_else(|| shape(&format!("{path}.Resources[{i}]"), "a VM name", r))?
                    .trim();
                if !name.is_empty() && seen.insert(name.to_ascii_lowercase()) {
                    out.push(name.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Parses one element of `Events` into one event per listed VM. `entry`: the element, what
/// each event keeps in `raw` (the element itself, or the Event Grid envelope holding it) and
/// the path from that to the element; each event's `raw` lists its own VM only.
fn parse_event(
    entry: (&Value, &Value, &[&str]),
    path: &str,
    incarnation: i64,
    input: &Input<'_>,
    budget: &mut Budget,
) -> Result<Vec<Event>, NormalizeError> {
    let (item, raw, to_item) = entry;
    let obj = object(item, path)?;
    let eid = req_str(obj, "EventId", path)?;
    let vendor_type = req_str(obj, "EventType", path)?;
    let type_ = match vendor_type.to_ascii_lowercase().as_str() {
        "freeze" => MaintenanceType::Freeze,
        "reboot" => MaintenanceType::Reboot,
        "redeploy" => MaintenanceType::Redeploy,
        "preempt" => MaintenanceType::Preempt,
        "terminate" => MaintenanceType::Terminate,
        _ => MaintenanceType::Unknown,
    };
    let status_raw = req_str(obj, "EventStatus", path)?;
    // Only Scheduled and Started exist on IMDS; Event Grid adds Completed and Canceled. A
    // status Keel does not know is `unknown` (the entry, with the status as sent, is in `raw`),
    // so that it does not hide the other events of the document.
    let status = match status_raw.trim().to_ascii_lowercase().as_str() {
        "scheduled" => MaintenanceStatus::Scheduled,
        "started" => MaintenanceStatus::Started,
        "completed" => MaintenanceStatus::Completed,
        "canceled" | "cancelled" => MaintenanceStatus::Canceled,
        _ => MaintenanceStatus::Unknown,
    };
    let not_before = match get_ci(obj, "NotBefore") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => time::parse(&format!("{path}.NotBefore"), s)?,
        Some(other) => return Err(shape(&format!("{path}.NotBefore"), "a time string", other)),
    };
    // -1 means unknown, and so does absence (before api-version 2020-07-01): never 0.
    let duration_s = opt_int(obj, "DurationInSeconds", path)?.filter(|d| *d >= 0);
    let initiator = match opt_str(obj, "EventSource", path)? {
        Some(s) if s.eq_ignore_ascii_case("platform") => Some(Initiator::Platform),
        Some(s) if s.eq_ignore_ascii_case("user") => Some(Initiator::User),
        _ => None,
    };
    let description = opt_str(obj, "Description", path)?.map(str::to_string);
    let vms = resources(obj, path, input)?;
    if vms.is_empty() {
        return Err(NormalizeError::Shape {
            path: format!("{path}.Resources"),
            expected: "at least one VM name".into(),
            found: "none".into(),
        });
    }
    let template = without_vms(raw, to_item);
    let longest = vms.iter().map(String::len).max().unwrap_or(0);
    let each = serde_json::to_string(&template)
        .map_or(0, |t| t.len())
        .saturating_add(description.as_ref().map_or(0, String::len))
        .saturating_add(longest.saturating_mul(2));
    budget.take(path, vms.len(), vms.len().saturating_mul(each))?;
    let is_self = |vm: &str| {
        input.self_name.map(|s| {
            s.trim_start_matches('_')
                .eq_ignore_ascii_case(vm.trim_start_matches('_'))
        })
    };
    if vms.iter().any(|vm| is_self(vm) == Some(true)) {
        // Its event, counted above, keeps the whole entry: only the bytes are more.
        let whole = serde_json::to_string(raw).map_or(0, |t| t.len());
        budget.take(path, 0, whole)?;
    }
    Ok(vms
        .into_iter()
        .map(|vm| Event {
            // This VM's own event keeps every name the entry lists: approving the event
            // (StartRequests) starts it for all of them, so the approval step reads them.
            raw: Some(if is_self(&vm) == Some(true) {
                raw.clone()
            } else {
                with_vm(&template, to_item, &vm)
            }),
            id: event_id(eid, &vm),
            time: input.observed_at,
            source: Source::AzureScheduledEvents,
            kind: Kind::Maintenance,
            resource: Resource {
                is_self: is_self(&vm),
                name: Some(vm),
                ..Resource::default()
            },
            maintenance: Some(Maintenance {
                type_,
                status,
                not_before,
                not_after: None,
                duration_s,
                initiator,
                description: description.clone(),
                vendor_id: Some(eid.to_string()),
                vendor_type: Some(vendor_type.to_string()),
                incarnation: Some(incarnation),
                inferred: false,
            }),
            health: None,
            failure: None,
        })
        .collect())
}

fn is_event_grid(doc: &Value) -> bool {
    let first = match doc {
        Value::Array(a) => a.first(),
        v => Some(v),
    };
    first.and_then(Value::as_object).is_some_and(|o| {
        o.contains_key("data") && (o.contains_key("eventType") || o.contains_key("type"))
    })
}

/// Event Grid `ScheduledEventEmitted` (preview): no incarnation, explicit Completed/Canceled.
fn event_grid(doc: &Value, input: &Input<'_>) -> Result<Vec<Event>, NormalizeError> {
    let envelopes: Vec<(String, &Value)> = match doc {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        v => vec![("$".to_string(), v)],
    };
    let mut out = Vec::new();
    let mut budget = Budget::new();
    for (path, env) in envelopes {
        let env_obj = object(env, &path)?;
        let data = get_ci(env_obj, "data")
            .ok_or_else(|| shape(&path, "an Event Grid envelope with `data`", env))?;
        let data = object(data, &format!("{path}.data"))?;
        let info = get_ci(data, "resourceInfo").ok_or_else(|| NormalizeError::WrongPayload {
            expected: SOURCE,
            reason: "Event Grid event without `data.resourceInfo`".into(),
        })?;
        let info_path = format!("{path}.data.resourceInfo");
        let info = object(info, &info_path)?;
        let rtype = opt_str(info, "type", &info_path)?.unwrap_or("");
        if !rtype.eq_ignore_ascii_case("microsoft.maintenance/scheduledevents") {
            return Err(NormalizeError::WrongPayload {
                expected: SOURCE,
                reason: format!(
                    "Event Grid resource type \"{}\" is not microsoft.maintenance/scheduledevents",
                    super::quote(rtype)
                ),
            });
        }
        let props_path = format!("{info_path}.properties");
        let props = get_ci(info, "properties")
            .ok_or_else(|| shape(&props_path, "an object", &Value::Null))?;
        let region = opt_str(info, "location", &info_path)?.map(str::to_string);
        let scale_set = opt_str(info, "id", &info_path)?
            .and_then(super::azure_id::parse)
            .and_then(|a| a.scale_set);
        let time = match opt_str(env_obj, "eventTime", &path)?.or(opt_str(env_obj, "time", &path)?)
        {
            Some(t) => time::parse(&format!("{path}.eventTime"), t)?,
            None => None,
        };
        let to_props: Vec<&str> = ["data", "resourceInfo", "properties"].to_vec();
        for mut ev in parse_event((props, env, &to_props), &props_path, 0, input, &mut budget)? {
            ev.time = time.unwrap_or(input.observed_at);
            ev.resource.region.clone_from(&region);
            ev.resource.scale_set.clone_from(&scale_set);
            if let Some(m) = ev.maintenance.as_mut() {
                m.incarnation = None;
            }
            out.push(ev);
        }
    }
    Ok(out)
}
