#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Azure Resource Health normalizer beyond its fixtures' snapshots
//! (tests/snapshots_fixtures.rs): the vendor quirks of `docs/protocols.md` "Azure Resource
//! Health", edge cases, and a bounded fuzz.

mod common;

use common::time_like;
use keel_engine::normalize::{normalize, Input, NormalizeError, NormalizerState};
use keel_engine::{Event, Health, HealthState, Kind, ReasonType, Resource, Source, Timestamp};
use proptest::prelude::*;
use serde_json::{json, Value};

const NAME: &str = "azure.resource_health";
const OBSERVED: &str = "2026-01-01T00:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    let path = format!("{}/../policies/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).expect(&path)
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture_bytes(name)).unwrap()
}

fn try_run_at(
    bytes: &[u8],
    observed: &str,
    self_name: Option<&str>,
) -> Result<Vec<Event>, NormalizeError> {
    let mut input = Input::new(bytes, ts(observed));
    if let Some(n) = self_name {
        input = input.self_name(n);
    }
    normalize(NAME, &input, &mut NormalizerState::default())
}

fn try_run(bytes: &[u8]) -> Result<Vec<Event>, NormalizeError> {
    try_run_at(bytes, OBSERVED, None)
}

fn run(bytes: &[u8]) -> Vec<Event> {
    try_run(bytes).expect("normalizes")
}

fn run_json(v: &Value) -> Vec<Event> {
    run(v.to_string().as_bytes())
}

fn one(v: &Value) -> Event {
    let mut evs = run_json(v);
    assert_eq!(evs.len(), 1, "{evs:?}");
    evs.remove(0)
}

fn health(e: &Event) -> &Health {
    assert_eq!(e.kind, Kind::Health);
    assert_eq!(e.source, Source::AzureResourceHealth);
    assert!(e.maintenance.is_none() && e.failure.is_none());
    e.health.as_ref().unwrap()
}

fn wrong_payload(bytes: &[u8]) -> String {
    let err = try_run(bytes).expect_err("expected WrongPayload");
    assert!(
        matches!(err, NormalizeError::WrongPayload { .. }),
        "{err:?}"
    );
    err.to_string()
}

/// A minimal REST status with the given properties.
fn status(props: Value) -> Value {
    json!({
        "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
        "name": "current",
        "type": "Microsoft.ResourceHealth/AvailabilityStatuses",
        "location": "eastus",
        "properties": props
    })
}

/// A Resource Health activity-log event (flat strings, as in alerts).
fn activity_log(props: Value, status: &str) -> Value {
    json!({
        "channels": "Admin, Operation",
        "eventSource": "ResourceHealth",
        "eventTimestamp": "2024-03-01T10:00:00Z",
        "eventDataId": "11111111-2222-3333-4444-555555555555",
        "level": "Informational",
        "operationName": "Microsoft.Resourcehealth/healthevent/Activated/action",
        "properties": props,
        "resourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1",
        "status": status,
        "submissionTimestamp": "2024-03-01T10:01:00Z"
    })
}

fn common_alert(context: Value) -> Value {
    json!({
        "schemaId": "azureMonitorCommonAlertSchema",
        "data": {
            "essentials": {
                "alertId": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/a-1",
                "alertRule": "vm-resource-health",
                "severity": "Sev4",
                "signalType": "Activity Log",
                "monitorCondition": "Fired",
                "monitoringService": "Resource Health",
                "alertTargetIDs": ["/subscriptions/s/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm-1"],
                "firedDateTime": "2024-03-01T10:02:00Z"
            },
            "alertContext": context,
            "customProperties": null
        }
    })
}

fn eg_annotated(props: Value) -> Value {
    json!({
        "id": "eg-annotated-1",
        "source": "/subscriptions/s",
        "subject": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1",
        "data": {
            "resourceInfo": {
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1/providers/Microsoft.ResourceHealth/resourceAnnotations/x",
                "name": "x",
                "type": "Microsoft.ResourceHealth/resourceAnnotations",
                "properties": props
            },
            "operationalInfo": {"resourceEventTime": "2024-03-01T10:00:00Z"},
            "apiVersion": "2022-08-01"
        },
        "type": "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated",
        "specversion": "1.0",
        "time": "2024-03-01T10:00:01Z"
    })
}

// What each fixture normalizes to, field by field, is its snapshot (tests/snapshots_fixtures.rs);
// the tests below write their own payloads for the cases the fixtures do not cover.

// =======================================================================================
// Vendor quirks (docs/protocols.md, "Azure Resource Health")
// =======================================================================================

#[test]
fn occured_time_and_occurred_time_are_both_read() {
    let misspelled = one(&status(
        json!({"availabilityState": "Unavailable", "occuredTime": "2020-01-02T03:04:05Z"}),
    ));
    let correct = one(&status(
        json!({"availabilityState": "Unavailable", "occurredTime": "2020-01-02T03:04:05Z"}),
    ));
    for e in [&misspelled, &correct] {
        assert_eq!(health(e).occurred_at, Some(ts("2020-01-02T03:04:05Z")));
        assert_eq!(e.time, ts("2020-01-02T03:04:05Z"));
    }
    assert_eq!(misspelled.id, correct.id);
    // Also Event Grid's spelling in the REST misspelling and vice versa.
    let mut eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    let props = eg["data"]["resourceInfo"]["properties"]
        .as_object_mut()
        .unwrap();
    let t = props.remove("occurredTime").unwrap();
    props.insert("occuredTime".into(), t);
    eg["data"]["operationalInfo"]["resourceEventTime"] = json!("2000-01-01T00:00:00Z");
    assert_eq!(
        health(&one(&eg)).occurred_at,
        Some(ts("2023-07-24T19:20:37.9245071Z"))
    );
}

