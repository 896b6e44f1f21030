//! Normalizers: pure functions from a vendor payload to normalized [`Event`]s.
//!
//! Each source has one module. A normalizer takes the payload bytes, the time Keel observed
//! them (never a clock read) and, for stateful protocols, a [`NormalizerState`] that the caller
//! persists between calls. It rejects malformed or hostile input with a typed
//! [`NormalizeError`] and never panics. Unknown but well-formed values (a new event type)
//! normalize to an explicit `unknown` rather than failing the whole document.
//!
//! ```
//! use keel_engine::normalize::{normalize, Input, NormalizerState};
//!
//! let doc = br#"{"DocumentIncarnation": 2, "Events": [{"EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
//!   "EventStatus": "Scheduled", "EventType": "Freeze", "ResourceType": "VirtualMachine",
//!   "Resources": ["WestNO_0", "WestNO_1"], "NotBefore": "Mon, 11 Apr 2026 22:26:58 GMT",
//!   "Description": "Virtual machine is being paused because of a memory-preserving Live Migration operation.",
//!   "EventSource": "Platform", "DurationInSeconds": 5}]}"#;
//! let mut state = NormalizerState::default();
//! let observed_at = "2026-04-11T22:11:58Z".parse()?;
//! let events = normalize("azure.scheduled_events", &Input::new(doc, observed_at).self_name("WestNO_0"), &mut state)?;
//! assert_eq!(events.len(), 2); // one per VM
//! assert_eq!(events[0].resource.is_self, Some(true));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::event::{Event, Operation, Timestamp};

pub mod aws_imds;
pub mod azure_arm;
pub mod azure_id;
pub mod azure_maintenance_v1;
pub mod azure_resource_health;
pub mod azure_scheduled_events;
pub mod classify;
pub mod gcp_metadata;
pub(crate) mod http;
pub(crate) mod json;
pub mod time;
pub mod transform;

/// The largest payload a normalizer accepts (4 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 4 << 20;

/// What a normalizer is given.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Input<'a> {
    /// The payload as received (JSON, text, or an HTTP response for the `.http` forms).
    pub payload: &'a [u8],
    /// When Keel observed the payload: the event time where the vendor gives none, and the
    /// epoch of content-hash ids. Never read from a clock inside the engine.
    pub observed_at: Timestamp,
    /// This host's own VM name, to set `resource.is_self`.
    pub self_name: Option<&'a str>,
    /// The HTTP status the payload came with, where known.
    pub http_status: Option<u16>,
    /// The `Retry-After` header in seconds, where the payload came with one.
    pub retry_after_s: Option<i64>,
    /// The operation that failed, where the caller knows it and the payload may not say
    /// (`azure.arm`: a bare error body or async operation status).
    pub operation: Option<Operation>,
}

impl<'a> Input<'a> {
    /// A payload observed at `observed_at`.
    pub fn new(payload: &'a [u8], observed_at: Timestamp) -> Input<'a> {
        Input {
            payload,
            observed_at,
            self_name: None,
            http_status: None,
            retry_after_s: None,
            operation: None,
        }
    }

    /// Sets the operation that failed (see [`Input::operation`]).
    pub fn operation(mut self, op: Operation) -> Input<'a> {
        self.operation = Some(op);
        self
    }

    /// Sets this host's own VM name.
    pub fn self_name(mut self, name: &'a str) -> Input<'a> {
        self.self_name = Some(name);
        self
    }

    /// Sets the HTTP status of the response the payload came in.
    pub fn http_status(mut self, status: u16) -> Input<'a> {
        self.http_status = Some(status);
        self
    }

    /// Sets the `Retry-After` header value in seconds.
    pub fn retry_after_s(mut self, secs: i64) -> Input<'a> {
        self.retry_after_s = Some(secs);
        self
    }
}

/// State carried between calls for stateful protocols; the caller persists it (for example
/// `keel normalize --state FILE`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct NormalizerState {
    /// Azure Scheduled Events: the last document and what was seen of each event.
    #[serde(default)]
    pub azure_scheduled_events: azure_scheduled_events::State,
    /// Azure legacy maintenance endpoint: the last InstanceInfo.
    #[serde(default)]
    pub azure_maintenance_v1: azure_maintenance_v1::State,
    /// GCP metadata: the last maintenance-event value and when it was first seen.
    #[serde(default)]
    pub gcp_metadata: gcp_metadata::State,
    /// AWS IMDS: the live events of the last scheduled-events list read from its path, and
    /// when the Spot and rebalance notices now listed were first read.
    #[serde(default)]
    pub aws_imds: aws_imds::State,
    /// Azure Resource Manager: first-seen times of failures with neither an id nor a time.
    #[serde(default)]
    pub azure_arm: azure_arm::State,
}

