//! Activity-log `ResourceHealth` events: the REST event (either property set, values flat or
//! `{value, localizedValue}`), the exported diagnostic record (`properties.eventProperties`) and
//! the activity-log alerts that carry one (the legacy webhook and the common alert schema).

use serde_json::{Map, Value};

use super::resource::{region, resource_from_id};
use super::vocabulary::{looks_like_annotation, norm, reason_type};
use super::{event, hint, rfc3339, state_field, str_field, time_field, wrong, NULL, SOURCE};
use crate::event::{Event, Health, HealthState, Timestamp};
use crate::normalize::json::{self, get_ci, join, value_str};
use crate::normalize::{hash_id, quote, Input, NormalizeError};

/// What an alert wrapper adds to the activity-log event inside it.
#[derive(Default)]
pub(super) struct AlertCtx<'a> {
    alert_id: Option<&'a str>,
    fired: Option<Timestamp>,
    resolved: bool,
    target: Option<&'a str>,
}

pub(super) fn read_alert(
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

pub(super) fn read_exported(
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
pub(super) fn read_activity_log(
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
        // a (stateless, Fired) alert or event that says Resolved is a recovery.
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