#[test]
fn recently_resolved_state_2015_and_all_key_spellings() {
    let variants = [
        // 2015-01-01
        (
            "recentlyResolvedState",
            "unavailableOccurredTime",
            "unavailabilitySummary",
        ),
        // 2020-05-01
        (
            "recentlyResolved",
            "unavailableOccurredTime",
            "unavailabilitySummary",
        ),
        // 2025-04-01
        (
            "recentlyResolved",
            "unavailableOccuredTime",
            "unavailableSummary",
        ),
    ];
    for (obj, time_key, summary_key) in variants {
        let mut rr = serde_json::Map::new();
        rr.insert(time_key.into(), json!("2017-02-28T00:48:00Z"));
        rr.insert("resolvedTime".into(), json!("2017-02-28T00:49:00Z"));
        rr.insert(
            summary_key.into(),
            json!("We are sorry your VM is unavailable"),
        );
        let mut props = json!({"availabilityState": "Available", "summary": "Vm is available"});
        props[obj] = Value::Object(rr);
        let e = one(&status(props));
        let h = health(&e);
        assert_eq!(h.state, HealthState::Available, "{obj}");
        assert_eq!(h.previous_state, Some(HealthState::Unavailable), "{obj}");
        assert_eq!(h.summary.as_deref(), Some("Vm is available"));
        // No occuredTime: the resolution is the last change.
        assert_eq!(h.occurred_at, Some(ts("2017-02-28T00:49:00Z")), "{obj}");
    }
    // A malformed time inside it is an error naming the path.
    let e = try_run(
        status(json!({"availabilityState": "Available",
            "recentlyResolvedState": {"unavailableOccurredTime": "yesterday"}}))
        .to_string()
        .as_bytes(),
    )
    .unwrap_err();
    assert!(matches!(e, NormalizeError::Time { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("properties.recentlyResolvedState.unavailableOccurredTime"),
        "{e}"
    );
}

#[test]
fn pascal_case_keys_2015_01_01() {
    let doc = json!({
        "Id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-9/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
        "Name": "current",
        "Type": "Microsoft.ResourceHealth/AvailabilityStatuses",
        "Location": "West Europe",
        "Properties": {
            "AvailabilityState": "UNAVAILABLE",
            "Summary": "We're sorry, your virtual machine isn't available",
            "ReasonType": "Unplanned",
            "OccuredTime": "2015-09-15T06:42:51Z",
            "ReportedTime": "2015-09-15T06:50:00Z",
            "IsArmResource": true,
            "RecommendedActions": [{"Action": "Redeploy", "ActionUrl": "<#Redeploy>", "ActionUrlText": "redeploy"}]
        }
    });
    let e = one(&doc);
    let h = health(&e);
    assert_eq!(h.state, HealthState::Unavailable);
    assert_eq!(h.reason_type, Some(ReasonType::Unplanned));
    assert_eq!(
        h.summary.as_deref(),
        Some("We're sorry, your virtual machine isn't available")
    );
    assert_eq!(h.occurred_at, Some(ts("2015-09-15T06:42:51Z")));
    assert_eq!(e.resource.name.as_deref(), Some("vm-9"));
    assert_eq!(e.resource.region.as_deref(), Some("westeurope"));
    assert!(
        e.id.ends_with("/availabilityStatuses/current@2015-09-15T06:42:51Z"),
        "{}",
        e.id
    );
}

#[test]
fn empty_reason_type_is_not_given() {
    let e = one(&status(
        json!({"availabilityState": "Unknown", "reasonType": ""}),
    ));
    assert_eq!(health(&e).reason_type, None);
    let e = one(&status(
        json!({"availabilityState": "Unknown", "reasonType": "   ", "context": null}),
    ));
    assert_eq!(health(&e).reason_type, None);
    // Given but undecided is `unknown`, not absent.
    let e = one(&status(
        json!({"availabilityState": "Unknown", "reasonType": "Unknown"}),
    ));
    assert_eq!(health(&e).reason_type, Some(ReasonType::Unknown));
}

#[test]
fn stateless_alert_fired_with_status_resolved_is_available() {
    // The recovery: monitorCondition stays Fired; the event says Resolved.
    let recovered = one(&common_alert(json!({
        "eventSource": "ResourceHealth",
        "eventTimestamp": "2024-03-01T11:00:00Z",
        "eventDataId": "recovery-1",
        "operationName": "Microsoft.Resourcehealth/healthevent/Resolved/action",
        "properties": {"title": "Virtual Machine is available", "currentHealthStatus": "Available",
                       "previousHealthStatus": "Unavailable", "type": "Downtime", "cause": "PlatformInitiated"},
        "status": "Resolved"
    })));
    let h = health(&recovered);
    assert_eq!(h.state, HealthState::Available);
    assert_eq!(h.previous_state, Some(HealthState::Unavailable));
    assert_eq!(recovered.id, "azure.resource_health:recovery-1");

    // Resolved with no health status at all: still a recovery.
    let bare = one(&common_alert(json!({
        "eventSource": "ResourceHealth",
        "eventTimestamp": "2024-03-01T11:00:00Z",
        "eventDataId": "recovery-2",
        "operationName": "Microsoft.Resourcehealth/healthevent/Activated/action",
        "properties": {"title": "Health event resolved"},
        "status": "Resolved"
    })));
    assert_eq!(health(&bare).state, HealthState::Available);

    // The legacy webhook: data.status is "Activated" even for a recovery.
    let mut webhook = fixture_json("azure-activity-log-alert-webhook-resourcehealth.json");
    let al = &mut webhook["data"]["context"]["activityLog"];
    al["status"] = json!("Resolved");
    al["properties"] = json!({"title": "Virtual Machine health status changed to available"});
    assert_eq!(health(&one(&webhook)).state, HealthState::Available);

    // The resolved operation name alone, and properties.stage (schema-sample property set).
    let by_op = one(&json!({
        "eventDataId": "op-resolved", "category": {"value": "ResourceHealth"},
        "operationName": {"value": "Microsoft.Resourcehealth/healthevent/Resolved/action"},
        "properties": {"title": "resolved"}
    }));
    assert_eq!(health(&by_op).state, HealthState::Available);
    let by_stage = one(&json!({
        "eventDataId": "stage-resolved", "category": {"value": "ResourceHealth"},
        "properties": {"stage": "Resolved", "title": "resolved"}
    }));
    assert_eq!(health(&by_stage).state, HealthState::Available);

    // A fired alert whose event is still Active stays what it says.
    let fixture = run(&fixture_bytes(
        "azure-alert-common-schema-resourcehealth-user-stop.json",
    ))
    .remove(0);
    assert_eq!(health(&fixture).state, HealthState::Unavailable);
}

#[test]
fn resolved_never_turns_an_explicit_unknown_into_available() {
    let e = one(&common_alert(activity_log(
        json!({"currentHealthStatus": "Unknown"}),
        "Resolved",
    )));
    assert_eq!(health(&e).state, HealthState::Unknown);
}

#[test]
fn value_objects_and_flat_strings_read_the_same() {
    let flat = json!({
        "eventDataId": "e-1",
        "category": "ResourceHealth",
        "eventTimestamp": "2024-03-01T10:00:00Z",
        "operationName": "Microsoft.Resourcehealth/healthevent/Activated/action",
        "resourceType": "Microsoft.Compute/virtualMachines",
        "resourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-1",
        "status": "Active",
        "properties": {"title": "down", "currentHealthStatus": "Unavailable", "previousHealthStatus": "Available", "cause": "PlatformInitiated", "type": "Downtime"}
    });
    let mut objects = flat.clone();
    for k in ["category", "operationName", "resourceType", "status"] {
        let v = objects[k].clone();
        objects[k] = json!({"value": v, "localizedValue": "localized"});
    }
    let (a, b) = (one(&flat), one(&objects));
    assert_eq!(a.id, b.id);
    assert_eq!(a.health, b.health);
    assert_eq!(a.resource, b.resource);
    assert_eq!(
        a.resource.type_.as_deref(),
        Some("Microsoft.Compute/virtualMachines")
    );
}

#[test]
fn both_activity_log_property_sets() {
    let current = one(&activity_log(
        json!({"currentHealthStatus": "Degraded", "previousHealthStatus": "Available", "type": "Degraded", "cause": "PlatformInitiated"}),
        "Active",
    ));
    assert_eq!(health(&current).state, HealthState::Degraded);
    assert_eq!(
        health(&current).previous_state,
        Some(HealthState::Available)
    );
    let schema = one(&activity_log(
        json!({"stage": "Active", "healthStatus": "Degraded", "healthEventType": "Degraded",
               "healthEventCause": "PlatformInitiated", "healthEventCategory": "Planned"}),
        "Active",
    ));
    assert_eq!(health(&schema).state, HealthState::Degraded);
    assert_eq!(health(&schema).reason_type, Some(ReasonType::Planned));
}

#[test]
fn event_grid_both_envelopes_and_batches() {
    // AvailabilityStatusChanged rewrapped as a CloudEvent, ResourceAnnotated as an Event Grid event.
    let eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    let cloud = json!({
        "id": eg["id"], "source": eg["topic"], "subject": eg["subject"], "data": eg["data"],
        "type": eg["eventType"], "specversion": "1.0", "time": eg["eventTime"]
    });
    let ce = fixture_json("azure-eventgrid-health-resource-annotated.json");
    let grid = json!({
        "id": ce["id"], "topic": ce["source"], "subject": ce["subject"], "data": ce["data"],
        "eventType": ce["type"], "dataVersion": "1", "metadataVersion": "1", "eventTime": ce["time"]
    });
    let a = one(&cloud);
    let b = one(&grid);
    let mut a0 = run(&fixture_bytes(
        "azure-eventgrid-health-availability-status-changed.json",
    ))
    .remove(0);
    let mut b0 = run(&fixture_bytes(
        "azure-eventgrid-health-resource-annotated.json",
    ))
    .remove(0);
    a0.raw = a.raw.clone();
    b0.raw = b.raw.clone();
    assert_eq!(a, a0);
    assert_eq!(b, b0);

    // Event Grid delivers arrays.
    let batch = run_json(&json!([eg, ce]));
    assert_eq!(batch.len(), 2);
    assert_eq!(
        batch[0].id,
        "azure.resource_health:/subscriptions/{subscription-id}/resourceGroups/{rg-name}/providers/Microsoft.Compute/virtualMachines/{vm-name}/providers/Microsoft.ResourceHealth/availabilityStatuses/{event-id}"
    );
    assert_eq!(
        batch[1].id,
        "azure.resource_health:/subscriptions/{subscription-id}/resourceGroups/{rg-name}/providers/Microsoft.Compute/virtualMachines/{vm-name}/providers/Microsoft.ResourceHealth/resourceAnnotations/{event-id}"
    );
    assert_eq!(batch[1].raw.as_ref(), Some(&ce));
    assert!(run_json(&json!([])).is_empty());
}

#[test]
fn event_grid_time_falls_back_to_operational_info_then_envelope() {
    let mut eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    eg["data"]["resourceInfo"]["properties"]["occurredTime"] = Value::Null;
    eg["data"]["operationalInfo"]["resourceEventTime"] = json!("2023-07-24T19:00:00Z");
    let e = one(&eg);
    assert_eq!(health(&e).occurred_at, Some(ts("2023-07-24T19:00:00Z")));
    eg["data"]["operationalInfo"] = Value::Null;
    let e = one(&eg);
    assert_eq!(health(&e).occurred_at, None);
    assert_eq!(e.time, ts("2023-07-24T19:20:37.9245071Z"));
}

#[test]
fn alert_quirks_numeric_enums_and_signal_type_spelling() {
    let mut alert = common_alert(activity_log(
        json!({"currentHealthStatus": "Unavailable", "details": null}),
        "Active",
    ));
    alert["data"]["essentials"]["signalType"] = json!("ActivityLog");
    let ctx = &mut alert["data"]["alertContext"];
    ctx["channels"] = json!(1);
    ctx["level"] = json!(3);
    ctx["Activity Log Event Description"] = json!("");
    let e = one(&alert);
    assert_eq!(health(&e).state, HealthState::Unavailable);
    assert_eq!(
        e.id,
        "azure.resource_health:11111111-2222-3333-4444-555555555555"
    );
}

#[test]
fn exported_diagnostic_record_carries_the_annotation_in_details() {
    let record = json!({
        "time": "2024-04-02T08:15:30.1234567Z",
        "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM-7",
        "operationName": "Microsoft.Resourcehealth/healthevent/Updated/action",
        "resultType": "Updated",
        "category": "ResourceHealth",
        "properties": {"eventCategory": "ResourceHealth", "eventProperties": {
            "title": "Starting", "details": "VirtualMachineStartInitiatedByControlPlane",
            "currentHealthStatus": "Unavailable", "previousHealthStatus": "Unknown",
            "type": "Downtime", "cause": "UserInitiated"}}
    });
    let e = try_run_at(record.to_string().as_bytes(), OBSERVED, Some("vm-7"))
        .unwrap()
        .remove(0);
    assert_eq!(e.time, ts("2024-04-02T08:15:30.1234567Z"));
    assert_eq!(
        e.resource,
        Resource {
            id: Some("/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/VM-7".into()),
            name: Some("VM-7".into()),
            type_: Some("Microsoft.Compute/virtualMachines".into()),
            is_self: Some(true),
            ..Resource::default()
        }
    );
    assert_eq!(
        *health(&e),
        Health {
            state: HealthState::Unavailable,
            previous_state: Some(HealthState::Unknown),
            reason_type: Some(ReasonType::UserInitiated),
            summary: Some("Starting".into()),
            annotation: Some("VirtualMachineStartInitiatedByControlPlane".into()),
            occurred_at: Some(ts("2024-04-02T08:15:30.1234567Z")),
            resolution_eta: None,
        }
    );
    // No vendor id: a content hash with the record's own time as epoch.
    assert!(e.id.starts_with("azure.resource_health:"));
    assert_eq!(e.id.len(), "azure.resource_health:".len() + 16);
    let again = try_run_at(record.to_string().as_bytes(), "2030-05-05T00:00:00Z", None)
        .unwrap()
        .remove(0);
    assert_eq!(again.id, e.id, "observation time never enters the id");
    let mut later = record.clone();
    later["time"] = json!("2024-04-09T08:15:30Z");
    assert_ne!(
        one(&later).id,
        e.id,
        "next week's identical record is a new event"
    );

    // eventProperties as a JSON string, inside a `records` batch (storage / Event Hubs export).
    let mut stringly = record.clone();
    stringly["properties"]["eventProperties"] =
        json!(record["properties"]["eventProperties"].to_string());
    let evs = run_json(&json!({"records": [stringly]}));
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].health, e.health);
    assert_eq!(evs[0].id, e.id);
}