/// Why a payload could not be normalized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NormalizeError {
    /// No normalizer has that name.
    #[error("unknown normalizer `{name}`{}", suggestion(.hint))]
    UnknownNormalizer {
        /// The name given.
        name: String,
        /// A close name, if any.
        hint: Option<&'static str>,
    },
    /// The payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The payload is not UTF-8.
    #[error("payload is not UTF-8 (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The payload is not valid JSON (or nests deeper than 128 levels).
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// A value has the wrong shape or type.
    #[error("`{path}`: expected {expected}, found {found}")]
    Shape {
        /// Where, as a JSON path (`Events[0].NotBefore`).
        path: String,
        /// What was expected.
        expected: String,
        /// What was there (escaped and truncated).
        found: String,
    },
    /// A time value is not in any format the vendor uses.
    #[error("`{path}`: invalid time {value:?}: {reason}")]
    Time {
        /// Where.
        path: String,
        /// The value (escaped and truncated).
        value: String,
        /// Why.
        reason: String,
    },
    /// The payload is well-formed but not what this normalizer reads.
    #[error("not a payload `{expected}` reads: {reason}")]
    WrongPayload {
        /// What this normalizer reads.
        expected: &'static str,
        /// What was found instead.
        reason: String,
    },
}

fn suggestion(hint: &Option<&'static str>) -> String {
    match hint {
        Some(h) => format!(" (did you mean `{h}`?)"),
        None => String::new(),
    }
}

/// A normalizer's entry in the registry.
#[derive(Debug, Clone, Copy)]
pub struct NormalizerInfo {
    /// Its name, for `keel normalize --from`.
    pub name: &'static str,
    /// What it reads.
    pub reads: &'static str,
    run: fn(&Input<'_>, &mut NormalizerState) -> Result<Vec<Event>, NormalizeError>,
}

/// Every normalizer.
pub static NORMALIZERS: &[NormalizerInfo] = &[
    NormalizerInfo {
        name: "azure.scheduled_events",
        reads: "Azure IMDS /metadata/scheduledevents documents (stateful: incarnations, vanished events)",
        run: azure_scheduled_events::normalize,
    },
    NormalizerInfo {
        name: "azure.maintenance_v1",
        reads: "the legacy Azure /metadata/v1/maintenance endpoint",
        run: azure_maintenance_v1::normalize,
    },
    NormalizerInfo {
        name: "azure.resource_health",
        reads: "Azure Resource Health: availabilityStatuses REST responses (any api-version), activity-log ResourceHealth events, their alerts (legacy webhook and common schema), Event Grid health events",
        run: azure_resource_health::normalize,
    },
    NormalizerInfo {
        name: "azure.arm",
        reads: "Azure Resource Manager operation failures: error bodies, async operation status, deployment wrappers, activity-log statusMessage, ingest bodies",
        run: azure_arm::normalize,
    },
    NormalizerInfo {
        name: "aws.imds",
        reads: "AWS IMDS: spot/instance-action, spot/termination-time, events/recommendations/rebalance, events/maintenance/scheduled and history",
        run: aws_imds::normalize,
    },
    NormalizerInfo {
        name: "gcp.metadata",
        reads: "GCP metadata: instance/maintenance-event, instance/preempted, instance/upcoming-maintenance",
        run: gcp_metadata::normalize,
    },
];

/// Runs the normalizer called `name`.
pub fn normalize(
    name: &str,
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let Some(n) = NORMALIZERS.iter().find(|n| n.name == name) else {
        return Err(NormalizeError::UnknownNormalizer {
            name: crate::diag::escape(&truncate(name, 80)),
            hint: crate::fields::did_you_mean(name, NORMALIZERS.iter().map(|n| n.name)),
        });
    };
    if input.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(NormalizeError::TooLarge {
            size: input.payload.len(),
        });
    }
    // A payload refused for a field's size changes nothing, as any other refused payload:
    // the running normalizer's own part of the state (the only part it changes) is kept to
    // be put back.
    let mut before = NormalizerState::default();
    copy_part(n.name, state, &mut before);
    let events = (n.run)(input, state)?;
    if let Err(e) = events.iter().try_for_each(check_field_sizes) {
        copy_part(n.name, &before, state);
        return Err(e);
    }
    Ok(events)
}

