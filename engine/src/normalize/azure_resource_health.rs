//! Normalizer: Azure Resource Health (DOMAIN.md sections 2.1-2.4 and section 8).
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

use super::json::{self, get_ci, join, kind, value_str};
use super::{hash_id, quote, time, Input, NormalizeError, NormalizerState};
use crate::event::{Event, Health, HealthState, Kind, ReasonType, Resource, Source, Timestamp};

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
        Some(Value::Object(e)) => {
            let code = hint(e, "code").unwrap_or("(no code)");
            let msg = hint(e, "message");
            wrong(format!(
                "{}an ARM error response, code \"{}\"{}",
                where_(path),
                quote(code),
                msg.map(|m| format!(": \"{}\"", quote(m)))
                    .unwrap_or_default()
            ))
        }
        Some(other) => wrong(format!(
            "{}an error response (`error` is {})",
            where_(path),
            kind(other)
        )),
        None => wrong(format!("{}an error response", where_(path))),
    }
}

fn flat_error(obj: &Map<String, Value>, path: &str) -> NormalizeError {
    let code = hint(obj, "code").unwrap_or("(no code)");
    let msg = hint(obj, "message");
    wrong(format!(
        "{}a Resource Health error response, code \"{}\"{}",
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
// availabilityStatuses (REST)
// ---------------------------------------------------------------------------------------

fn read_status(
    obj: &Map<String, Value>,
    raw: &Value,
    path: &str,
    input: &Input<'_>,
) -> Result<Event, NormalizeError> {
    let ppath = join(path, "properties");
    let props = match get_ci(obj, "properties") {
        Some(v) => json::object(v, &ppath)?,
        None => {
            return Err(NormalizeError::Shape {
                path: ppath,
                expected: "an object".into(),
                found: "nothing".into(),
            })
        }
    };
    let status_id = str_field(obj, &["id"], path)?;
    let status_name = str_field(obj, &["name"], path)?;
    let location = str_field(obj, &["location"], path)?;

    let state = state_field(props, &["availabilityState"], &ppath)?.unwrap_or(HealthState::Unknown);
    let occurred = time_field(props, &["occuredTime", "occurredTime"], &ppath)?;
    let eta = time_field(props, &["resolutionETA"], &ppath)?;

    // recentlyResolved (2020-05-01 on) / recentlyResolvedState (2015-01-01).
    let mut previous = None;
    let mut resolved_at = None;
    let rr_key = ["recentlyResolved", "recentlyResolvedState"]
        .into_iter()
        .find(|k| get_ci(props, k).is_some_and(|v| !v.is_null()));
    if let Some(k) = rr_key {
        let rpath = join(&ppath, k);
        let rr = json::object(get_ci(props, k).unwrap_or(&NULL), &rpath)?;
        let unavailable_at = time_field(
            rr,
            &["unavailableOccuredTime", "unavailableOccurredTime"],
            &rpath,
        )?;
        resolved_at = time_field(rr, &["resolvedTime"], &rpath)?;
        let unavailable_summary =
            str_field(rr, &["unavailableSummary", "unavailabilitySummary"], &rpath)?;
        let given =
            unavailable_at.is_some() || resolved_at.is_some() || unavailable_summary.is_some();
        if given && state == HealthState::Available {
            previous = Some(HealthState::Unavailable);
        }
    }

    let summary = str_field(props, &["summary", "detailedStatus", "title"], &ppath)?;
    let health_event_id = str_field(props, &["healthEventId"], &ppath)?;
    let annotation = match str_field(props, &["annotationName"], &ppath)? {
        Some(a) => Some(a),
        None => health_event_id.filter(|h| looks_like_annotation(h)),
    };
    let reason = reason_type(props, PROPERTIES_REASON_KEYS, &ppath, annotation)?;
    let occurred_at = occurred.or(resolved_at);

    let resource_id = status_id.map(strip_health_suffix);
    let mut resource = resource_from_id(resource_id, None, input);
    resource.region = location.map(region);

    let vendor = match health_event_id {
        Some(h) if looks_like_annotation(h) => occurred_at.map(|t| format!("{h}@{}", rfc3339(t))),
        Some(h) => Some(h.to_string()),
        None => None,
    };
    let vendor = vendor.or_else(|| {
        let key = status_id.or(status_name.filter(|n| !n.eq_ignore_ascii_case("current")))?;
        if is_current(key) {
            occurred_at.map(|t| format!("{key}@{}", rfc3339(t)))
        } else {
            Some(key.to_string())
        }
    });
    let id = match vendor {
        Some(v) => format!("{SOURCE}:{v}"),
        None => hash_id(
            SOURCE,
            &[
                "availabilityStatus",
                status_id.unwrap_or(""),
                state.as_str(),
                summary.unwrap_or(""),
                health_event_id.unwrap_or(""),
            ],
        ),
    };
    Ok(event(
        id,
        occurred_at.unwrap_or(input.observed_at),
        resource,
        Health {
            state,
            previous_state: previous,
            reason_type: reason,
            summary: summary.map(str::to_string),
            annotation: annotation.map(str::to_string),
            occurred_at,
            resolution_eta: eta,
        },
        raw,
    ))
}

fn is_current(key: &str) -> bool {
    let k = key.trim_end_matches('/');
    k.eq_ignore_ascii_case("current")
        || (k.len() >= 8
            && k.get(k.len() - 8..)
                .is_some_and(|t| t.eq_ignore_ascii_case("/current")))
}

/// The resource id of a Resource Health id: everything before the last
/// `/providers/Microsoft.ResourceHealth/`, case-insensitively.
fn strip_health_suffix(id: &str) -> &str {
    let lower = id.to_ascii_lowercase();
    match lower.rfind("/providers/microsoft.resourcehealth/") {
        Some(i) => id.get(..i).unwrap_or(id),
        None => id,
    }
}

// ---------------------------------------------------------------------------------------
// Activity log (REST event, exported record) and activity-log alerts
// ---------------------------------------------------------------------------------------

/// What an alert wrapper adds to the activity-log event inside it.
#[derive(Default)]
struct AlertCtx<'a> {
    alert_id: Option<&'a str>,
    fired: Option<Timestamp>,
    resolved: bool,
    target: Option<&'a str>,
}

fn read_alert(
    obj: &Map<String, Value>,
    raw: &Value,
    path: &str,
    input: &Input<'_>,
) -> Result<Event, NormalizeError> {
    let schema = hint(obj, "schemaId").unwrap_or("");
    let dpath = join(path, "data");
    let data = json::object(get_ci(obj, "data").unwrap_or(&NULL), &dpath)?;
    if schema.eq_ignore_ascii_case("Microsoft.Insights/activityLogs") {
        let cpath = join(&dpath, "context");
        let context = json::object(get_ci(data, "context").unwrap_or(&NULL), &cpath)?;
        let apath = join(&cpath, "activityLog");
        let al = json::object(get_ci(context, "activityLog").unwrap_or(&NULL), &apath)?;
        let ctx = AlertCtx {
            resolved: hint(data, "status").is_some_and(|s| norm(s) == "resolved"),
            ..AlertCtx::default()
        };
        read_activity_log(al, None, raw, &apath, input, &ctx)
    } else if norm(schema) == "azuremonitorcommonalertschema" {
        let epath = join(&dpath, "essentials");
        let essentials = match get_ci(data, "essentials") {
            None | Some(Value::Null) => None,
            Some(v) => Some(json::object(v, &epath)?),
        };
        if let Some(svc) = essentials.and_then(|e| hint(e, "monitoringService")) {
            if norm(svc) != "resourcehealth" {
                return Err(wrong(format!(
                    "a common-schema alert from monitoring service \"{}\", not Resource Health",
                    quote(svc)
                )));
            }
        }
        let cpath = join(&dpath, "alertContext");
        let ac = json::object(get_ci(data, "alertContext").unwrap_or(&NULL), &cpath)?;
        let mut ctx = AlertCtx::default();
        if let Some(e) = essentials {
            ctx.alert_id = str_field(e, &["alertId"], &epath)?;
            ctx.fired = time_field(e, &["firedDateTime"], &epath)?;
            // Activity-log alerts are stateless (always Fired); honour Resolved if it comes.
            ctx.resolved = hint(e, "monitorCondition").is_some_and(|s| norm(s) == "resolved");
            ctx.target = match get_ci(e, "alertTargetIDs") {
                None | Some(Value::Null) => None,
                Some(v) => {
                    let tpath = join(&epath, "alertTargetIDs");
                    let ids = json::array(v, &tpath)?;
                    match ids.first() {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.trim().is_empty() => None,
                        Some(Value::String(s)) => Some(s.as_str()),
                        Some(other) => {
                            return Err(json::shape(&format!("{tpath}[0]"), "a string", other))
                        }
                    }
                }
            };
        }
        read_activity_log(ac, None, raw, &cpath, input, &ctx)
    } else {
        Err(wrong(format!(
            "an alert with schemaId \"{}\" (expected Microsoft.Insights/activityLogs or azureMonitorCommonAlertSchema)",
            quote(schema)
        )))
    }
}

fn read_exported(
    obj: &Map<String, Value>,
    raw: &Value,
    path: &str,
    input: &Input<'_>,
) -> Result<Event, NormalizeError> {
    let ppath = join(path, "properties");
    let props = json::object(get_ci(obj, "properties").unwrap_or(&NULL), &ppath)?;
    let epath = join(&ppath, "eventProperties");
    let parsed;
    let ep = match get_ci(props, "eventProperties") {
        Some(Value::String(s)) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|_| NormalizeError::Shape {
                path: epath.clone(),
                expected: "an object or a JSON object in a string".into(),
                found: format!("string \"{}\"", quote(s)),
            })?;
            json::object(&parsed, &epath)?
        }
        Some(v) => json::object(v, &epath)?,
        None => json::object(&NULL, &epath)?,
    };
    if let Some(c) = hint(props, "eventCategory") {
        if norm(c) != "resourcehealth" {
            return Err(wrong(format!(
                "an exported activity-log record of category \"{}\", not ResourceHealth",
                quote(c)
            )));
        }
    }
    read_activity_log(
        obj,
        Some((ep, epath.as_str())),
        raw,
        path,
        input,
        &AlertCtx::default(),
    )
}