#[test]
fn activity_log_rest_list_gives_one_event_per_entry() {
    let a = fixture_json("azure-activity-log-resourcehealth-activated.json");
    let mut b = a.clone();
    b["eventDataId"] = json!("second");
    b["properties"]["healthStatus"] = json!("Available");
    let evs = run_json(&json!({"value": [a, b], "nextLink": "https://management.azure.com/next"}));
    assert_eq!(evs.len(), 2);
    assert_eq!(health(&evs[0]).state, HealthState::Unavailable);
    assert_eq!(health(&evs[1]).state, HealthState::Available);
    assert_eq!(evs[1].id, "azure.resource_health:second");
}

// =======================================================================================
// States, reasons, annotations
// =======================================================================================

#[test]
fn states_are_case_insensitive_and_unknown_is_never_available_or_an_outage() {
    for (given, want) in [
        ("Available", HealthState::Available),
        ("available", HealthState::Available),
        ("DEGRADED", HealthState::Degraded),
        ("unavailable", HealthState::Unavailable),
        ("Unknown", HealthState::Unknown),
        // A value Azure adds later.
        ("PartiallyAvailable", HealthState::Unknown),
        ("", HealthState::Unknown),
    ] {
        let e = one(&status(json!({"availabilityState": given})));
        assert_eq!(health(&e).state, want, "{given:?}");
    }
    // null ("an availability impacting event") and absent: unknown.
    assert_eq!(
        health(&one(&status(json!({"availabilityState": null})))).state,
        HealthState::Unknown
    );
    let e = one(
        &json!({"type": "Microsoft.ResourceHealth/AvailabilityStatuses", "properties": {"summary": "x"}}),
    );
    assert_eq!(health(&e).state, HealthState::Unknown);
    // An activity-log event without a health status is not an outage either.
    let e = one(&activity_log(json!({"title": "something"}), "Active"));
    assert_eq!(health(&e).state, HealthState::Unknown);
}

