#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `aws.imds` normalizer beyond its fixtures' snapshots (tests/snapshots_fixtures.rs): the
//! vendor quirks of `docs/protocols.md` "AWS instance metadata", edge cases, and a bounded fuzz.

mod common;

use chrono::{DateTime, Utc};
use common::{hash_id, time_like};
use keel_engine::normalize::{normalize, Input, NormalizeError, NormalizerState};
use keel_engine::{Event, MaintenanceStatus, MaintenanceType, Source};
use proptest::prelude::*;

const NAME: &str = "aws.imds";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../policies/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn observed() -> DateTime<Utc> {
    ts("2026-04-20T12:00:00Z")
}

fn run(payload: &[u8]) -> Result<Vec<Event>, NormalizeError> {
    normalize(
        NAME,
        &Input::new(payload, observed()),
        &mut NormalizerState::default(),
    )
}

fn run_ok(payload: &[u8]) -> Vec<Event> {
    run(payload).unwrap_or_else(|e| panic!("{e}"))
}

fn one(payload: &[u8]) -> Event {
    let mut evs = run_ok(payload);
    assert_eq!(evs.len(), 1, "{evs:#?}");
    evs.remove(0)
}

// ---- Spot -------------------------------------------------------------------------------

#[test]
fn spot_hibernate_is_stop_and_new_actions_are_unknown() {
    let ev = one(br#"{"action": "hibernate", "time": "2017-09-18T08:22:00Z"}"#);
    let m = ev.maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Stop);
    assert_eq!(m.vendor_type.as_deref(), Some("hibernate"));

    let ev = one(br#"{"action": "evaporate", "time": "2017-09-18T08:22:00Z"}"#);
    let m = ev.maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Unknown);
    assert_eq!(m.vendor_type.as_deref(), Some("evaporate"));
}

#[test]
fn spot_ids_are_stable_on_reread_and_new_for_a_new_time() {
    let a = one(&fixture("aws-spot-instance-action-terminate.json"));
    let b = normalize(
        NAME,
        &Input::new(
            &fixture("aws-spot-instance-action-terminate.json"),
            ts("2030-01-01T00:00:00Z"),
        ),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(a.id, b[0].id, "the observation time never enters the id");
    let c = one(br#"{"action": "terminate", "time": "2017-09-25T08:22:00Z"}"#);
    assert_eq!(
        c.id, "aws.imds:e8072eb56d4cd230",
        "next week's identical notice is a new event"
    );
    assert_ne!(a.id, c.id);
    let d = one(&fixture("aws-spot-instance-action-stop.json"));
    assert_eq!(d.id, "aws.imds:04e4a67bb154702f", "a stop is another event");
    assert_ne!(a.id, d.id);
}

#[test]
fn spot_notice_without_time_is_an_error() {
    for bad in [
        &br#"{"action": "terminate"}"#[..],
        br#"{"action": "terminate", "time": ""}"#,
        br#"{"action": "terminate", "time": 5}"#,
        br#"{"action": "", "time": "2017-09-18T08:22:00Z"}"#,
    ] {
        let e = run(bad).unwrap_err();
        assert!(matches!(e, NormalizeError::Shape { .. }), "{e:?}");
    }
    let e = run(br#"{"action": "terminate", "time": "soon"}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "time"),
        "{e:?}"
    );
}

#[test]
fn termination_time_non_time_value_is_no_notice_only_when_the_path_says_so() {
    // AWS: termination-time "contains a value that is not a time value" when nothing is planned.
    let t = b"GET /latest/meta-data/spot/termination-time HTTP/1.1\nHost: 169.254.169.254\n\nHTTP/1.1 200 OK\nContent-Type: text/plain\n\nnot-scheduled\n";
    assert_eq!(run_ok(t), vec![]);
    // Without the path, text that is not a timestamp is an error.
    let e = run(b"not-scheduled").unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    let e = run(b"2015-13-05T18:02:00Z").unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "spot/termination-time"),
        "{e:?}"
    );
}

#[test]
fn in_vm_payloads_are_about_self_when_the_name_is_known() {
    for f in [
        "aws-spot-instance-action-terminate.json",
        "aws-spot-termination-time.txt",
        "aws-rebalance-recommendation.json",
        "aws-scheduled-events-system-reboot-active.json",
    ] {
        let p = fixture(f);
        let evs = normalize(
            NAME,
            &Input::new(&p, observed()).self_name("web-1"),
            &mut NormalizerState::default(),
        )
        .unwrap();
        assert_eq!(evs.len(), 1, "{f}");
        assert_eq!(evs[0].resource.name.as_deref(), Some("web-1"), "{f}");
        assert_eq!(evs[0].resource.is_self, Some(true), "{f}");
        assert_eq!(evs[0].resource.id, None, "{f}");
    }
}

// ---- Scheduled maintenance ----------------------------------------------------------------

#[test]
fn one_digit_day_layout() {
    let ev = one(
        br#"[{"NotBefore": "5 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "Description": "x",
        "EventId": "instance-event-1", "NotAfter": "5 Jan 2019 9:17:23 GMT", "State": "active"}]"#,
    );
    let m = ev.maintenance.unwrap();
    assert_eq!(m.not_before, Some(ts("2019-01-05T09:00:43Z")));
    assert_eq!(m.not_after, Some(ts("2019-01-05T09:17:23Z")));
}

