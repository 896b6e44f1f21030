//! The legacy Azure in-VM maintenance endpoint (2015 preview): `/metadata/v1/maintenance`, and
//! its sibling `/metadata/v1/InstanceInfo` for the update and fault domain.
//!
//! `{}` means nothing is coming. `{"EventID", "EventCreationTime"}` means a reboot will begin
//! within about five minutes (no type, no approval, no duration): normalized as a scheduled
//! reboot with `not_before` = creation time + 5 minutes (an inference from the 2015 post). The
//! creation time is the US form `9/15/2015 6:42:51 AM` without a zone (UTC).
//!
//! An InstanceInfo document (`{"ID": "_vm", "UD": "0", "FD": "0"}`) yields no event: it is
//! kept in the [`State`] and enriches later maintenance events with the VM name, update
//! domain and fault domain. Only an object whose keys are exactly `ID`, `UD` and `FD`
//! (case-sensitive, no others) is read as InstanceInfo: other payloads have an `id` too (a
//! Resource Health status, an Event Grid envelope), and must not land in the state. The
//! endpoint only ever describes the VM it runs on, so its events are `is_self`.

use serde::{Deserialize, Serialize};

use super::json::{object, opt_int, opt_str, parse};
use super::{hash_id, time, Input, NormalizeError, NormalizerState};
use crate::event::{
    Event, Initiator, Kind, Maintenance, MaintenanceStatus, MaintenanceType, Resource, Source,
};

const SOURCE: &str = "azure.maintenance_v1";
/// The notice the endpoint gives before the reboot begins.
const NOTICE_S: i64 = 300;

/// What the normalizer remembers: the last InstanceInfo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The VM name (leading underscore removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The update domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_domain: Option<i64>,
    /// The fault domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_domain: Option<i64>,
}

/// The keys of an InstanceInfo document, exactly.
const INSTANCE_INFO_KEYS: [&str; 3] = ["FD", "ID", "UD"];

fn is_instance_info(obj: &serde_json::Map<String, serde_json::Value>) -> bool {
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys == INSTANCE_INFO_KEYS
}

/// Normalizes a `/metadata/v1/maintenance` or `/metadata/v1/InstanceInfo` document.
pub fn normalize(
    input: &Input<'_>,
    state: &mut NormalizerState,
) -> Result<Vec<Event>, NormalizeError> {
    let doc = parse(input.payload)?;
    let obj = object(&doc, "$")?;
    let st = &mut state.azure_maintenance_v1;
    if is_instance_info(obj) {
        let name = opt_str(obj, "ID", "$")?.map(|n| n.trim_start_matches('_').to_string());
        // The name is every later notice's `resource.name`: one the history could not keep
        // would have every notice refused until the next InstanceInfo.
        if let Some(n) = &name {
            super::check_remembered("$.ID", n)?;
        }
        let ud = opt_int(obj, "UD", "$")?;
        let fd = opt_int(obj, "FD", "$")?;
        *st = State {
            name,
            update_domain: ud,
            fault_domain: fd,
        };
        return Ok(Vec::new());
    }
    if obj.is_empty() {
        return Ok(Vec::new());
    }
    let created = match opt_str(obj, "EventCreationTime", "$")? {
        Some(t) => time::parse("EventCreationTime", t)?,
        None => None,
    };
    let event_id = opt_str(obj, "EventID", "$")?;
    if created.is_none() && event_id.is_none() {
        let keys: Vec<&str> = obj.keys().map(String::as_str).take(5).collect();
        return Err(NormalizeError::WrongPayload {
            expected: SOURCE,
            reason: format!(
                "expected `{{}}`, EventID/EventCreationTime or exactly ID/UD/FD; found keys {}",
                super::quote(&keys.join(", "))
            ),
        });
    }
    let id = match event_id {
        Some(e) => format!("{SOURCE}:{}", e.to_ascii_lowercase()),
        // No vendor id: hash the creation time, so a re-read is the same event.
        None => hash_id(
            SOURCE,
            &[
                "reboot",
                &created.map(|c| c.to_rfc3339()).unwrap_or_default(),
            ],
        ),
    };
    let not_before =
        created.and_then(|c| c.checked_add_signed(chrono::Duration::seconds(NOTICE_S)));
    Ok(vec![Event {
        id,
        time: created.unwrap_or(input.observed_at),
        source: Source::AzureMaintenanceV1,
        kind: Kind::Maintenance,
        resource: Resource {
            name: st
                .name
                .clone()
                .or_else(|| input.self_name.map(str::to_string)),
            update_domain: st.update_domain,
            fault_domain: st.fault_domain,
            is_self: Some(true),
            ..Resource::default()
        },
        maintenance: Some(Maintenance {
            type_: MaintenanceType::Reboot,
            status: MaintenanceStatus::Scheduled,
            not_before,
            not_after: None,
            duration_s: None,
            initiator: Some(Initiator::Platform),
            description: None,
            vendor_id: event_id.map(str::to_string),
            vendor_type: None,
            incarnation: None,
            inferred: false,
        }),
        health: None,
        failure: None,
        raw: Some(doc.clone()),
    }])
}