#[test]
fn reason_strings_go_through_a_lowercase_space_stripped_table() {
    let cases = [
        (
            json!({"context": "Platform Initiated", "category": "Planned"}),
            Some(ReasonType::Planned),
        ),
        (
            json!({"context": "PlatformInitiated", "category": "unplanned"}),
            Some(ReasonType::Unplanned),
        ),
        (
            json!({"reasonType": "UserInitiated"}),
            Some(ReasonType::UserInitiated),
        ),
        (
            json!({"context": "Customer Initiated", "category": "Not Applicable"}),
            Some(ReasonType::UserInitiated),
        ),
        (
            json!({"context": "Platform initiated", "category": "Not Applicaple"}),
            Some(ReasonType::Unknown),
        ),
        (
            json!({"context": "VM Initiated", "category": "Not Applicable"}),
            Some(ReasonType::Unknown),
        ),
        (
            json!({"healthEventCause": "PlatformInitiated", "healthEventCategory": "Planned"}),
            Some(ReasonType::Planned),
        ),
        (json!({"reasonType": "Outage"}), Some(ReasonType::Unplanned)),
        (
            json!({"reasonType": "SomethingNew"}),
            Some(ReasonType::Unknown),
        ),
        (json!({}), None),
        // User-initiated beats planned.
        (
            json!({"reasonType": "Planned", "healthEventCause": "UserInitiated"}),
            Some(ReasonType::UserInitiated),
        ),
        (
            json!({"context": "Customer Initiated", "category": "Planned"}),
            Some(ReasonType::UserInitiated),
        ),
    ];
    for (mut props, want) in cases {
        props["availabilityState"] = json!("Unavailable");
        let e = one(&status(props.clone()));
        assert_eq!(health(&e).reason_type, want, "{props}");
    }
}

#[test]
fn annotation_table_gives_the_reason_only_when_nothing_else_does() {
    let cases = [
        (
            "VirtualMachineRebootInitiatedForPlannedMaintenance",
            Some(ReasonType::Planned),
        ),
        (
            "VirtualMachineMigrationInitiatedForPlannedMaintenance",
            Some(ReasonType::Planned),
        ),
        ("VirtualMachineHostCrashed", Some(ReasonType::Unplanned)),
        (
            "VirtualMachinePossiblyDegradedDueToHardwareFailureWithRedeployDeadline",
            Some(ReasonType::Unplanned),
        ),
        (
            "VirtualMachineStartInitiatedByControlPlane",
            Some(ReasonType::UserInitiated),
        ),
        (
            "VirtualMachineRedeployInitiatedByControlPlaneDueToPlannedMaintenance",
            Some(ReasonType::UserInitiated),
        ),
        ("VirtualMachineSomethingBrandNew", None),
    ];
    for (name, want) in cases {
        let e = one(&eg_annotated(
            json!({"annotationName": name, "summary": "s"}),
        ));
        assert_eq!(health(&e).annotation.as_deref(), Some(name));
        assert_eq!(health(&e).reason_type, want, "{name}");
    }
    // Context/category win over the annotation.
    let e = one(&eg_annotated(
        json!({"annotationName": "VirtualMachineRebootInitiatedForPlannedMaintenance",
        "context": "Platform Initiated", "category": "Unplanned"}),
    ));
    assert_eq!(health(&e).reason_type, Some(ReasonType::Unplanned));
    // ... but an undecided "Unknown" context does not hide it.
    let e = one(&eg_annotated(
        json!({"annotationName": "VirtualMachineHostCrashed", "context": "Unknown"}),
    ));
    assert_eq!(health(&e).reason_type, Some(ReasonType::Unplanned));
    let e = one(&eg_annotated(
        json!({"annotationName": "VirtualMachineSomethingBrandNew", "context": "Unknown"}),
    ));
    assert_eq!(health(&e).reason_type, Some(ReasonType::Unknown));
    // The summary falls back to the reason.
    let e = one(&eg_annotated(
        json!({"annotationName": "VirtualMachineHostCrashed", "reason": "Host crashed"}),
    ));
    assert_eq!(health(&e).summary.as_deref(), Some("Host crashed"));
    assert_eq!(health(&e).state, HealthState::Unknown);
}