/// An activity-log event: `ev` is the event (REST, webhook, alert context or exported record);
/// `health` is where its health properties are when not in `ev.properties` (exported records).
fn read_activity_log(
    ev: &Map<String, Value>,
    health: Option<(&Map<String, Value>, &str)>,
    raw: &Value,
    path: &str,
    input: &Input<'_>,
    ctx: &AlertCtx<'_>,
) -> Result<Event, NormalizeError> {
    check_resource_health_category(ev)?;
    let own_ppath = join(path, "properties");
    let (props, ppath): (Option<&Map<String, Value>>, &str) = match health {
        Some((m, p)) => (Some(m), p),
        None => match get_ci(ev, "properties") {
            None | Some(Value::Null) => (None, own_ppath.as_str()),
            Some(v) => (Some(json::object(v, &own_ppath)?), own_ppath.as_str()),
        },
    };
    let empty = Map::new();
    let p = props.unwrap_or(&empty);

    let resolved = ctx.resolved
        || ["status", "resultType"]
            .iter()
            .any(|k| hint(ev, k).is_some_and(|s| norm(s) == "resolved"))
        || hint(p, "stage").is_some_and(|s| norm(s) == "resolved")
        || hint(ev, "operationName").is_some_and(|o| o.to_ascii_lowercase().contains("/resolved/"));

    let given = state_field(p, &["currentHealthStatus", "healthStatus"], ppath)?;
    let state = match given {
        Some(s) => s,
        // Erratum 4: a (stateless, Fired) alert or event that says Resolved is a recovery.
        None if resolved => HealthState::Available,
        None => HealthState::Unknown,
    };
    let previous = state_field(p, &["previousHealthStatus"], ppath)?;

    let title = str_field(p, &["title"], ppath)?;
    let details = str_field(p, &["details"], ppath)?;
    let (annotation, prose) = match details {
        Some(d) if looks_like_annotation(d) => (Some(d), None),
        other => (None, other),
    };
    let summary = match (title, prose) {
        (Some(t), Some(d)) if d != t => Some(format!("{t}: {d}")),
        (Some(t), _) => Some(t.to_string()),
        (None, Some(d)) => Some(d.to_string()),
        (None, None) => None,
    };
    let reason = reason_type(
        p,
        &[
            "cause",
            "healthEventCause",
            "healthEventCategory",
            "context",
            "category",
            "reasonType",
        ],
        ppath,
        annotation,
    )?;
    let occurred = time_field(ev, &["eventTimestamp", "time"], path)?;

    let resource_id = str_field(ev, &["resourceId"], path)?.or(ctx.target);
    let rtype = value_str(ev, "resourceType", path)?;
    let mut resource = resource_from_id(resource_id, rtype, input);
    resource.region = str_field(ev, &["location"], path)?.map(region);

    let health_event_id = str_field(p, &["healthEventId"], ppath)?;
    let vendor = health_event_id
        .or(str_field(ev, &["eventDataId"], path)?)
        .or(ctx.alert_id)
        .or(str_field(ev, &["id"], path)?);
    let id = match vendor {
        Some(v) => format!("{SOURCE}:{v}"),
        None => hash_id(
            SOURCE,
            &[
                "activityLog",
                resource_id.unwrap_or(""),
                value_str(ev, "operationName", path)?.unwrap_or(""),
                state.as_str(),
                title.unwrap_or(""),
                details.unwrap_or(""),
                &occurred.or(ctx.fired).map(rfc3339).unwrap_or_default(),
            ],
        ),
    };
    Ok(event(
        id,
        occurred.or(ctx.fired).unwrap_or(input.observed_at),
        resource,
        Health {
            state,
            previous_state: previous,
            reason_type: reason,
            summary,
            annotation: annotation.map(str::to_string),
            occurred_at: occurred,
            resolution_eta: None,
        },
        raw,
    ))
}

