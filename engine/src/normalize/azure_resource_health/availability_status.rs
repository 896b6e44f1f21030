//! `availabilityStatuses` REST responses: one status (`…/availabilityStatuses/current`) or an
//! entry of a list, in every api-version's spelling.

use serde_json::{Map, Value};

use super::resource::{region, resource_from_id};
use super::vocabulary::{looks_like_annotation, reason_type, PROPERTIES_REASON_KEYS};
use super::{event, rfc3339, state_field, str_field, time_field, NULL, SOURCE};
use crate::event::{Event, Health, HealthState};
use crate::normalize::json::{self, get_ci, join};
use crate::normalize::{hash_id, Input, NormalizeError};

pub(super) fn read_status(
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

/// Whether a status key (a name or a resource id) is the resource's `current` status, which
/// names no one event.
pub(super) fn is_current(key: &str) -> bool {
    let k = key.trim_end_matches('/');
    k.eq_ignore_ascii_case("current")
        || (k.len() >= 8
            && k.get(k.len() - 8..)
                .is_some_and(|t| t.eq_ignore_ascii_case("/current")))
}

/// The resource id of a Resource Health id: everything before the last
/// `/providers/Microsoft.ResourceHealth/`, case-insensitively.
pub(super) fn strip_health_suffix(id: &str) -> &str {
    let lower = id.to_ascii_lowercase();
    match lower.rfind("/providers/microsoft.resourcehealth/") {
        Some(i) => id.get(..i).unwrap_or(id),
        None => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