#[test]
fn activity_log_details_is_an_annotation_only_when_it_is_one() {
    let e = one(&activity_log(
        json!({"title": "t", "details": "VirtualMachineHostCrashed", "currentHealthStatus": "Unavailable"}),
        "Active",
    ));
    assert_eq!(
        health(&e).annotation.as_deref(),
        Some("VirtualMachineHostCrashed")
    );
    assert_eq!(health(&e).reason_type, Some(ReasonType::Unplanned));
    assert_eq!(health(&e).summary.as_deref(), Some("t"));
    let e = one(&activity_log(
        json!({"details": "Some prose here", "currentHealthStatus": "Unavailable"}),
        "Active",
    ));
    assert_eq!(health(&e).annotation, None);
    assert_eq!(health(&e).summary.as_deref(), Some("Some prose here"));
}

// =======================================================================================
// Ids, times, resources
// =======================================================================================

#[test]
fn ids_are_stable_across_rereads_and_new_for_a_new_change() {
    for f in [
        "azure-resource-health-unavailable-unplanned.json",
        "azure-activity-log-alert-webhook-resourcehealth.json",
        "azure-eventgrid-health-resource-annotated.json",
    ] {
        let a = try_run_at(&fixture_bytes(f), "2026-01-01T00:00:00Z", None).unwrap();
        let b = try_run_at(&fixture_bytes(f), "2027-06-01T12:00:00Z", None).unwrap();
        assert_eq!(
            a, b,
            "{f}: observed_at must not change anything when the vendor gives times"
        );
    }
    let first = one(&status(
        json!({"availabilityState": "Unavailable", "occuredTime": "2024-01-01T00:00:00Z"}),
    ));
    let next = one(&status(
        json!({"availabilityState": "Available", "occuredTime": "2024-01-01T00:30:00Z"}),
    ));
    assert_ne!(first.id, next.id, "`current` is not an event id by itself");
}

#[test]
fn health_event_id_is_the_vendor_id() {
    let e = one(&status(
        json!({"availabilityState": "Unavailable", "healthEventId": "5f1c0b7e-0000-4000-8000-000000000001",
        "occuredTime": "2024-01-01T00:00:00Z"}),
    ));
    assert_eq!(
        e.id,
        "azure.resource_health:5f1c0b7e-0000-4000-8000-000000000001"
    );
    assert_eq!(health(&e).annotation, None);
    let e = one(&activity_log(
        json!({"healthEventId": "HE-42", "currentHealthStatus": "Unavailable"}),
        "Active",
    ));
    assert_eq!(e.id, "azure.resource_health:HE-42");
}

#[test]
fn without_vendor_times_time_is_observed_at_and_ids_stay_stable() {
    let doc = status(json!({"availabilityState": "Unknown", "summary": "no data"}));
    let a = try_run_at(doc.to_string().as_bytes(), "2026-01-01T00:00:00Z", None)
        .unwrap()
        .remove(0);
    let b = try_run_at(doc.to_string().as_bytes(), "2026-01-02T00:00:00Z", None)
        .unwrap()
        .remove(0);
    assert_eq!(a.time, ts("2026-01-01T00:00:00Z"));
    assert_eq!(b.time, ts("2026-01-02T00:00:00Z"));
    assert_eq!(health(&a).occurred_at, None);
    assert_eq!(a.id, b.id);

    // An alert without eventTimestamp: the fired time.
    let mut al = activity_log(json!({"currentHealthStatus": "Unavailable"}), "Active");
    al.as_object_mut().unwrap().remove("eventTimestamp");
    let e = one(&common_alert(al));
    assert_eq!(e.time, ts("2024-03-01T10:02:00Z"));
    assert_eq!(health(&e).occurred_at, None);
}

#[test]
fn resources_scale_sets_regions_and_self() {
    let mut doc =
        status(json!({"availabilityState": "Available", "occuredTime": "2024-01-01T00:00:00Z"}));
    doc["id"] = json!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-ss/virtualMachines/7/providers/Microsoft.ResourceHealth/availabilityStatuses/current");
    doc["location"] = json!("East US 2");
    let e = try_run_at(doc.to_string().as_bytes(), OBSERVED, Some("other"))
        .unwrap()
        .remove(0);
    assert_eq!(
        e.resource,
        Resource {
            id: Some("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/web-ss/virtualMachines/7".into()),
            // `{scaleSet}_{instanceId}`, as Scheduled Events and the ARM normalizer name it.
            name: Some("web-ss_7".into()),
            type_: Some("Microsoft.Compute/virtualMachineScaleSets/virtualMachines".into()),
            region: Some("eastus2".into()),
            scale_set: Some("web-ss".into()),
            is_self: Some(false),
            ..Resource::default()
        }
    );
    // The instance metadata names this VM `web-ss_7` too: it is this host.
    let e = try_run_at(doc.to_string().as_bytes(), OBSERVED, Some("web-ss_7"))
        .unwrap()
        .remove(0);
    assert_eq!(e.resource.is_self, Some(true));
}

#[test]
fn the_registry_reads_it() {
    let info = keel_engine::normalize::NORMALIZERS
        .iter()
        .find(|n| n.name == NAME)
        .unwrap();
    assert!(info.reads.contains("Resource Health"));
}

// =======================================================================================
// Errors
// =======================================================================================