#[test]
fn history_dedupes_on_event_id_state_and_not_before() {
    let entry = |state: &str, nb: &str| {
        format!(
            r#"{{"NotBefore": "{nb}", "Code": "system-reboot", "Description": "x", "EventId": "instance-event-0d59937288b749b32", "NotAfter": "", "State": "{state}"}}"#
        )
    };
    let doc = format!(
        "[{}, {}, {}, {}]",
        entry("completed", "29 Jan 2019 09:00:43 GMT"),
        entry("completed", "29 Jan 2019 09:00:43 GMT"),
        entry("completed", "30 Jan 2019 09:00:43 GMT"),
        entry("canceled", "29 Jan 2019 09:00:43 GMT"),
    );
    let evs = run_ok(doc.as_bytes());
    let ids: Vec<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "aws.imds:instance-event-0d59937288b749b32/completed/2019-01-29T09:00:43Z",
            "aws.imds:instance-event-0d59937288b749b32/completed/2019-01-30T09:00:43Z",
            "aws.imds:instance-event-0d59937288b749b32/canceled/2019-01-29T09:00:43Z",
        ]
    );
    // A re-read of the same history gives the same ids.
    let again: Vec<String> = run_ok(doc.as_bytes()).into_iter().map(|e| e.id).collect();
    assert_eq!(ids, again);
}

#[test]
fn active_event_id_survives_a_reschedule() {
    let at = |nb: &str| {
        one(format!(
            r#"[{{"NotBefore": "{nb}", "Code": "instance-stop", "EventId": "instance-event-abc", "State": "active"}}]"#
        )
        .as_bytes())
    };
    let a = at("21 Jan 2019 09:00:43 GMT");
    let b = at("23 Jan 2019 10:00:00 GMT");
    assert_eq!(a.id, "aws.imds:instance-event-abc");
    assert_eq!(a.id, b.id);
    assert_eq!(
        b.maintenance.unwrap().not_before,
        Some(ts("2019-01-23T10:00:00Z"))
    );
}

#[test]
fn scheduled_codes_and_states() {
    let doc = |code: &str, state: &str| {
        format!(
            r#"[{{"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "{code}", "EventId": "instance-event-1", "State": "{state}"}}]"#
        )
    };
    for (code, ty) in [
        ("system-reboot", MaintenanceType::Reboot),
        ("instance-reboot", MaintenanceType::Reboot),
        ("system-maintenance", MaintenanceType::HostMaintenance),
        ("instance-stop", MaintenanceType::Stop),
        ("instance-retirement", MaintenanceType::Retire),
        ("instance-teleport", MaintenanceType::Unknown),
    ] {
        let m = one(doc(code, "active").as_bytes()).maintenance.unwrap();
        assert_eq!(m.type_, ty, "{code}");
        assert_eq!(m.vendor_type.as_deref(), Some(code));
    }
    for (state, st, id) in [
        (
            "active",
            MaintenanceStatus::Scheduled,
            "aws.imds:instance-event-1",
        ),
        (
            "completed",
            MaintenanceStatus::Completed,
            "aws.imds:instance-event-1/completed/2019-01-21T09:00:43Z",
        ),
        (
            "canceled",
            MaintenanceStatus::Canceled,
            "aws.imds:instance-event-1/canceled/2019-01-21T09:00:43Z",
        ),
        (
            "cancelled",
            MaintenanceStatus::Canceled,
            "aws.imds:instance-event-1/canceled/2019-01-21T09:00:43Z",
        ),
        (
            "pending",
            MaintenanceStatus::Scheduled,
            "aws.imds:instance-event-1/pending/2019-01-21T09:00:43Z",
        ),
    ] {
        let ev = one(doc("system-reboot", state).as_bytes());
        assert_eq!(ev.maintenance.unwrap().status, st, "{state}");
        assert_eq!(ev.id, id);
    }
    // No Code: not an AWS scheduled event (Code is required; Azure's Scheduled Events entries
    // also have EventId and NotBefore).
    for doc in [
        &br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": "instance-event-1"}]"#[..],
        br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": "instance-event-1", "Code": ""}]"#,
    ] {
        let e = run(doc).unwrap_err();
        assert!(
            matches!(&e, NormalizeError::Shape { path, .. } if path == "[0].Code"),
            "{e:?}"
        );
    }
    // An unknown code is an explicit unknown type, with the raw code.
    let m = one(br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": "instance-event-1", "Code": "instance-hibernate"}]"#)
        .maintenance
        .unwrap();
    assert_eq!(m.type_, MaintenanceType::Unknown);
    assert_eq!(m.vendor_type.as_deref(), Some("instance-hibernate"));
    assert_eq!(m.status, MaintenanceStatus::Scheduled);
}

/// States AWS may add are read as live, and they may be spelled with `-` or `_` (AWS's own codes
/// use dashes): such an entry must not be rejected as hostile.
#[test]
fn new_states_with_dashes_or_underscores_are_live() {
    for state in ["under-review", "in_progress"] {
        let doc = format!(
            r#"[{{"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "Description": "scheduled reboot", "EventId": "instance-event-1", "State": "{state}"}}]"#
        );
        let ev = one(doc.as_bytes());
        assert_eq!(
            ev.maintenance.unwrap().status,
            MaintenanceStatus::Scheduled,
            "{state}"
        );
        assert_eq!(
            ev.id,
            format!("aws.imds:instance-event-1/{state}/2019-01-21T09:00:43Z")
        );
    }
}

#[test]
fn empty_not_before_is_malformed() {
    for doc in [
        &br#"[{"NotBefore": "", "Code": "system-reboot", "EventId": "instance-event-1", "State": "active"}]"#[..],
        br#"[{"Code": "system-reboot", "EventId": "instance-event-1", "State": "active"}]"#,
    ] {
        let e = run(doc).unwrap_err();
        assert!(
            matches!(&e, NormalizeError::Shape { path, .. } if path == "[0].NotBefore"),
            "{e:?}"
        );
    }
    let e = run(br#"[{"NotBefore": "21 Foo 2019 09:00:43 GMT", "EventId": "instance-event-1"}]"#)
        .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "[0].NotBefore"),
        "{e:?}"
    );
    let e =
        run(br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "NotAfter": "later", "EventId": "e"}]"#)
            .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "[0].NotAfter"),
        "{e:?}"
    );
}

