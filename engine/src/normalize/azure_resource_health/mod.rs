//! Normalizer: Azure Resource Health (the protocol: `docs/protocols.md`, "Azure Resource
//! Health"; Microsoft's documentation: <https://learn.microsoft.com/en-us/rest/api/resourcehealth/>,
//! <https://learn.microsoft.com/en-us/azure/azure-monitor/essentials/activity-log-schema>,
//! <https://learn.microsoft.com/en-us/azure/event-grid/event-schema-health-resources>).
//!
//! One stateless normalizer reads every channel Resource Health data arrives on and detects
//! the shape itself:
//!
//! * `availabilityStatuses` REST responses, a single status (`…/availabilityStatuses/current`)
//!   or a list (`{"value": [...], "nextLink"}`, one event per entry), for every api-version.
//!   Key names differ by version (`occuredTime` / `occurredTime`, `recentlyResolved` /
//!   `recentlyResolvedState` with `unavailableOccuredTime` / `unavailableOccurredTime` and
//!   `unavailableSummary` / `unavailabilitySummary`, PascalCase in 2015-01-01); all spellings
//!   are accepted and keys match case-insensitively. Resource Health's flat error body
//!   (`{code, message, details: "string"}`) and the ARM `{"error": {...}}` envelope are a
//!   [`NormalizeError::WrongPayload`] naming the error code.
//! * Activity-log `ResourceHealth` events, with either property set
//!   (`currentHealthStatus/previousHealthStatus/type/cause` or
//!   `healthStatus/healthEventType/healthEventCause/healthEventCategory`), where
//!   `operationName`, `status`, `category`, ... may be `{value, localizedValue}` objects or flat
//!   strings; the exported diagnostic record (`properties.eventProperties`, whose `details`
//!   carries the annotation name); lists of either (`value` or `records`).
//! * Activity-log alerts: the legacy webhook (`schemaId: Microsoft.Insights/activityLogs`) and
//!   the common alert schema (`schemaId: azureMonitorCommonAlertSchema`). These alerts are
//!   stateless (`monitorCondition` is always `Fired`): a recovery is a fired alert whose event
//!   says `Resolved`, and it normalizes to state `available`.
//! * Event Grid `HealthResources` events (`AvailabilityStatusChanged`, `ResourceAnnotated`) in
//!   the Event Grid and the CloudEvents envelopes, alone or as a delivered batch (an array).
//!
//! An unknown or missing availability state is `unknown`, never `available` and never an
//! outage. `reason_type` comes from `reasonType`, `context`, `category`, `cause`,
//! `healthEventCause` and `healthEventCategory` through a lower-case, space-stripped table
//! (user-initiated beats planned, planned beats unplanned); when none of them decides, a short
//! table of VM health annotations does; unknown annotation names infer nothing.

use chrono::SecondsFormat;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::json::{self, get_ci, join, kind};
use super::{quote, time, Input, NormalizeError, NormalizerState};
use crate::event::{Event, Health, HealthState, Kind, Resource, Source, Timestamp};

mod activity_log;
mod availability_status;
mod event_grid;
mod resource;
mod vocabulary;

use activity_log::{read_activity_log, read_alert, read_exported, AlertCtx};
use availability_status::read_status;
use event_grid::read_event_grid;
use vocabulary::parse_state;

/// State carried between calls. Resource Health is stateless: every payload carries its own
/// times and ids, so this stays empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {}

const SOURCE: &str = "azure.resource_health";
static NULL: Value = Value::Null;