/// Copies the part of `from` that the normalizer `name` may change on a call that returns
/// events into `to`. Each part is named here, so a new one does not compile until it is
/// decided whether a refused payload must put it back.
fn copy_part(name: &str, from: &NormalizerState, to: &mut NormalizerState) {
    let NormalizerState {
        azure_scheduled_events,
        gcp_metadata,
        azure_arm,
        aws_imds,
        // Changed only by an InstanceInfo document, which returns no event and refuses an
        // over-long or NUL-holding `ID` itself.
        azure_maintenance_v1: _,
    } = from;
    match name {
        "azure.scheduled_events" => to.azure_scheduled_events.clone_from(azure_scheduled_events),
        "gcp.metadata" => to.gcp_metadata.clone_from(gcp_metadata),
        "azure.arm" => to.azure_arm.clone_from(azure_arm),
        "aws.imds" => to.aws_imds.clone_from(aws_imds),
        _ => {}
    }
}

/// The most bytes a field the correlation history remembers (the resource's identifiers and
/// every enum-like field: [`crate::history::correlatable`]) may hold. The history keeps
/// those of up to 50,000 events; a payload giving a longer one is refused.
pub const MAX_FIELD_BYTES: usize = 2048;

/// Refuses an event whose remembered fields are longer than [`MAX_FIELD_BYTES`], or whose id
/// or remembered fields hold a NUL character (no vendor's identifiers do, and a runbook's
/// `exec` step passes the id and the resource's name and id in its environment, which cannot
/// hold one).
fn check_field_sizes(ev: &Event) -> Result<(), NormalizeError> {
    if ev.id.contains('\0') {
        return Err(nul_in("id"));
    }
    for id in crate::fields::FieldId::all() {
        if !crate::history::correlatable(id) {
            continue;
        }
        if let Ok(Some(crate::fields::FieldValue::Str(s))) = crate::fields::read(ev, id) {
            check_remembered(crate::fields::field(id).path, s)?;
        }
    }
    Ok(())
}

/// Refuses `text`, read at `path`, if the correlation history could not remember it: longer
/// than [`MAX_FIELD_BYTES`] or holding a NUL character.
pub(crate) fn check_remembered(path: &str, text: &str) -> Result<(), NormalizeError> {
    if text.len() > MAX_FIELD_BYTES {
        return Err(NormalizeError::Shape {
            path: path.to_string(),
            expected: format!("at most {MAX_FIELD_BYTES} bytes"),
            found: format!("{} bytes", text.len()),
        });
    }
    if text.contains('\0') {
        return Err(nul_in(path));
    }
    Ok(())
}

fn nul_in(path: &str) -> NormalizeError {
    NormalizeError::Shape {
        path: path.to_string(),
        expected: "text without NUL characters".into(),
        found: "a NUL character".into(),
    }
}

/// A maintenance notice from the platform, with nothing but its type and status known yet.
pub(crate) fn platform_maintenance(
    type_: crate::event::MaintenanceType,
    status: crate::event::MaintenanceStatus,
) -> crate::event::Maintenance {
    crate::event::Maintenance {
        type_,
        status,
        not_before: None,
        not_after: None,
        duration_s: None,
        initiator: Some(crate::event::Initiator::Platform),
        description: None,
        vendor_id: None,
        vendor_type: None,
        incarnation: None,
        inferred: false,
    }
}

/// A maintenance event of `source`.
pub(crate) fn maintenance_event_of(
    source: crate::event::Source,
    id: String,
    time: Timestamp,
    resource: crate::event::Resource,
    m: crate::event::Maintenance,
    raw: serde_json::Value,
) -> Event {
    Event {
        id,
        time,
        source,
        kind: crate::event::Kind::Maintenance,
        resource,
        maintenance: Some(m),
        health: None,
        failure: None,
        raw: Some(raw),
    }
}

/// The VM that read an instance-metadata payload (AWS IMDS, the GCP metadata server): the
/// payload is about that VM, named `self_name` and marked as this host when the caller gave it.
pub(crate) fn self_resource(self_name: Option<&str>) -> crate::event::Resource {
    crate::event::Resource {
        name: self_name.map(|n| n.trim().to_string()),
        is_self: self_name.map(|_| true),
        ..crate::event::Resource::default()
    }
}

/// A time as it enters a content-hash id: RFC 3339 in UTC (`Z`), with a fraction only where
/// the time has one.
pub(crate) fn stamp(t: &Timestamp) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Truncates untrusted text for an error message.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max).collect();
    out.push('…');
    out
}

/// A value quoted for an error message: escaped and truncated.
pub(crate) fn quote(s: &str) -> String {
    crate::diag::escape(&truncate(s, 80))
}

/// `<source>:` + 16 hex digits of SHA-256 over `parts` (for vendors without an id).
pub(crate) fn hash_id(source: &str, parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut s = String::with_capacity(source.len() + 17);
    s.push_str(source);
    s.push(':');
    s.push_str(&hex::encode(&digest[..8]));
    s
}