#[test]
fn hostile_ids_and_states_are_rejected() {
    let e = run(br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": "a/b c"}]"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "[0].EventId"),
        "{e:?}"
    );
    let e = run(
        br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": "e", "State": "act ive/x"}]"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "[0].State"),
        "{e:?}"
    );
    let e = run(br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "EventId": 7}]"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "[0].EventId"),
        "{e:?}"
    );
    let e = run(br#"[1]"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "[0]"),
        "{e:?}"
    );
}

#[test]
fn entries_without_event_id_get_a_content_hash() {
    let doc = br#"[{"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot", "State": "active"}]"#;
    let ev = one(doc);
    assert_eq!(
        ev.id,
        hash_id(
            "aws.imds",
            &[
                "events/maintenance",
                "system-reboot",
                "active",
                "2019-01-21T09:00:43Z",
                ""
            ]
        )
    );
    assert_eq!(ev.maintenance.unwrap().vendor_id, None);
}

#[test]
fn no_scheduled_events_is_an_empty_array() {
    assert_eq!(run_ok(b"[]"), vec![]);
    assert_eq!(run_ok(b"[ ]\n"), vec![]);
}

// ---- EC2 API: describe-instance-status ------------------------------------------------------

#[test]
fn describe_instance_status_full_output_and_completed_prefix() {
    let doc = br#"{"InstanceStatuses": [{"AvailabilityZone": "us-east-1d", "InstanceId": "i-0123456789abcdef0",
        "Events": [
          {"InstanceEventId": "instance-event-0a", "Code": "system-reboot", "Description": "scheduled reboot",
           "NotBefore": "2019-01-21T09:00:43.000Z", "NotAfter": "2019-01-21T09:17:23.000Z", "NotBeforeDeadline": "2019-01-28T09:00:43.000Z"},
          {"InstanceEventId": "instance-event-0b", "Code": "instance-stop", "Description": "[Completed] The instance is running on degraded hardware",
           "NotBefore": "2019-01-10T00:00:00.000Z"},
          {"InstanceEventId": "instance-event-0c", "Code": "instance-reboot", "Description": "[Canceled] scheduled reboot",
           "NotBefore": "2019-01-11T00:00:00.000Z"}]},
        {"InstanceId": "i-1", "Events": null}]}"#;
    let evs = normalize(
        NAME,
        &Input::new(doc, observed()).self_name("i-0123456789ABCDEF0"),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(evs.len(), 3);
    let expected = [
        (
            "aws.imds:instance-event-0a",
            MaintenanceStatus::Scheduled,
            MaintenanceType::Reboot,
        ),
        (
            "aws.imds:instance-event-0b/completed/2019-01-10T00:00:00Z",
            MaintenanceStatus::Completed,
            MaintenanceType::Stop,
        ),
        (
            "aws.imds:instance-event-0c/canceled/2019-01-11T00:00:00Z",
            MaintenanceStatus::Canceled,
            MaintenanceType::Reboot,
        ),
    ];
    for (ev, (id, st, ty)) in evs.iter().zip(expected) {
        assert_eq!(ev.id, id);
        let m = ev.maintenance.as_ref().unwrap();
        assert_eq!((m.status, m.type_), (st, ty), "{id}");
        assert_eq!(ev.resource.id.as_deref(), Some("i-0123456789abcdef0"));
        assert_eq!(ev.resource.zone.as_deref(), Some("us-east-1d"));
        assert_eq!(ev.resource.is_self, Some(true));
        assert_eq!(ev.resource.name, None);
    }
    assert_eq!(
        evs[0].maintenance.as_ref().unwrap().not_after,
        Some(ts("2019-01-21T09:17:23Z"))
    );
}

#[test]
fn describe_instance_status_query_output_nested_arrays() {
    let doc = br#"[[{"InstanceEventId": "instance-event-0e439355b779n26", "Code": "instance-stop",
        "Description": "The instance is running on degraded hardware", "NotBefore": "2015-05-23T00:00:00.000Z"}]]"#;
    let ev = one(doc);
    assert_eq!(ev.id, "aws.imds:instance-event-0e439355b779n26");
    assert_eq!(ev.maintenance.unwrap().type_, MaintenanceType::Stop);
    let e = run(br#"[[{"InstanceEventId": "x", "NotBefore": ""}]]"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "[0][0].NotBefore"),
        "{e:?}"
    );
    let e = run(br#"{"Events": [{"InstanceEventId": "x"}]}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "Events[0].NotBefore"),
        "{e:?}"
    );
}