/// Rejects activity-log events of another category (Administrative, ServiceHealth, ...).
fn check_resource_health_category(ev: &Map<String, Value>) -> Result<(), NormalizeError> {
    for key in ["category", "eventSource"] {
        if let Some(c) = hint(ev, key) {
            if !c.trim().is_empty() && norm(c) != "resourcehealth" {
                return Err(wrong(format!(
                    "an activity-log event with {key} \"{}\", not ResourceHealth",
                    quote(c)
                )));
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Event Grid HealthResources
// ---------------------------------------------------------------------------------------

fn read_event_grid(
    obj: &Map<String, Value>,
    raw: &Value,
    path: &str,
    input: &Input<'_>,
) -> Result<Event, NormalizeError> {
    let etype = str_field(obj, &["eventType", "type"], path)?.unwrap_or("");
    let lower = etype.to_ascii_lowercase();
    let dpath = join(path, "data");
    let data = json::object(get_ci(obj, "data").unwrap_or(&NULL), &dpath)?;
    let ipath = join(&dpath, "resourceInfo");
    let info = match get_ci(data, "resourceInfo") {
        None | Some(Value::Null) => None,
        Some(v) => Some(json::object(v, &ipath)?),
    };
    let info_type = info
        .and_then(|i| hint(i, "type"))
        .map(str::to_ascii_lowercase);
    let health_type = lower.contains("healthresources.")
        || info_type
            .as_deref()
            .is_some_and(|t| t.starts_with("microsoft.resourcehealth/"));
    if !health_type {
        return Err(wrong(format!(
            "an Event Grid event of type \"{}\", not a HealthResources event",
            quote(etype)
        )));
    }
    let info = info.ok_or_else(|| NormalizeError::Shape {
        path: ipath.clone(),
        expected: "an object".into(),
        found: "nothing".into(),
    })?;
    let ppath = join(&ipath, "properties");
    let props = json::object(get_ci(info, "properties").unwrap_or(&NULL), &ppath)?;

    let state = state_field(props, &["availabilityState"], &ppath)?.unwrap_or(HealthState::Unknown);
    let previous = state_field(props, &["previousAvailabilityState"], &ppath)?;
    let annotation = str_field(props, &["annotationName"], &ppath)?;
    let summary = str_field(props, &["summary", "reason", "title"], &ppath)?;
    let reason = reason_type(props, PROPERTIES_REASON_KEYS, &ppath, annotation)?;
    let mut occurred = time_field(props, &["occurredTime", "occuredTime"], &ppath)?;
    if occurred.is_none() {
        let opath = join(&dpath, "operationalInfo");
        if let Some(v) = get_ci(data, "operationalInfo").filter(|v| !v.is_null()) {
            occurred = time_field(json::object(v, &opath)?, &["resourceEventTime"], &opath)?;
        }
    }
    let eta = time_field(props, &["resolutionETA"], &ppath)?;
    let envelope_time = time_field(obj, &["eventTime", "time"], path)?;

    let info_id = str_field(info, &["id"], &ipath)?;
    let resource_id = str_field(props, &["targetResourceId"], &ppath)?
        .or(str_field(obj, &["subject"], path)?)
        .or(info_id.map(strip_health_suffix));
    let rtype = str_field(props, &["targetResourceType"], &ppath)?;
    let mut resource = resource_from_id(resource_id, rtype, input);
    resource.region = str_field(props, &["location"], &ppath)?
        .or(str_field(info, &["location"], &ipath)?)
        .map(region);

    let vendor = str_field(obj, &["id"], path)?.or(str_field(info, &["name"], &ipath)?);
    let id = match vendor {
        Some(v) => format!("{SOURCE}:{v}"),
        None => hash_id(
            SOURCE,
            &[
                "eventGrid",
                etype,
                resource_id.unwrap_or(""),
                state.as_str(),
                annotation.unwrap_or(""),
                &occurred.or(envelope_time).map(rfc3339).unwrap_or_default(),
            ],
        ),
    };
    Ok(event(
        id,
        occurred.or(envelope_time).unwrap_or(input.observed_at),
        resource,
        Health {
            state,
            previous_state: previous,
            reason_type: reason,
            summary: summary.map(str::to_string),
            annotation: annotation.map(str::to_string),
            occurred_at: occurred,
            resolution_eta: eta,
        },
        raw,
    ))
}

// ---------------------------------------------------------------------------------------
// Vocabulary: states, reasons, annotations
// ---------------------------------------------------------------------------------------

/// Lower-case with spaces, `_` and `-` removed: "Platform Initiated" == "PlatformInitiated".
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

fn parse_state(s: &str) -> HealthState {
    match norm(s).as_str() {
        "available" => HealthState::Available,
        "degraded" => HealthState::Degraded,
        "unavailable" => HealthState::Unavailable,
        // "unknown" and any value Azure adds later: never read as healthy or as an outage.
        _ => HealthState::Unknown,
    }
}

/// What one free-string reason field says.
#[derive(Clone, Copy, PartialEq)]
enum Says {
    User,
    Planned,
    Unplanned,
    /// Given, but decides nothing ("Platform Initiated", "Not Applicable", "Unknown", new values).
    Nothing,
}

fn classify_reason(s: &str) -> Says {
    match norm(s).as_str() {
        "userinitiated" | "customerinitiated" | "user" | "customer" => Says::User,
        "planned" | "plannedmaintenance" => Says::Planned,
        "unplanned" | "outage" => Says::Unplanned,
        // platforminitiated, vminitiated, notapplicable, notapplicaple (sic), unknown, ...
        _ => Says::Nothing,
    }
}

/// The reason fields of an availabilityStatus's or a HealthResources event's `properties`.
const PROPERTIES_REASON_KEYS: &[&str] = &[
    "reasonType",
    "context",
    "category",
    "healthEventCause",
    "healthEventCategory",
];

/// `reason_type` from the free-string fields `keys` of `obj`, then from the annotation.
/// `None` when no field is given at all (absent, null or "").
fn reason_type(
    obj: &Map<String, Value>,
    keys: &[&str],
    path: &str,
    annotation: Option<&str>,
) -> Result<Option<ReasonType>, NormalizeError> {
    let mut said = Vec::new();
    for key in keys {
        if let Some(s) = str_field(obj, &[*key], path)? {
            said.push(classify_reason(s));
        }
    }
    let decided = if said.contains(&Says::User) {
        Some(ReasonType::UserInitiated)
    } else if said.contains(&Says::Planned) {
        Some(ReasonType::Planned)
    } else if said.contains(&Says::Unplanned) {
        Some(ReasonType::Unplanned)
    } else {
        annotation.and_then(annotation_reason)
    };
    Ok(decided.or(if said.is_empty() {
        None
    } else {
        Some(ReasonType::Unknown)
    }))
}

/// The reason an annotation name implies (DOMAIN.md 2.2 and section 8 fact 10); `None` for
/// names that imply nothing or are not known.
fn annotation_reason(name: &str) -> Option<ReasonType> {
    let n = name.to_ascii_lowercase();
    let n = n.as_str();
    // Customer-initiated control-plane operations, including
    // VirtualMachineRedeployInitiatedByControlPlaneDueToPlannedMaintenance (Customer context
    // despite its name) and the …TrackingId variants.
    if n.contains("initiatedbycontrolplane") {
        return Some(ReasonType::UserInitiated);
    }
    const USER: &[&str] = &[
        "virtualmachinedeallocationinitiated",
        "virtualmachinerestarted",
        "virtualmachinesizechanged",
        "virtualmachineconfigurationupdated",
        "virtualmachineallocated",
    ];
    const PLANNED: &[&str] = &[
        "virtualmachinerebootinitiatedforplannedmaintenance",
        "virtualmachinemigrationinitiatedforplannedmaintenance",
        "virtualmachinehostrebootedforplannedmaintenance",
        "virtualmachineplannedfreezestarted",
        "virtualmachineplannedfreezesucceeded",
        "virtualmachineplannedfreezefailed",
    ];
    const UNPLANNED: &[&str] = &[
        "virtualmachinehostrebootedforrepair",
        "virtualmachinemigrationinitiatedforrepair",
        "virtualmachinehostcrashed",
        "virtualmachinestorageoffline",
        "livemigrationsucceeded",
        "livemigrationfailure",
        "virtualmachinemigrationscheduledfordegradedhardware",
        "virtualmachinescheduledformigrationwithgraceperiod",
        "virtualmachinemigratedduetohardwarefailure",
        "virtualmachinepreempted",
        "virtualmachineprovisioningtimedout",
        "accelnetunhealthy",
        "networkunhealthy",
    ];
    // Families with suffixed variants (…WithRedeployDeadline, …LiveMigrationEligible, …).
    const UNPLANNED_PREFIXES: &[&str] = &[
        "virtualmachinepossiblydegradedduetohardwarefailure",
        "possiblydegradedduetohardwarefailure",
        "virtualmachinescheduledforservicehealing",
    ];
    if USER.contains(&n) {
        Some(ReasonType::UserInitiated)
    } else if PLANNED.contains(&n) {
        Some(ReasonType::Planned)
    } else if UNPLANNED.contains(&n) || UNPLANNED_PREFIXES.iter().any(|p| n.starts_with(p)) {
        Some(ReasonType::Unplanned)
    } else {
        None
    }
}

/// An annotation name (`VirtualMachineHostCrashed`) rather than prose or an opaque id.
fn looks_like_annotation(s: &str) -> bool {
    (6..=200).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars().all(|c| c.is_ascii_alphabetic())
        && s.chars().any(|c| c.is_ascii_lowercase())
}

// ---------------------------------------------------------------------------------------
// Resources
// ---------------------------------------------------------------------------------------

fn resource_from_id(id: Option<&str>, rtype: Option<&str>, input: &Input<'_>) -> Resource {
    let mut r = Resource::default();
    let Some(id) = id.map(str::trim).filter(|s| !s.is_empty()) else {
        r.type_ = rtype.map(canonical_type);
        return r;
    };
    let parsed = parse_arm_id(id);
    r.id = Some(id.to_string());
    r.type_ = rtype
        .map(canonical_type)
        .or((!parsed.type_.is_empty()).then_some(parsed.type_));
    r.name = parsed.name;
    r.scale_set = parsed.scale_set;
    r.availability_set = parsed.availability_set;
    if let (Some(me), Some(name)) = (input.self_name, r.name.as_deref()) {
        r.is_self = Some(me.trim().eq_ignore_ascii_case(name));
    }
    r
}

fn parse_arm_id(id: &str) -> super::azure_id::AzureId {
    super::azure_id::parse(id).unwrap_or_default()
}

/// Well-known types in their canonical casing (alert target ids are lower-case, exported
/// records upper-case); other types are kept as sent.
fn canonical_type(t: &str) -> String {
    super::azure_id::canonical_type(t)
}

/// `East US` -> `eastus`.
fn region(s: &str) -> String {
    norm(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_strings_are_matched_without_case_or_spaces() {
        assert!(matches!(
            classify_reason("Platform Initiated"),
            Says::Nothing
        ));
        assert!(matches!(classify_reason("Customer Initiated"), Says::User));
        assert!(matches!(classify_reason("UserInitiated"), Says::User));
        assert!(matches!(classify_reason("user_initiated"), Says::User));
        assert!(matches!(classify_reason(" planned "), Says::Planned));
        assert!(matches!(classify_reason("UNPLANNED"), Says::Unplanned));
        assert!(matches!(classify_reason("Not Applicaple"), Says::Nothing));
    }

    #[test]
    fn arm_ids_parse_tolerantly() {
        let a = parse_arm_id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.ClassicCompute/virtualMachines /rhctestenvV1PI");
        assert_eq!(a.type_, "Microsoft.ClassicCompute/virtualMachines");
        assert_eq!(a.name.as_deref(), Some("rhctestenvV1PI"));
        // A uniform scale-set VM is named `{scaleSet}_{instanceId}`, as Scheduled Events and the
        // ARM normalizer name it (one parser: `azure_id`).
        let b = parse_arm_id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/virtualMachines/3");
        assert_eq!(
            b.type_,
            "Microsoft.Compute/virtualMachineScaleSets/virtualMachines"
        );
        assert_eq!(b.name.as_deref(), Some("ss_3"));
        assert_eq!(b.scale_set.as_deref(), Some("ss"));
        assert_eq!(parse_arm_id("<resourceId>").name, None);
        assert_eq!(parse_arm_id("/providers/").name, None);
        assert_eq!(parse_arm_id("/a/providers/ns/t").name, None);
    }

    #[test]
    fn health_suffix_is_stripped_case_insensitively() {
        assert_eq!(
            strip_health_suffix(
                "/x/vm/providers/microsoft.RESOURCEHEALTH/availabilityStatuses/current"
            ),
            "/x/vm"
        );
        assert_eq!(strip_health_suffix("/x/vm"), "/x/vm");
        assert_eq!(
            strip_health_suffix("é/providers/Microsoft.ResourceHealth/a"),
            "é"
        );
    }

    #[test]
    fn annotation_table() {
        assert_eq!(
            annotation_reason("VirtualMachineHostCrashed"),
            Some(ReasonType::Unplanned)
        );
        assert_eq!(
            annotation_reason(
                "VirtualMachineRedeployInitiatedByControlPlaneDueToPlannedMaintenance"
            ),
            Some(ReasonType::UserInitiated)
        );
        assert_eq!(
            annotation_reason("PossiblyDegradedDueToHardwareFailureWithRedeployDeadline"),
            Some(ReasonType::Unplanned)
        );
        assert_eq!(annotation_reason("VirtualMachineCrashed"), None);
        assert_eq!(annotation_reason("SomethingNew"), None);
        assert!(looks_like_annotation("VirtualMachineHostCrashed"));
        assert!(!looks_like_annotation(
            "Virtual machine has experienced an unexpected event"
        ));
        assert!(!looks_like_annotation("A80024E1883D37UR8B017591A1BEFCCB"));
        assert!(!looks_like_annotation(
            "a80024e1-883d-37ur-8b01-7591a1befccb"
        ));
    }
}