#[test]
fn resource_health_flat_error_body_is_a_wrong_payload_naming_the_code() {
    let msg = wrong_payload(
        br#"{"code": "ResourceNotSupported", "message": "The resource type is not supported", "details": "Resource Health supports VMs"}"#,
    );
    assert!(msg.contains("ResourceNotSupported"), "{msg}");
    let err = try_run(br#"{"code": "NotFound", "message": "m", "details": "d"}"#).unwrap_err();
    assert!(
        matches!(
            err,
            NormalizeError::WrongPayload {
                expected: "azure.resource_health",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn arm_error_envelope_is_a_wrong_payload_naming_the_code() {
    let msg = wrong_payload(
        br#"{"error": {"code": "AuthorizationFailed", "message": "The client does not have authorization", "details": []}}"#,
    );
    assert!(msg.contains("AuthorizationFailed"), "{msg}");
    let msg = wrong_payload(br#"{"value": [{"error": {"code": "InternalServerError"}}]}"#);
    assert!(
        msg.contains("InternalServerError") && msg.contains("value[0]"),
        "{msg}"
    );
    // Hostile text in the code is escaped.
    let msg = wrong_payload(br#"{"error": {"code": "X\u001b[31mY"}}"#);
    assert!(!msg.contains('\u{1b}'), "{msg:?}");
}

#[test]
fn other_payloads_are_wrong_payloads() {
    for (doc, needle) in [
        (
            json!({"schemaId": "AzureMonitorMetricAlert", "data": {}}),
            "AzureMonitorMetricAlert",
        ),
        (
            json!({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {"monitoringService": "Platform"}, "alertContext": {}}}),
            "Platform",
        ),
        (
            json!({"eventDataId": "x", "category": {"value": "Administrative"}, "operationName": {"value": "Microsoft.Compute/virtualMachines/write"}, "properties": {}}),
            "Administrative",
        ),
        (
            json!({"schemaId": "Microsoft.Insights/activityLogs", "data": {"status": "Activated", "context": {"activityLog": {"eventSource": "ServiceHealth", "properties": {}}}}}),
            "ServiceHealth",
        ),
        (
            json!({"id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent", "data": {"validationCode": "x"}, "eventTime": "2024-01-01T00:00:00Z"}),
            "SubscriptionValidationEvent",
        ),
        (
            json!({"id": "1", "type": "Microsoft.ResourceNotifications.MaintenanceResources.ScheduledEventEmitted", "specversion": "1.0", "data": {"resourceInfo": {"type": "Microsoft.Maintenance/scheduledevents"}}}),
            "ScheduledEventEmitted",
        ),
        (json!({"hello": "world"}), "no availabilityState"),
        (json!("a string"), "string"),
        (json!(42), "number"),
    ] {
        let msg = wrong_payload(doc.to_string().as_bytes());
        assert!(msg.contains(needle), "{needle}: {msg}");
    }
}

#[test]
fn malformed_input_is_a_typed_error_naming_the_path() {
    let cases: Vec<(Value, &str)> = vec![
        (
            status(json!({"availabilityState": 3})),
            "properties.availabilityState",
        ),
        (
            status(
                json!({"availabilityState": "Available", "occuredTime": "2016-13-45T00:00:00Z"}),
            ),
            "properties.occuredTime",
        ),
        (
            status(json!({"availabilityState": "Available", "summary": ["x"]})),
            "properties.summary",
        ),
        (status(json!([1, 2])), "properties"),
        (
            json!({"value": [status(json!({"availabilityState": "Available"})), status(json!({"availabilityState": "Available", "resolutionETA": "soon"}))]}),
            "value[1].properties.resolutionETA",
        ),
        (json!({"value": [17]}), "value[0]"),
        (json!({"value": [{"value": []}]}), "value[0]"),
        (json!({"value": [{"foo": 1}]}), "value[0]"),
        (json!([{"value": []}]), "[0]"),
        (common_alert(json!("not an object")), "data.alertContext"),
        (
            json!({"schemaId": "azureMonitorCommonAlertSchema", "data": {"essentials": {"alertTargetIDs": [5]}, "alertContext": {}}}),
            "data.essentials.alertTargetIDs[0]",
        ),
        (
            json!({"schemaId": "Microsoft.Insights/activityLogs", "data": {"context": {}}}),
            "data.context.activityLog",
        ),
        (
            activity_log(json!({"currentHealthStatus": {"value": 1}}), "Active"),
            "properties.currentHealthStatus",
        ),
        (
            {
                let mut a = activity_log(json!({}), "Active");
                a["eventTimestamp"] = json!("not a time");
                a
            },
            "eventTimestamp",
        ),
        (
            {
                let mut eg =
                    fixture_json("azure-eventgrid-health-availability-status-changed.json");
                eg["data"]["resourceInfo"] = json!("x");
                eg
            },
            "data.resourceInfo",
        ),
        (
            json!({"time": "2024-01-01T00:00:00Z", "category": "ResourceHealth", "properties": {"eventProperties": "{not json"}}),
            "properties.eventProperties",
        ),
    ];
    for (doc, path) in cases {
        let err = try_run(doc.to_string().as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                NormalizeError::Shape { .. } | NormalizeError::Time { .. }
            ),
            "{doc}: {err:?}"
        );
        assert!(err.to_string().contains(path), "{path}: {err}");
    }
}

#[test]
fn bytes_that_are_not_json() {
    assert!(matches!(
        try_run(b"{\"value\": ["),
        Err(NormalizeError::Json { .. })
    ));
    assert!(matches!(
        try_run(b"\xff\xfe"),
        Err(NormalizeError::NotUtf8 { .. })
    ));
    // An HTTP error page is named as such.
    let input = Input::new(b"<html>503 Service Unavailable</html>", ts(OBSERVED)).http_status(503);
    let err = normalize(NAME, &input, &mut NormalizerState::default()).unwrap_err();
    assert!(
        matches!(err, NormalizeError::WrongPayload { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("503"), "{err}");
    // Empty lists are fine.
    assert!(run(br#"{"value": [], "nextLink": null}"#).is_empty());
}

// =======================================================================================
// Fuzz
// =======================================================================================

const FIXTURES: &[&str] = &[
    "azure-resource-health-available-recently-resolved.json",
    "azure-resource-health-degraded-hardware.json",
    "azure-resource-health-history-service-impacting.json",
    "azure-resource-health-history-unknown-2018.json",
    "azure-resource-health-unavailable-planned-host-update-2018.json",
    "azure-resource-health-unavailable-planned-redeploy-2018.json",
    "azure-resource-health-unavailable-unplanned.json",
    "azure-resource-health-unknown-vm.json",
    "azure-activity-log-resourcehealth-activated.json",
    "azure-activity-log-alert-webhook-resourcehealth.json",
    "azure-alert-common-schema-resourcehealth-user-stop.json",
    "azure-eventgrid-health-availability-status-changed.json",
    "azure-eventgrid-health-resource-annotated.json",
];

fn check(bytes: &[u8]) {
    match try_run(bytes) {
        Ok(evs) => {
            for e in evs {
                assert_eq!(e.kind, Kind::Health);
                assert_eq!(e.source, Source::AzureResourceHealth);
                assert!(e.health.is_some() && e.raw.is_some());
                assert!(e.id.starts_with("azure.resource_health:"));
                // Every event survives its own JSON round trip.
                let text = serde_json::to_string(&e).unwrap();
                assert_eq!(Event::from_json_str(&text).unwrap(), e);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        prop::sample::select(vec![
            "",
            "Available",
            "Unavailable",
            "Degraded",
            "Unknown",
            "Resolved",
            "Active",
            "Planned",
            "UserInitiated",
            "Platform Initiated",
            "2024-01-01T00:00:00Z",
            "9/15/2015 6:42:51 AM",
            "/subscriptions/s/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
            "ResourceHealth",
            "azureMonitorCommonAlertSchema",
            "Microsoft.Insights/activityLogs",
            "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated",
            "current",
            "/providers/",
        ])
        .prop_map(|s| json!(s)),
        "\\PC{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "properties",
                        "availabilityState",
                        "occuredTime",
                        "value",
                        "data",
                        "error",
                        "code",
                        "message",
                        "schemaId",
                        "essentials",
                        "alertContext",
                        "eventDataId",
                        "status",
                        "resourceInfo",
                        "eventType",
                        "type",
                        "id",
                        "eventProperties",
                        "recentlyResolved",
                        "currentHealthStatus",
                        "x",
                    ]),
                    inner,
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// Replaces every string of `doc` that looks like a time (starts with a four-digit year, or
/// is the legacy `M/D/YYYY` form) with `with`.
fn replace_times(doc: &mut Value, with: &str) {
    match doc {
        Value::String(s) => {
            let b = s.as_bytes();
            let iso = b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-';
            let us = s
                .split(' ')
                .next()
                .is_some_and(|d| d.split('/').count() == 3);
            if iso || us {
                *s = with.to_string();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|v| replace_times(v, with)),
        Value::Object(o) => o.values_mut().for_each(|v| replace_times(v, with)),
        _ => {}
    }
}

/// Replaces the `n`-th node (pre-order) of `doc` with `with`.
fn replace_nth(doc: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *doc = with.clone();
        return true;
    }
    *n -= 1;
    match doc {
        Value::Array(a) => a.iter_mut().any(|v| replace_nth(v, n, with)),
        Value::Object(o) => o.values_mut().any(|v| replace_nth(v, n, with)),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn byte_mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let mut bytes = fixture_bytes(FIXTURES[which]);
        for (at, b, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = b,
                1 => { bytes.remove(i); }
                _ => bytes.insert(i, b),
            }
        }
        check(&bytes);
    }

    #[test]
    fn value_mutated_fixtures_never_panic(
        which in 0..FIXTURES.len(),
        node in 0usize..200,
        with in arb_json(),
    ) {
        let mut doc = fixture_json(FIXTURES[which]);
        let mut n = node;
        replace_nth(&mut doc, &mut n, &with);
        check(doc.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_json_never_panics(doc in arb_json()) {
        check(doc.to_string().as_bytes());
    }

    /// Every time of every fixture replaced with an arbitrary one: every event round-trips.
    #[test]
    fn arbitrary_times_in_fixtures_round_trip(which in 0..FIXTURES.len(), t in time_like()) {
        let mut doc = fixture_json(FIXTURES[which]);
        replace_times(&mut doc, &t);
        check(doc.to_string().as_bytes());
    }
}

// =======================================================================================
// cargo-mutants survivors
// =======================================================================================

/// The legacy webhook's own `data.status` says whether the alert is a recovery: Resolved with
/// no health status given is `available`; Activated (the usual value) decides nothing.
#[test]
fn legacy_webhook_data_status_resolved_is_a_recovery_and_activated_is_not() {
    for (data_status, want) in [
        ("Resolved", HealthState::Available),
        ("Activated", HealthState::Unknown),
    ] {
        let mut webhook = fixture_json("azure-activity-log-alert-webhook-resourcehealth.json");
        webhook["data"]["status"] = json!(data_status);
        // The event inside says nothing of its own about being resolved.
        webhook["data"]["context"]["activityLog"]["properties"] =
            json!({"title": "Virtual Machine health event"});
        assert_eq!(health(&one(&webhook)).state, want, "{data_status}");
    }
}

/// A common-schema alert's `monitorCondition` Resolved is a recovery; Fired (what an
/// activity-log alert always says) decides nothing.
#[test]
fn common_alert_monitor_condition_resolved_is_a_recovery_and_fired_is_not() {
    for (condition, want) in [
        ("Resolved", HealthState::Available),
        ("Fired", HealthState::Unknown),
    ] {
        let mut alert = common_alert(activity_log(
            json!({"title": "Virtual Machine health event"}),
            "Active",
        ));
        alert["data"]["essentials"]["monitorCondition"] = json!(condition);
        assert_eq!(health(&one(&alert)).state, want, "{condition}");
    }
}

/// A blank first `alertTargetIDs` entry is no target: without any vendor id, the alert's
/// content-hash id is the one it has without targets (a blank resource id must not make a
/// re-delivery a new event).
#[test]
fn a_blank_alert_target_is_no_target() {
    let alert = |targets: Value| {
        let mut a = common_alert(json!({
            "eventSource": "ResourceHealth",
            "eventTimestamp": "2024-03-01T10:00:00Z",
            "operationName": "Microsoft.Resourcehealth/healthevent/Activated/action",
            "properties": {"title": "Virtual Machine health status changed to unavailable",
                           "currentHealthStatus": "Unavailable"},
            "status": "Active"
        }));
        let e = a["data"]["essentials"].as_object_mut().unwrap();
        e.remove("alertId");
        e.insert("alertTargetIDs".into(), targets);
        one(&a)
    };
    let blank = alert(json!(["  "]));
    let none = alert(json!([]));
    assert_eq!(blank.resource.id, None);
    assert_eq!(blank.id, none.id);
}

/// An activity-log event whose `details` repeats its `title` has that sentence once as its
/// summary, not "title: title".
#[test]
fn details_equal_to_the_title_is_not_repeated_in_the_summary() {
    let t = "Virtual Machine health status changed to unavailable";
    let e = one(&activity_log(
        json!({"title": t, "details": t, "currentHealthStatus": "Unavailable"}),
        "Active",
    ));
    assert_eq!(health(&e).summary.as_deref(), Some(t));
}

/// `recentlyResolved` with any one of its fields says the resource was unavailable before;
/// responses omit the fields they do not have.
#[test]
fn recently_resolved_with_any_one_field_gives_the_previous_state() {
    for rr in [
        json!({"unavailableOccurredTime": "2017-02-28T00:48:00Z"}),
        json!({"resolvedTime": "2017-02-28T00:49:00Z"}),
        json!({"unavailabilitySummary": "We are sorry your VM is unavailable"}),
    ] {
        let e = one(&status(
            json!({"availabilityState": "Available", "recentlyResolved": rr}),
        ));
        assert_eq!(
            health(&e).previous_state,
            Some(HealthState::Unavailable),
            "{rr}"
        );
    }
}

/// Only an `available` status makes `recentlyResolved` a previous `unavailable`: a resource
/// unavailable again has no previous state from an earlier, resolved outage, and an empty
/// `recentlyResolved` says nothing.
#[test]
fn recently_resolved_gives_a_previous_state_only_when_available_and_given() {
    let rr = json!({"unavailableOccurredTime": "2017-02-28T00:48:00Z",
                    "resolvedTime": "2017-02-28T00:49:00Z"});
    let e = one(&status(
        json!({"availabilityState": "Unavailable", "recentlyResolved": rr}),
    ));
    assert_eq!(health(&e).previous_state, None);
    let e = one(&status(
        json!({"availabilityState": "Available", "recentlyResolved": {}}),
    ));
    assert_eq!(health(&e).previous_state, None);
}

/// Without an `id`, a status's `name` identifies it, except the name `current`, which every
/// resource's current status has and so identifies nothing.
#[test]
fn a_status_without_id_is_named_by_its_name_unless_it_is_current() {
    let props = json!({"availabilityState": "Unavailable", "occuredTime": "2024-03-01T10:00:00Z"});
    let named = one(&json!({"name": "ev-42", "properties": props}));
    assert_eq!(named.id, "azure.resource_health:ev-42");
    let current = one(&json!({"name": "current", "properties": props}));
    assert!(
        !current.id.contains("current"),
        "`current` is not an identity: {}",
        current.id
    );
}

/// A body that is not JSON with a success status is a JSON error (the payload is broken),
/// not an HTTP error response.
#[test]
fn a_non_json_body_with_a_success_status_is_a_json_error() {
    let input = Input::new(b"{\"value\": [", ts(OBSERVED)).http_status(200);
    let err = normalize(NAME, &input, &mut NormalizerState::default()).unwrap_err();
    assert!(matches!(err, NormalizeError::Json { .. }), "{err:?}");
}

/// A status carrying a top-level `message` is still a status: only an object with a string
/// `code` and a `message` (and no properties) is Resource Health's flat error body.
#[test]
fn a_status_with_a_message_is_not_an_error_body() {
    let mut s = status(json!({"availabilityState": "Available"}));
    s["message"] = json!("Resource is healthy");
    assert_eq!(health(&one(&s)).state, HealthState::Available);
}

/// A CloudEvent without `specversion` (a relay that dropped it) is still read by its `type`.
#[test]
fn an_event_grid_event_with_only_a_type_is_read() {
    let eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    let bare = json!({"id": eg["id"], "subject": eg["subject"], "data": eg["data"],
                      "type": eg["eventType"], "time": eg["eventTime"]});
    let e = one(&bare);
    assert_eq!(health(&e).state, HealthState::Available);
    assert_eq!(
        e.id,
        "azure.resource_health:/subscriptions/{subscription-id}/resourceGroups/{rg-name}/providers/Microsoft.Compute/virtualMachines/{vm-name}/providers/Microsoft.ResourceHealth/availabilityStatuses/{event-id}"
    );
}

/// Either sign makes an Event Grid event a HealthResources one: the event type, or the
/// resource info's Microsoft.ResourceHealth type (each may be missing).
#[test]
fn event_grid_health_is_told_by_the_event_type_or_the_resource_info_type() {
    let eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    let mut no_info_type = eg.clone();
    no_info_type["data"]["resourceInfo"]
        .as_object_mut()
        .unwrap()
        .remove("type");
    let mut other_event_type = eg.clone();
    other_event_type["eventType"] =
        json!("Microsoft.ResourceNotifications.AvailabilityStatusChanged");
    for doc in [no_info_type, other_event_type] {
        assert_eq!(health(&one(&doc)).state, HealthState::Available, "{doc}");
    }
}

/// An Event Grid health event is named by the availability status it is about (its resource
/// id, as the REST API's history lists the same status, so both channels give one id; else
/// its name, the event id), not by the delivery's envelope id: two deliveries of one change
/// (an Event Grid and a CloudEvents subscription) are one event. A `current` status names no
/// one event: the envelope's id is taken then.
#[test]
fn an_event_grid_health_event_is_named_by_its_status_not_its_delivery() {
    let eg = fixture_json("azure-eventgrid-health-availability-status-changed.json");
    let status = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/providers/Microsoft.ResourceHealth/availabilityStatuses/0b3c2f5e-aaaa-bbbb-cccc-1234567890ab";
    let delivery = |envelope: &str, info_id: Option<&str>, name: Option<&str>| {
        let mut v = eg.clone();
        v["id"] = json!(envelope);
        let info = v["data"]["resourceInfo"].as_object_mut().unwrap();
        match info_id {
            Some(i) => info.insert("id".into(), json!(i)),
            None => info.remove("id"),
        };
        match name {
            Some(n) => info.insert("name".into(), json!(n)),
            None => info.remove("name"),
        };
        one(&v).id
    };
    let want = format!("azure.resource_health:{status}");
    assert_eq!(delivery("env-1", Some(status), Some("0b3c2f5e")), want);
    assert_eq!(delivery("env-2", Some(status), Some("0b3c2f5e")), want);
    assert_eq!(
        delivery("env-3", None, Some("0b3c2f5e-aaaa")),
        "azure.resource_health:0b3c2f5e-aaaa"
    );
    let current = status.replace("0b3c2f5e-aaaa-bbbb-cccc-1234567890ab", "current");
    assert_eq!(
        delivery("env-4", Some(&current), Some("current")),
        "azure.resource_health:env-4"
    );
    // The REST API's history entry for the same status: the same id.
    let rest = json!({"value": [{
        "id": status, "name": "0b3c2f5e-aaaa-bbbb-cccc-1234567890ab",
        "type": "Microsoft.ResourceHealth/AvailabilityStatuses", "location": "westeurope",
        "properties": {"availabilityState": "Available", "occurredTime": "2023-07-24T19:20:37Z"}
    }]});
    assert_eq!(run_json(&rest)[0].id, want);
}