/// Azure Scheduled Events documents have `EventId` and `NotBefore` too: they are another
/// vendor's payload, never AWS events.
#[test]
fn azure_scheduled_events_documents_are_wrong_payloads() {
    for f in [
        "azure-scheduled-events-empty.json",
        "azure-scheduled-events-freeze-live-migration-scheduled.json",
        "azure-scheduled-events-freeze-live-migration-completed.json",
        "azure-scheduled-events-preempt-spot.json",
        "azure-scheduled-events-reboot-user.json",
    ] {
        match run(&fixture(f)) {
            Err(NormalizeError::WrongPayload { reason, .. }) => {
                assert!(reason.contains("DocumentIncarnation"), "{f}: {reason}")
            }
            other => panic!("{f}: {other:?}"),
        }
    }
    // The `Events` array alone, as a bare array or in describe-instance-status's `{"Events"}`.
    let doc: serde_json::Value =
        serde_json::from_slice(&fixture("azure-scheduled-events-reboot-user.json")).unwrap();
    let events = doc["Events"].to_string();
    for payload in [events.clone(), format!(r#"{{"Events": {events}}}"#)] {
        match run(payload.as_bytes()) {
            Err(NormalizeError::WrongPayload { reason, .. }) => {
                assert!(reason.contains("Azure Scheduled Events entry"), "{reason}")
            }
            other => panic!("{payload}: {other:?}"),
        }
    }
}

// ---- EventBridge --------------------------------------------------------------------------

#[test]
fn eventbridge_spot_interruption_warning_names_its_instance() {
    // The fixture read by its own instance is its snapshot; read by another host:
    let p = fixture("aws-eventbridge-spot-interruption-warning.json");
    // Another host's instance.
    let other = normalize(
        NAME,
        &Input::new(&p, observed()).self_name("i-0000"),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(other[0].resource.is_self, Some(false));
}

#[test]
fn eventbridge_rebalance_and_fallbacks() {
    let doc = br#"{"version": "0", "detail-type": "EC2 Instance Rebalance Recommendation", "source": "aws.ec2",
        "time": "2020-10-26T14:14:14Z", "region": "us-east-2",
        "resources": ["arn:aws:ec2:us-east-2:123456789012:instance/i-1234567890abcdef0"],
        "detail": {"instance-id": "i-1234567890abcdef0"}}"#;
    let ev = one(doc);
    assert_eq!(
        ev.id,
        hash_id(
            "aws.imds",
            &[
                "eventbridge/rebalance",
                "",
                "i-1234567890abcdef0",
                "2020-10-26T14:14:14Z"
            ]
        )
    );
    assert_eq!(ev.time, ts("2020-10-26T14:14:14Z"));
    assert_eq!(ev.resource.id.as_deref(), Some("i-1234567890abcdef0"));
    let m = ev.maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Rebalance);
    assert_eq!(m.status, MaintenanceStatus::Scheduled);
    assert_eq!((m.vendor_id, m.vendor_type), (None, None));

    // Instance id from the ARN when detail lacks it; hibernate → stop.
    let doc = br#"{"detail-type": "EC2 Spot Instance Interruption Warning", "time": "2017-09-18T08:20:00Z",
        "resources": ["arn:aws:ec2:us-east-2:123456789012:instance/i-abc"], "detail": {"instance-action": "hibernate"}}"#;
    let ev = one(doc);
    assert_eq!(ev.resource.id.as_deref(), Some("i-abc"));
    assert_eq!(ev.resource.region, None);
    assert_eq!(ev.maintenance.unwrap().type_, MaintenanceType::Stop);

    // Other detail-types, a missing action or time: errors.
    let e = run(br#"{"detail-type": "EC2 Instance State-change Notification", "time": "2017-09-18T08:20:00Z"}"#)
        .unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    let e = run(br#"{"detail-type": "EC2 Spot Instance Interruption Warning", "time": "2017-09-18T08:20:00Z", "detail": {}}"#)
        .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "detail.instance-action"),
        "{e:?}"
    );
    let e = run(br#"{"detail-type": "EC2 Spot Instance Interruption Warning", "detail": {"instance-action": "stop"}}"#)
        .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "time"),
        "{e:?}"
    );
}

// ---- 404 page, HTTP transcripts, errors -----------------------------------------