/// Normalizes one Resource Health payload (any of the shapes in the module documentation)
/// into one health event per status, activity-log event, alert or Event Grid event.
pub fn normalize(
    input: &Input<'_>,
    _state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let doc = match json::parse(input.payload) {
        Ok(v) => v,
        Err(e @ NormalizeError::Json { .. }) => {
            return match input.http_status {
                Some(s) if s >= 400 => Err(wrong(format!(
                    "an HTTP {s} response whose body is not JSON"
                ))),
                _ => Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    match &doc {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("[{i}]");
                read_document(item, &path, input, &mut out, true)?;
            }
        }
        Value::Object(_) => read_document(&doc, "", input, &mut out, false)?,
        other => {
            return Err(wrong(format!(
                "the payload is {}, not a JSON object or array",
                kind(other)
            )))
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Shape detection
// ---------------------------------------------------------------------------------------

/// What a JSON object is.
enum Shape {
    ArmError,
    FlatError,
    Alert,
    List,
    EventGrid,
    Exported,
    ActivityLog,
    Status,
    Unrecognized,
}

fn detect(obj: &Map<String, Value>) -> Shape {
    let props = get_ci(obj, "properties").and_then(Value::as_object);
    let has = |k: &str| get_ci(obj, k).is_some_and(|v| !v.is_null());
    if has("error") && props.is_none() && !has("data") {
        return Shape::ArmError;
    }
    if has("schemaId") {
        return Shape::Alert;
    }
    if props.is_none()
        && ["value", "records"]
            .iter()
            .any(|k| get_ci(obj, k).is_some_and(Value::is_array))
    {
        return Shape::List;
    }
    if props.is_none()
        && !has("data")
        && get_ci(obj, "code").is_some_and(Value::is_string)
        && has("message")
    {
        return Shape::FlatError;
    }
    if get_ci(obj, "data").is_some_and(Value::is_object)
        && (has("eventType") || has("specversion") || has("type"))
    {
        return Shape::EventGrid;
    }
    if let Some(p) = props {
        if get_ci(p, "eventProperties").is_some_and(|v| v.is_object() || v.is_string()) {
            return Shape::Exported;
        }
        if get_ci(p, "availabilityState").is_some() {
            return Shape::Status;
        }
    }
    if hint(obj, "type")
        .is_some_and(|t| t.eq_ignore_ascii_case("Microsoft.ResourceHealth/AvailabilityStatuses"))
    {
        return Shape::Status;
    }
    let al_keys = [
        "eventDataId",
        "eventTimestamp",
        "submissionTimestamp",
        "operationName",
        "resourceProviderName",
        "eventSource",
    ];
    if al_keys.iter().any(|k| has(k))
        || props.is_some_and(|p| {
            ["currentHealthStatus", "healthStatus"]
                .iter()
                .any(|k| get_ci(p, k).is_some())
        })
    {
        return Shape::ActivityLog;
    }
    if hint(obj, "id").is_some_and(|id| {
        id.to_ascii_lowercase()
            .contains("/providers/microsoft.resourcehealth/availabilitystatuses")
    }) {
        return Shape::Status;
    }
    Shape::Unrecognized
}

fn read_document(
    v: &Value,
    path: &str,
    input: &Input<'_>,
    out: &mut Vec<Event>,
    nested: bool,
) -> Result<(), NormalizeError> {
    let obj = json::object(v, display(path))?;
    let event = match detect(obj) {
        Shape::ArmError => return Err(arm_error(obj, path)),
        Shape::FlatError => return Err(flat_error(obj, path)),
        Shape::Alert => read_alert(obj, v, path, input)?,
        Shape::List if nested => {
            return Err(json::shape(
                display(path),
                "a Resource Health record, not a nested list",
                v,
            ))
        }
        Shape::List => return read_list(obj, path, input, out),
        Shape::EventGrid => read_event_grid(obj, v, path, input)?,
        Shape::Exported => read_exported(obj, v, path, input)?,
        Shape::ActivityLog => {
            read_activity_log(obj, None, v, path, input, &AlertCtx::default())?
        }
        Shape::Status => read_status(obj, v, path, input)?,
        Shape::Unrecognized if nested => {
            return Err(json::shape(
                display(path),
                "an availability status, an activity-log ResourceHealth event, an alert or an Event Grid HealthResources event",
                v,
            ))
        }
        Shape::Unrecognized => {
            return Err(wrong(
                "no availabilityState, activity-log ResourceHealth fields, alert schemaId or Event Grid envelope found"
                    .into(),
            ))
        }
    };
    out.push(event);
    Ok(())
}

fn read_list(
    obj: &Map<String, Value>,
    path: &str,
    input: &Input<'_>,
    out: &mut Vec<Event>,
) -> Result<(), NormalizeError> {
    let (key, items) = ["value", "records"]
        .iter()
        .find_map(|k| get_ci(obj, k).and_then(Value::as_array).map(|a| (*k, a)))
        .ok_or_else(|| wrong("no `value` list".into()))?;
    for (i, item) in items.iter().enumerate() {
        let p = format!("{}[{i}]", join(path, key));
        read_document(item, &p, input, out, true)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Errors the vendor returned instead of data
// ---------------------------------------------------------------------------------------

fn arm_error(obj: &Map<String, Value>, path: &str) -> NormalizeError {
    match get_ci(obj, "error") {
        Some(Value::Object(e)) => error_response("an ARM error response", e, path),
        Some(other) => wrong(format!(
            "{}an error response (`error` is {})",
            where_(path),
            kind(other)
        )),
        None => wrong(format!("{}an error response", where_(path))),
    }
}

fn flat_error(obj: &Map<String, Value>, path: &str) -> NormalizeError {
    error_response("a Resource Health error response", obj, path)
}

/// `what`, naming the error's code and message.
fn error_response(what: &str, err: &Map<String, Value>, path: &str) -> NormalizeError {
    let code = hint(err, "code").unwrap_or("(no code)");
    let msg = hint(err, "message");
    wrong(format!(
        "{}{what}, code \"{}\"{}",
        where_(path),
        quote(code),
        msg.map(|m| format!(": \"{}\"", quote(m)))
            .unwrap_or_default()
    ))
}

fn where_(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("`{path}` is ")
    }
}

fn wrong(reason: String) -> NormalizeError {
    NormalizeError::WrongPayload {
        expected: SOURCE,
        reason,
    }
}

// ---------------------------------------------------------------------------------------
// Field access
// ---------------------------------------------------------------------------------------

fn display(path: &str) -> &str {
    if path.is_empty() {
        "(document)"
    } else {
        path
    }
}

/// The first of `keys` (case-insensitive) holding a non-empty string; absent, null and ""
/// are not given. Any other type is a shape error naming the key.
fn str_field<'v>(
    obj: &'v Map<String, Value>,
    keys: &[&str],
    path: &str,
) -> Result<Option<&'v str>, NormalizeError> {
    for key in keys {
        if let Some(s) = json::opt_str(obj, key, path)? {
            return Ok(Some(s));
        }
    }
    Ok(None)
}

/// A string used only to recognize a shape: flat or `{value}`, anything else ignored.
fn hint<'v>(obj: &'v Map<String, Value>, key: &str) -> Option<&'v str> {
    match get_ci(obj, key)? {
        Value::String(s) => Some(s.as_str()),
        Value::Object(o) => match get_ci(o, "value")? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        },
        _ => None,
    }
}

fn state_field(
    obj: &Map<String, Value>,
    keys: &[&str],
    path: &str,
) -> Result<Option<HealthState>, NormalizeError> {
    Ok(str_field(obj, keys, path)?.map(parse_state))
}

fn time_field(
    obj: &Map<String, Value>,
    keys: &[&str],
    path: &str,
) -> Result<Option<Timestamp>, NormalizeError> {
    for key in keys {
        if let Some(s) = str_field(obj, &[key], path)? {
            if let Some(t) = time::parse(&join(path, key), s)? {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

fn rfc3339(t: Timestamp) -> String {
    // As sent: `2018-08-08T15:38:16.3712445Z`, not nine padded digits.
    let full = t.to_rfc3339_opts(SecondsFormat::Nanos, true);
    match full.split_once('.') {
        Some((secs, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{secs}Z")
            } else {
                format!("{secs}.{digits}Z")
            }
        }
        None => full,
    }
}

fn event(id: String, time: Timestamp, resource: Resource, health: Health, raw: &Value) -> Event {
    Event {
        id,
        time,
        source: Source::AzureResourceHealth,
        kind: Kind::Health,
        resource,
        maintenance: None,
        health: Some(health),
        failure: None,
        raw: Some(raw.clone()),
    }
}
