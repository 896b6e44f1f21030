//! Event Grid `HealthResources` events (`AvailabilityStatusChanged`, `ResourceAnnotated`) in the
//! Event Grid and the CloudEvents envelopes.

use serde_json::{Map, Value};

use super::availability_status::{is_current, strip_health_suffix};
use super::resource::{region, resource_from_id};
use super::vocabulary::{reason_type, PROPERTIES_REASON_KEYS};
use super::{event, hint, rfc3339, state_field, str_field, time_field, wrong, NULL, SOURCE};
use crate::event::{Event, Health, HealthState};
use crate::normalize::json::{self, get_ci, join};
use crate::normalize::{hash_id, quote, Input, NormalizeError};

pub(super) fn read_event_grid(
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

    // The availability status (or annotation) the event is about names it: its resource id
    // (`…/availabilityStatuses/{event-id}`, as the REST API's history lists it, so that both
    // channels give one id) or its name, the event id. The envelope's id is the delivery's,
    // taken only where the resource info names no one event (`current`).
    let info_name = str_field(info, &["name"], &ipath)?;
    let envelope_id = str_field(obj, &["id"], path)?;
    let vendor = info_id
        .or(info_name)
        .filter(|k| !is_current(k))
        .or(envelope_id);
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