#[test]
fn imds_404_page_is_no_notice() {
    let p = fixture("aws-imds-404-not-found.html");
    assert_eq!(run_ok(&p), vec![]);
    let with_status = normalize(
        NAME,
        &Input::new(&p, observed()).http_status(404),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(with_status, vec![]);
    // Re-indented, the same page.
    let squeezed = String::from_utf8(p.clone())
        .unwrap()
        .replace('\n', " ")
        .replace('\t', "  ");
    assert_eq!(run_ok(squeezed.as_bytes()), vec![]);
    // An empty body (with or without 404) is no notice either.
    assert_eq!(run_ok(b""), vec![]);
    assert_eq!(run_ok(b"  \n"), vec![]);
    let empty404 = normalize(
        NAME,
        &Input::new(b"", observed()).http_status(404),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(empty404, vec![]);
}

#[test]
fn other_pages_and_statuses_are_errors() {
    let p404 = String::from_utf8(fixture("aws-imds-404-not-found.html")).unwrap();
    // IMDS's 401 page (same template): an error naming the status.
    let p401 = p404.replace("404 - Not Found", "401 - Unauthorized");
    let e = run(p401.as_bytes()).unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    assert!(
        e.to_string().contains("401 - Unauthorized") && e.to_string().contains("token"),
        "{e}"
    );
    // Any other HTML.
    let e = run(b"<html><body>Service Unavailable</body></html>").unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    let tampered = p404.replace(
        "<h1>404 - Not Found</h1>",
        "<h1>404 - Not Found</h1><script/>",
    );
    assert!(run(tampered.as_bytes()).is_err());
    // A 404 with a body that is not the 404 page.
    let e = normalize(
        NAME,
        &Input::new(
            br#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#,
            observed(),
        )
        .http_status(404),
        &mut NormalizerState::default(),
    )
    .unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    // IMDS answers 400, 401, 403, 503 for errors; 503 says retry.
    for (status, word) in [
        (400, "TTL"),
        (401, "token"),
        (403, "turned off"),
        (503, "retry"),
    ] {
        let e = normalize(
            NAME,
            &Input::new(b"", observed()).http_status(status),
            &mut NormalizerState::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(&status.to_string()) && e.to_string().contains(word),
            "{e}"
        );
    }
}

#[test]
fn imdsv2_token_flow_transcript() {
    // Every IMDS response is text/plain, JSON included; the body decides.
    let ev = one(&fixture("aws-imdsv2-token-flow.http"));
    let mut direct = one(&fixture("aws-spot-instance-action-terminate.json"));
    // Read from its path, the notice is named by when it was first read.
    direct.id = hash_id(
        "aws.imds",
        &["spot/instance-action", "first read", "2026-04-20T12:00:00Z"],
    );
    assert_eq!(
        ev, direct,
        "the transcript's last response is the instance-action JSON"
    );
}

#[test]
fn transcripts_with_other_endings() {
    // Ending with the token response: nothing to normalize.
    let t = b"PUT /latest/api/token HTTP/1.1\nX-aws-ec2-metadata-token-ttl-seconds: 21600\n\nHTTP/1.1 200 OK\n\nAQAEAHv3\n";
    let e = run(t).unwrap_err();
    assert!(e.to_string().contains("token"), "{e}");
    // A 404 answer with IMDS's page.
    let page = String::from_utf8(fixture("aws-imds-404-not-found.html")).unwrap();
    let t = format!("GET /latest/meta-data/spot/instance-action HTTP/1.1\n\nHTTP/1.1 404 Not Found\nContent-Type: text/html\n\n{page}");
    assert_eq!(run_ok(t.as_bytes()), vec![]);
    // A 401 answer (expired token).
    let t = b"GET /latest/meta-data/spot/instance-action HTTP/1.1\n\nHTTP/1.1 401 Unauthorized\n\n";
    assert!(run(t).unwrap_err().to_string().contains("401"));
    // A CRLF transcript with scheduled events.
    let body =
        String::from_utf8(fixture("aws-scheduled-events-system-reboot-active.json")).unwrap();
    let t = format!("GET /latest/meta-data/events/maintenance/scheduled HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{}", body.replace('\n', "\r\n"));
    assert_eq!(
        one(t.as_bytes()).id,
        "aws.imds:instance-event-0d59937288b749b32"
    );
    // Malformed transcripts.
    assert!(run(b"GET / HTTP/1.1\nHost: x\n\n").is_err());
    assert!(run(b"HTTP/1.1 200 OK\nbroken header line\n\n[]").is_err());
}

#[test]
fn wrong_payloads_name_what_was_expected() {
    let e = run(br#"{"hello": 1}"#).unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    assert!(
        e.to_string().contains("hello") && e.to_string().contains("action"),
        "{e}"
    );
    let e = run(b"42").unwrap_err();
    assert!(
        matches!(
            e,
            NormalizeError::Time { .. } | NormalizeError::WrongPayload { .. }
        ),
        "{e:?}"
    );
    let e = run(br#"{"action": "terminate", "#).unwrap_err();
    assert!(matches!(e, NormalizeError::Json { .. }), "{e:?}");
    let e = run(b"\xff\xfe").unwrap_err();
    assert!(matches!(e, NormalizeError::NotUtf8 { .. }), "{e:?}");
    // Untrusted strings are escaped and truncated in messages.
    let long = format!("{{\"{}\": 1}}", "\u{1b}x".repeat(500));
    let msg = run(long.as_bytes()).unwrap_err().to_string();
    assert!(!msg.contains('\u{1b}') && msg.len() < 2000, "{msg}");
}

/// Bare payloads, the history among them, never say they are the whole scheduled list: the
/// state stays empty.
#[test]
fn aws_state_stays_empty() {
    let mut st = NormalizerState::default();
    for f in [
        "aws-spot-instance-action-terminate.json",
        "aws-scheduled-events-history-canceled-completed.json",
        "aws-imds-404-not-found.html",
        "aws-scheduled-events-system-reboot-active.json",
        "aws-scheduled-events-instance-retirement.json",
    ] {
        normalize(NAME, &Input::new(&fixture(f), observed()), &mut st).unwrap();
    }
    assert_eq!(st, NormalizerState::default());
}

#[test]
fn events_round_trip_through_the_event_schema() {
    for f in [
        "aws-spot-instance-action-terminate.json",
        "aws-spot-instance-action-stop.json",
        "aws-spot-termination-time.txt",
        "aws-rebalance-recommendation.json",
        "aws-scheduled-events-history-canceled-completed.json",
        "aws-scheduled-events-instance-reboot.json",
        "aws-scheduled-events-instance-retirement.json",
        "aws-scheduled-events-system-maintenance.json",
        "aws-scheduled-events-system-reboot-active.json",
        "aws-describe-instance-status-retirement-instance-stop.json",
        "aws-eventbridge-spot-interruption-warning.json",
        "aws-imdsv2-token-flow.http",
    ] {
        for ev in run_ok(&fixture(f)) {
            let s = serde_json::to_string(&ev).unwrap();
            assert_eq!(Event::from_json_str(&s).unwrap(), ev, "{f}");
        }
    }
}

// ---- Fuzz ---------------------------------------------------------------------------------------

const FIXTURES: &[&str] = &[
    "aws-describe-instance-status-retirement-instance-stop.json",
    "aws-eventbridge-spot-interruption-warning.json",
    "aws-imds-404-not-found.html",
    "aws-imdsv2-token-flow.http",
    "aws-rebalance-recommendation.json",
    "aws-scheduled-events-history-canceled-completed.json",
    "aws-scheduled-events-instance-reboot.json",
    "aws-scheduled-events-instance-retirement.json",
    "aws-scheduled-events-system-maintenance.json",
    "aws-scheduled-events-system-reboot-active.json",
    "aws-spot-instance-action-stop.json",
    "aws-spot-instance-action-terminate.json",
    "aws-spot-termination-time.txt",
];

fn check(payload: &[u8], status: Option<u16>) {
    let mut input = Input::new(payload, observed()).self_name("i-1234567890abcdef0");
    if let Some(s) = status {
        input = input.http_status(s);
    }
    let mut st = NormalizerState::default();
    if let Ok(evs) = normalize(NAME, &input, &mut st) {
        for ev in evs {
            assert!(ev.id.starts_with("aws.imds:"));
            assert_eq!(ev.source, Source::AwsImds);
            assert!(ev.maintenance.is_some() && ev.raw.is_some());
            let s = serde_json::to_string(&ev).unwrap();
            assert_eq!(Event::from_json_str(&s).unwrap(), ev);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes, None);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        idx in 0..FIXTURES.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8),
        cut in proptest::option::of(any::<usize>()),
        status in proptest::option::of(prop_oneof![Just(200u16), Just(404), Just(401), Just(503)]),
    ) {
        let mut p = fixture(FIXTURES[idx]);
        for (pos, byte, op) in edits {
            if p.is_empty() { break; }
            let i = pos % p.len();
            match op {
                0 => p[i] = byte,
                1 => p.insert(i, byte),
                _ => { p.remove(i); }
            }
        }
        if let Some(c) = cut {
            let n = c % (p.len() + 1);
            p.truncate(n);
        }
        check(&p, status);
    }

    #[test]
    fn arbitrary_field_values_never_panic(
        code in ".{0,24}", state in ".{0,12}", nb in time_like(), na in time_like(), id in ".{0,40}",
        action in ".{0,12}", time in time_like(),
    ) {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let sched = format!(
            r#"[{{"Code": {}, "State": {}, "NotBefore": {}, "NotAfter": {}, "EventId": {}, "Description": "d"}}]"#,
            q(&code), q(&state), q(&nb), q(&na), q(&id)
        );
        check(sched.as_bytes(), None);
        let spot = format!(r#"{{"action": {}, "time": {}}}"#, q(&action), q(&time));
        check(spot.as_bytes(), None);
        let eb = format!(
            r#"{{"id": {}, "detail-type": "EC2 Spot Instance Interruption Warning", "time": {}, "resources": [{}], "detail": {{"instance-action": {}}}}}"#,
            q(&id), q(&time), q(&code), q(&action)
        );
        check(eb.as_bytes(), None);
        check(time.as_bytes(), None);
    }
}

// ---- A cleared scheduled event -----------------------------------------------------------

const REBOOT_ID: &str = "instance-event-0d59937288b749b32";

/// A read of `events/maintenance/scheduled` as `keel run` hands it over: an HTTP transcript
/// (`None`: a 404).
fn scheduled_read(body: Option<&[u8]>) -> Vec<u8> {
    let status = if body.is_some() {
        "200 OK"
    } else {
        "404 Not Found"
    };
    let mut t = format!(
        "GET /latest/meta-data/events/maintenance/scheduled HTTP/1.1\n\nHTTP/1.1 {status}\n\n"
    )
    .into_bytes();
    t.extend_from_slice(body.unwrap_or_default());
    t
}

fn read_at(payload: &[u8], at: &str, st: &mut NormalizerState) -> Vec<Event> {
    normalize(NAME, &Input::new(payload, ts(at)).self_name("i-1"), st)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// AWS ends a scheduled event by marking it or by clearing it from the list. Cleared after
/// its `NotBefore`, it completed: the event comes with the id a listed completed entry
/// would have, its vendor id (what a cordon is recorded under), `inferred`, and the
/// observation time; once.
#[test]
fn a_scheduled_event_cleared_after_its_window_opened_completed() {
    let active = fixture("aws-scheduled-events-system-reboot-active.json");
    let mut st = NormalizerState::default();
    let first = read_at(
        &scheduled_read(Some(&active)),
        "2019-01-20T09:00:00Z",
        &mut st,
    );
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id, format!("aws.imds:{REBOOT_ID}"));
    assert_eq!(st.aws_imds.scheduled.len(), 1);
    // Listed again: nothing ends.
    let again = read_at(
        &scheduled_read(Some(&active)),
        "2019-01-21T09:05:00Z",
        &mut st,
    );
    assert_eq!(again, first);
    // Cleared (IMDS answers 404, or an empty list): completed.
    for cleared in [scheduled_read(None), scheduled_read(Some(b"[]"))] {
        let mut st = st.clone();
        let evs = read_at(&cleared, "2019-01-21T09:30:00Z", &mut st);
        assert_eq!(evs.len(), 1, "{evs:#?}");
        let ev = &evs[0];
        assert_eq!(
            ev.id,
            format!("aws.imds:{REBOOT_ID}/completed/2019-01-21T09:00:43Z")
        );
        assert_eq!(ev.time, ts("2019-01-21T09:30:00Z"));
        assert_eq!(ev.resource.name.as_deref(), Some("i-1"));
        let m = ev.maintenance.as_ref().unwrap();
        assert_eq!(m.status, MaintenanceStatus::Completed);
        assert!(m.inferred);
        assert_eq!(m.vendor_id.as_deref(), Some(REBOOT_ID));
        assert_eq!(m.type_, MaintenanceType::Reboot);
        assert_eq!(st, NormalizerState::default(), "nothing left to end");
        assert!(read_at(&cleared, "2019-01-21T09:31:00Z", &mut st).is_empty());
    }
}

/// Cleared before its window opened, it was canceled. An entry AWS marks ends as marked,
/// and is not ended a second time when it then leaves the list; the other entries of the
/// list are untouched.
#[test]
fn a_scheduled_event_cleared_before_its_window_was_canceled_and_a_marked_one_ends_once() {
    let entry = |id: &str, state: &str| {
        serde_json::json!({"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "instance-stop",
            "Description": "stop", "EventId": id, "NotAfter": "21 Jan 2019 09:17:23 GMT",
            "State": state})
    };
    let list = |entries: &[serde_json::Value]| serde_json::to_vec(entries).unwrap();
    let mut st = NormalizerState::default();
    let both = list(&[
        entry("instance-event-a", "active"),
        entry("instance-event-b", "active"),
    ]);
    assert_eq!(
        read_at(
            &scheduled_read(Some(&both)),
            "2019-01-20T00:00:00Z",
            &mut st
        )
        .len(),
        2
    );
    // b is marked completed; a is cleared a day before its window: canceled.
    let marked = list(&[entry("instance-event-b", "completed")]);
    let evs = read_at(
        &scheduled_read(Some(&marked)),
        "2019-01-20T09:00:00Z",
        &mut st,
    );
    let got: Vec<(&str, MaintenanceStatus, bool)> = evs
        .iter()
        .map(|e| {
            let m = e.maintenance.as_ref().unwrap();
            (e.id.as_str(), m.status, m.inferred)
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "aws.imds:instance-event-b/completed/2019-01-21T09:00:43Z",
                MaintenanceStatus::Completed,
                false
            ),
            (
                "aws.imds:instance-event-a/canceled/2019-01-21T09:00:43Z",
                MaintenanceStatus::Canceled,
                true
            ),
        ]
    );
    assert!(st.aws_imds.scheduled.is_empty());
    assert!(read_at(&scheduled_read(None), "2019-01-22T00:00:00Z", &mut st).is_empty());
}

/// Only a read of the scheduled path says what is no longer listed: a bare empty array (the
/// history's shape too), another path's 404, or a read that fails ends nothing and keeps what
/// is tracked.
#[test]
fn only_a_read_of_the_scheduled_path_ends_a_tracked_event() {
    let active = fixture("aws-scheduled-events-system-reboot-active.json");
    let mut st = NormalizerState::default();
    read_at(
        &scheduled_read(Some(&active)),
        "2019-01-20T09:00:00Z",
        &mut st,
    );
    let tracked = st.clone();
    let other_404 =
        b"GET /latest/meta-data/spot/instance-action HTTP/1.1\n\nHTTP/1.1 404 Not Found\n\n";
    for payload in [
        &b"[]"[..],
        b"",
        other_404,
        &fixture("aws-scheduled-events-history-canceled-completed.json"),
    ] {
        let evs = read_at(payload, "2019-01-22T00:00:00Z", &mut st);
        assert!(
            evs.iter()
                .all(|e| !e.maintenance.as_ref().unwrap().inferred),
            "{evs:#?}"
        );
        assert_eq!(st, tracked);
    }
    let failed = b"GET /latest/meta-data/events/maintenance/scheduled HTTP/1.1\n\nHTTP/1.1 503 Service Unavailable\n\n";
    assert!(normalize(
        NAME,
        &Input::new(failed, ts("2019-01-22T00:00:00Z")),
        &mut st
    )
    .is_err());
    assert_eq!(st, tracked);
    // A read refused for a field the history could not keep (here a new entry's code)
    // changes nothing either: the cleared event is still ended by the next good read.
    let long = serde_json::to_vec(
        &serde_json::json!([{"NotBefore": "21 Jan 2019 09:00:43 GMT",
        "Code": "c".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1),
        "EventId": "instance-event-new", "State": "active"}]),
    )
    .unwrap();
    let err = normalize(
        NAME,
        &Input::new(&scheduled_read(Some(&long)), ts("2019-01-22T00:00:00Z")),
        &mut st,
    )
    .unwrap_err();
    assert!(err.to_string().contains("at most 2048 bytes"), "{err}");
    assert_eq!(st, tracked);
    assert_eq!(
        read_at(&scheduled_read(None), "2019-01-22T00:00:01Z", &mut st).len(),
        1
    );
}

/// The state keeps at most 64 live events, whatever a list holds.
#[test]
fn tracked_scheduled_events_are_bounded() {
    let entries: Vec<serde_json::Value> = (0..500)
        .map(|i| {
            serde_json::json!({"NotBefore": "21 Jan 2019 09:00:43 GMT", "Code": "system-reboot",
                "EventId": format!("instance-event-{i}"), "State": "active"})
        })
        .collect();
    let mut st = NormalizerState::default();
    let list = serde_json::to_vec(&entries).unwrap();
    assert_eq!(
        read_at(
            &scheduled_read(Some(&list)),
            "2019-01-20T00:00:00Z",
            &mut st
        )
        .len(),
        500
    );
    assert_eq!(st.aws_imds.scheduled.len(), 64);
    assert_eq!(
        read_at(&scheduled_read(None), "2019-01-22T00:00:00Z", &mut st).len(),
        64
    );
}

/// A read of `path` as `keel run` hands it over (`None`: a 404).
fn path_read(path: &str, body: Option<&str>) -> Vec<u8> {
    let status = if body.is_some() {
        "200 OK"
    } else {
        "404 Not Found"
    };
    format!(
        "GET /latest/meta-data/{path} HTTP/1.1\n\nHTTP/1.1 {status}\n\n{}",
        body.unwrap_or_default()
    )
    .into_bytes()
}

/// A Spot notice read from its path stays one event for as long as the path lists one, even
/// when its `time` moves at every read (AWS's metadata mock dates it afresh each time; a
/// corrected notice would too): a new time is not a new interruption to drain for. A 404
/// ends it; the next notice is a new event. The rebalance path works the same way.
#[test]
fn a_spot_notice_read_from_its_path_is_one_event_until_the_path_is_empty() {
    let mut st = NormalizerState::default();
    let notice = |t: &str| format!(r#"{{"action": "terminate", "time": "{t}"}}"#);
    let path = "spot/instance-action";
    let a = read_at(
        &path_read(path, Some(&notice("2026-04-20T12:02:00Z"))),
        "2026-04-20T12:00:00Z",
        &mut st,
    );
    let b = read_at(
        &path_read(path, Some(&notice("2026-04-20T12:02:05Z"))),
        "2026-04-20T12:00:05Z",
        &mut st,
    );
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].id, b[0].id, "a moved time is the same notice");
    assert_eq!(
        a[0].id,
        hash_id(
            "aws.imds",
            &["spot/instance-action", "first read", "2026-04-20T12:00:00Z"]
        )
    );
    assert_eq!(
        b[0].maintenance.as_ref().unwrap().not_before,
        Some(ts("2026-04-20T12:02:05Z")),
        "the event says the latest time"
    );
    assert!(read_at(&path_read(path, None), "2026-04-20T12:00:10Z", &mut st).is_empty());
    assert_eq!(st.aws_imds.spot_since, None);
    let c = read_at(
        &path_read(path, Some(&notice("2026-04-20T12:02:05Z"))),
        "2026-04-20T12:30:00Z",
        &mut st,
    );
    assert_ne!(c[0].id, a[0].id, "after a 404, a new notice");

    let rebalance = |t: &str| format!(r#"{{"noticeTime": "{t}"}}"#);
    let path = "events/recommendations/rebalance";
    let r1 = read_at(
        &path_read(path, Some(&rebalance("2026-04-20T12:00:00Z"))),
        "2026-04-20T12:00:00Z",
        &mut st,
    );
    let r2 = read_at(
        &path_read(path, Some(&rebalance("2026-04-20T12:00:09Z"))),
        "2026-04-20T12:00:10Z",
        &mut st,
    );
    assert_eq!(r1[0].id, r2[0].id);
    assert_ne!(r1[0].id, c[0].id, "the two paths keep their own notices");
    assert!(
        st.aws_imds.spot_since.is_some(),
        "the rebalance path leaves the Spot notice alone"
    );
    // Bare payloads keep their content ids: nothing says which path they came from.
    assert_eq!(
        run_ok(notice("2026-04-20T12:02:00Z").as_bytes())[0].id,
        hash_id(
            "aws.imds",
            &["spot/instance-action", "terminate", "2026-04-20T12:02:00Z"]
        )
    );
}
