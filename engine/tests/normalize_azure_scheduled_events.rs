//! Azure Scheduled Events and the legacy maintenance endpoint, on the vendors' payloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::time_like;
use keel_engine::normalize::{
    azure_scheduled_events, normalize, Input, NormalizeError, NormalizerState,
};
use keel_engine::{
    Event, Initiator, MaintenanceStatus as S, MaintenanceType as T, Source, Timestamp,
};
use proptest::prelude::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../policies/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn t(s: &str) -> Timestamp {
    s.parse().unwrap()
}

fn se(state: &mut NormalizerState, doc: &[u8], at: &str) -> Result<Vec<Event>, NormalizeError> {
    normalize("azure.scheduled_events", &Input::new(doc, t(at)), state)
}

fn status(e: &Event) -> S {
    e.maintenance.as_ref().unwrap().status
}

#[test]
fn unchanged_incarnation_and_rereads_yield_nothing_new() {
    let mut st = NormalizerState::default();
    let doc = fixture("azure-scheduled-events-freeze-live-migration-scheduled.json");
    assert_eq!(se(&mut st, &doc, "2026-04-11T22:11:58Z").unwrap().len(), 2);
    assert!(se(&mut st, &doc, "2026-04-11T22:11:59Z")
        .unwrap()
        .is_empty());
    // The same events in a document with a new incarnation (another event changed): still
    // nothing new for these.
    let bumped = String::from_utf8(doc)
        .unwrap()
        .replace("\"DocumentIncarnation\":  2", "\"DocumentIncarnation\":  3");
    assert!(se(&mut st, bumped.as_bytes(), "2026-04-11T22:12:00Z")
        .unwrap()
        .is_empty());
}

/// IMDS sends upper-case EventIds, other channels (Event Grid) lower-case.
#[test]
fn event_ids_compare_case_insensitively() {
    let mut st = NormalizerState::default();
    let doc = fixture("azure-scheduled-events-freeze-live-migration-scheduled.json");
    let first = se(&mut st, &doc, "2026-04-11T22:11:58Z").unwrap();
    let lower = String::from_utf8(doc)
        .unwrap()
        .replace(
            "C7061BAC-AFDC-4513-B24B-AA5F13A16123",
            "c7061bac-afdc-4513-b24b-aa5f13a16123",
        )
        .replace("\"DocumentIncarnation\":  2", "\"DocumentIncarnation\":  3");
    assert!(se(&mut st, lower.as_bytes(), "2026-04-11T22:12:00Z")
        .unwrap()
        .is_empty());
    assert_eq!(
        first[0].id,
        "azure.scheduled_events:c7061bac-afdc-4513-b24b-aa5f13a16123/westno_0"
    );
    // StartRequests echoes the id exactly as IMDS sent it.
    let body = azure_scheduled_events::start_requests([first[0]
        .maintenance
        .as_ref()
        .unwrap()
        .vendor_id
        .as_deref()
        .unwrap()]);
    assert_eq!(
        body.to_string(),
        r#"{"StartRequests":[{"EventId":"C7061BAC-AFDC-4513-B24B-AA5F13A16123"}]}"#
    );
}

#[test]
fn start_requests_body_matches_the_documented_one() {
    let doc: serde_json::Value =
        serde_json::from_slice(&fixture("azure-scheduled-events-ack-startrequests.json")).unwrap();
    assert_eq!(
        azure_scheduled_events::start_requests(["f020ba2e-3bc0-4c40-a10b-86575a9eabd5"]),
        doc
    );
}

/// A cancellation: Scheduled, then gone at the next incarnation, nothing approved, NotBefore
/// still ahead.
#[test]
fn vanished_while_scheduled_without_gap_is_canceled() {
    let mut st = NormalizerState::default();
    se(
        &mut st,
        &fixture("azure-scheduled-events-redeploy-platform.json"),
        "2021-10-13T09:30:00Z",
    )
    .unwrap();
    let empty = br#"{"DocumentIncarnation": 8, "Events": []}"#;
    let evs = se(&mut st, empty, "2021-10-13T09:35:00Z").unwrap();
    assert_eq!(evs.len(), 1);
    let m = evs[0].maintenance.as_ref().unwrap();
    assert_eq!(m.status, S::Canceled);
    assert!(m.inferred);
    assert_eq!(m.type_, T::Redeploy);
}

/// Microsoft's Node sample (Azure/vm-scheduled-events) sees a user Reboot Scheduled at incarnation
/// 2, approves it, and next sees incarnation 4 with the event gone: it was not canceled (it
/// most likely ran unseen, but nothing proves it: `ended`).
#[test]
fn incarnation_2_to_4_after_approval_is_not_a_cancellation() {
    let mut st = NormalizerState::default();
    let evs = se(
        &mut st,
        &fixture("azure-scheduled-events-reboot-user.json"),
        "2021-07-22T04:36:00Z",
    )
    .unwrap();
    st.azure_scheduled_events.mark_approved(
        evs[0]
            .maintenance
            .as_ref()
            .unwrap()
            .vendor_id
            .as_deref()
            .unwrap(),
    );
    let gone = br#"{"DocumentIncarnation": 4, "Events": []}"#;
    let evs = se(&mut st, gone, "2021-07-22T04:38:00Z").unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(status(&evs[0]), S::Ended);
    assert!(evs[0].maintenance.as_ref().unwrap().inferred);
}

#[test]
fn vanished_with_an_incarnation_gap_or_past_not_before_is_not_canceled() {
    // Gap, not approved, NotBefore ahead: states were missed.
    let mut st = NormalizerState::default();
    se(
        &mut st,
        &fixture("azure-scheduled-events-redeploy-platform.json"),
        "2021-10-13T09:30:00Z",
    )
    .unwrap();
    let evs = se(
        &mut st,
        br#"{"DocumentIncarnation": 9, "Events": []}"#,
        "2021-10-13T09:35:00Z",
    )
    .unwrap();
    assert_eq!(status(&evs[0]), S::Ended);
    // No gap, not approved, but NotBefore has passed: it probably started unseen.
    let mut st = NormalizerState::default();
    se(
        &mut st,
        &fixture("azure-scheduled-events-redeploy-platform.json"),
        "2021-10-13T09:30:00Z",
    )
    .unwrap();
    let evs = se(
        &mut st,
        br#"{"DocumentIncarnation": 8, "Events": []}"#,
        "2021-10-13T09:50:00Z",
    )
    .unwrap();
    assert_eq!(status(&evs[0]), S::Ended);
}

/// Each piece of evidence alone rules a cancellation out; the outcome is then `ended` (it may
/// have run unseen), never `completed`. The redeploy fixture is incarnation 7, NotBefore
/// 09:40:00.
#[test]
fn vanished_while_scheduled_each_piece_of_evidence_alone() {
    let cases = [
        // (a) approved, no gap, NotBefore ahead.
        ("approved", true, 8, "2021-10-13T09:35:00Z", S::Ended),
        // (b) not approved, gap, NotBefore ahead.
        ("gap", false, 9, "2021-10-13T09:35:00Z", S::Ended),
        // (c) not approved, no gap, NotBefore passed.
        ("due", false, 8, "2021-10-13T09:40:01Z", S::Ended),
        // (c') NotBefore exactly now has passed too (the platform may start at NotBefore).
        (
            "due at NotBefore",
            false,
            8,
            "2021-10-13T09:40:00Z",
            S::Ended,
        ),
        // (d) none of these: canceled.
        ("none", false, 8, "2021-10-13T09:39:59Z", S::Canceled),
    ];
    for (name, approved, incarnation, at, want) in cases {
        let mut st = NormalizerState::default();
        let evs = se(
            &mut st,
            &fixture("azure-scheduled-events-redeploy-platform.json"),
            "2021-10-13T09:30:00Z",
        )
        .unwrap();
        if approved {
            // As IMDS sent it, and in another case: ids compare case-insensitively.
            st.azure_scheduled_events
                .mark_approved("9e4c2a41-3f0b-4b8e-9c5d-2d7a1f6e8b30");
        }
        let gone = format!(r#"{{"DocumentIncarnation": {incarnation}, "Events": []}}"#);
        let out = se(&mut st, gone.as_bytes(), at).unwrap();
        assert_eq!(out.len(), 1, "{name}");
        let m = out[0].maintenance.as_ref().unwrap();
        assert_eq!(m.status, want, "{name}");
        assert!(m.inferred, "{name}");
        assert_eq!(m.incarnation, Some(incarnation), "{name}");
        assert_eq!(out[0].id, evs[0].id, "{name}");
        assert_eq!(out[0].time, t(at), "{name}");
        assert!(st.azure_scheduled_events.events.is_empty(), "{name}");
    }
}

/// An EventStatus Keel does not know makes that event `unknown` (the raw entry keeps the
/// status as sent) and does not hide the other events of the document.
#[test]
fn unknown_event_status_is_explicit_unknown_and_the_rest_comes_through() {
    let doc = br#"{"DocumentIncarnation": 5, "Events": [
      {"EventId": "C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E", "EventStatus": "Scheduled", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["vm-spot"], "NotBefore": "Tue, 09 Aug 2022 17:07:32 GMT", "Description": "", "EventSource": "Platform", "DurationInSeconds": -1},
      {"EventId": "D2", "EventStatus": "Paused", "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["vm-spot"], "NotBefore": "Tue, 09 Aug 2022 17:30:00 GMT", "Description": "Host server is undergoing maintenance.", "EventSource": "Platform", "DurationInSeconds": 30}
    ]}"#;
    let mut st = NormalizerState::default();
    let evs = normalize(
        "azure.scheduled_events",
        &Input::new(doc, t("2022-08-09T17:07:00Z")).self_name("vm-spot"),
        &mut st,
    )
    .unwrap();
    assert_eq!(evs.len(), 2);
    let preempt = evs[0].maintenance.as_ref().unwrap();
    assert_eq!((preempt.type_, preempt.status), (T::Preempt, S::Scheduled));
    assert_eq!(evs[0].resource.is_self, Some(true));
    let paused = evs[1].maintenance.as_ref().unwrap();
    assert_eq!(evs[1].id, "azure.scheduled_events:d2/vm-spot");
    assert_eq!((paused.type_, paused.status), (T::Reboot, S::Unknown));
    assert_eq!(paused.vendor_id.as_deref(), Some("D2"));
    assert_eq!(paused.not_before, Some(t("2022-08-09T17:30:00Z")));
    assert!(!paused.inferred);
    assert_eq!(
        evs[1].raw.as_ref().unwrap()["EventStatus"],
        serde_json::json!("Paused")
    );
    // Both are tracked; a re-read yields nothing new.
    assert_eq!(st.azure_scheduled_events.events.len(), 2);
    let again = String::from_utf8(doc.to_vec())
        .unwrap()
        .replace("\"DocumentIncarnation\": 5", "\"DocumentIncarnation\": 6");
    assert!(se(&mut st, again.as_bytes(), "2022-08-09T17:07:05Z")
        .unwrap()
        .is_empty());
    // The unknown one turns Scheduled: reported; then it vanishes while the Preempt stays.
    let scheduled = again
        .replace("\"Paused\"", "\"Scheduled\"")
        .replace("\"DocumentIncarnation\": 6", "\"DocumentIncarnation\": 7");
    let evs = se(&mut st, scheduled.as_bytes(), "2022-08-09T17:07:10Z").unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(status(&evs[0]), S::Scheduled);
    // An event whose last status was unknown vanishes as `ended`: nothing says what happened.
    let mut st = NormalizerState::default();
    se(&mut st, doc, "2022-08-09T17:07:00Z").unwrap();
    let only_preempt = String::from_utf8(fixture("azure-scheduled-events-preempt-spot.json"))
        .unwrap()
        .replace("\"DocumentIncarnation\": 1", "\"DocumentIncarnation\": 6");
    let evs = se(&mut st, only_preempt.as_bytes(), "2022-08-09T17:07:05Z").unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].id, "azure.scheduled_events:d2/vm-spot");
    let m = evs[0].maintenance.as_ref().unwrap();
    assert_eq!((m.status, m.inferred), (S::Ended, true));
    // Event Grid: the same.
    let eg = String::from_utf8(fixture(
        "azure-scheduled-events-eventgrid-freeze-started.json",
    ))
    .unwrap()
    .replace("\"Started\"", "\"Paused\"");
    let evs = se(
        &mut NormalizerState::default(),
        eg.as_bytes(),
        "2025-09-19T18:30:00Z",
    )
    .unwrap();
    assert_eq!(evs.len(), 2);
    assert!(evs.iter().all(|e| status(e) == S::Unknown));
}

#[test]
fn several_events_in_one_document() {
    let doc = br#"{"DocumentIncarnation": 12, "Events": [
      {"EventId": "A1", "EventStatus": "Scheduled", "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["vm1"], "NotBefore": "Mon, 20 Apr 2026 22:26:58 GMT", "Description": "Host server is undergoing maintenance.", "EventSource": "Platform", "DurationInSeconds": 30},
      {"EventId": "B2", "EventStatus": "Started", "EventType": "Freeze", "ResourceType": "VirtualMachine", "Resources": ["vm2", "VM2"], "NotBefore": "", "Description": "", "EventSource": "Platform", "DurationInSeconds": 0}
    ]}"#;
    let mut st = NormalizerState::default();
    let evs = se(&mut st, doc, "2026-04-20T22:15:00Z").unwrap();
    assert_eq!(
        evs.len(),
        2,
        "a VM listed twice in different case is one VM"
    );
    assert_eq!(evs[0].maintenance.as_ref().unwrap().type_, T::Reboot);
    assert_eq!(evs[0].maintenance.as_ref().unwrap().duration_s, Some(30));
    let m = evs[1].maintenance.as_ref().unwrap();
    assert_eq!(
        m.duration_s,
        Some(0),
        "0 means no interruption, not unknown"
    );
    assert_eq!(m.description, None, "an empty description is not given");
    // The second document: A1 started, B2 gone (completed).
    let doc2 = br#"{"DocumentIncarnation": 13, "Events": [
      {"EventId": "A1", "EventStatus": "Started", "EventType": "Reboot", "ResourceType": "VirtualMachine", "Resources": ["vm1"], "NotBefore": "", "Description": "Host server is undergoing maintenance.", "EventSource": "Platform", "DurationInSeconds": 30}
    ]}"#;
    let evs = se(&mut st, doc2, "2026-04-20T22:27:00Z").unwrap();
    let got: Vec<(String, S)> = evs.iter().map(|e| (e.id.clone(), status(e))).collect();
    assert_eq!(
        got,
        [
            ("azure.scheduled_events:a1/vm1".to_string(), S::Started),
            ("azure.scheduled_events:b2/vm2".to_string(), S::Completed),
        ]
    );
}

#[test]
fn unknown_event_type_is_explicit_unknown() {
    let doc = br#"{"DocumentIncarnation": 3, "Events": [{"EventId": "X", "EventStatus": "Scheduled", "EventType": "Hibernate", "ResourceType": "VirtualMachine", "Resources": ["vm"], "NotBefore": "Mon, 20 Apr 2026 22:26:58 GMT", "EventSource": "Platform"}]}"#;
    let mut st = NormalizerState::default();
    let evs = se(&mut st, doc, "2026-04-20T22:00:00Z").unwrap();
    let m = evs[0].maintenance.as_ref().unwrap();
    assert_eq!(m.type_, T::Unknown);
    assert_eq!(m.vendor_type.as_deref(), Some("Hibernate"));
}

#[test]
fn bad_documents_are_typed_errors_and_leave_state_alone() {
    let cases: [(&[u8], &str); 9] = [
        (b"{\"DocumentIncarnation\": 2, \"Events\": [", "invalid JSON"),
        (b"[]", "expected an object"),
        (br#"{"DocumentIncarnation": "two", "Events": []}"#, "DocumentIncarnation"),
        (br#"{"DocumentIncarnation": 2, "Events": {}}"#, "`Events`: expected an array"),
        (br#"{"DocumentIncarnation": 2, "Events": [{"EventId": "X", "EventStatus": "Scheduled", "EventType": "Reboot", "Resources": ["v"], "NotBefore": "20170702"}]}"#, "Events[0].NotBefore"),
        (br#"{"DocumentIncarnation": 2, "Events": [{"EventStatus": "Scheduled", "EventType": "Reboot", "Resources": ["v"]}]}"#, "Events[0].EventId"),
        (br#"{"DocumentIncarnation": 2, "Events": [{"EventId": "X", "EventStatus": 3, "EventType": "Reboot", "Resources": ["v"]}]}"#, "Events[0].EventStatus"),
        (br#"{"DocumentIncarnation": 2, "Events": [{"EventId": "X", "EventStatus": "Scheduled", "EventType": "Reboot", "Resources": [7]}]}"#, "Events[0].Resources[0]"),
        (&fixture_static(), "IMDS answered with an error"),
    ];
    for (doc, want) in cases {
        let mut st = NormalizerState::default();
        let err = se(&mut st, doc, "2026-04-20T22:00:00Z")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{want}: {err}");
        assert_eq!(st, NormalizerState::default());
    }
}

fn fixture_static() -> Vec<u8> {
    fixture("azure-imds-error-no-api-version.json")
}

#[test]
fn legacy_maintenance_endpoint_refuses_a_document_without_event_id() {
    // What the endpoint's documents normalize to is their snapshots (one payload each and the
    // sequence none, InstanceInfo, pending reboot).
    let mut st = NormalizerState::default();
    let err = normalize(
        "azure.maintenance_v1",
        &Input::new(br#"{"Foo": 1}"#, t("2015-09-15T06:43:00Z")),
        &mut st,
    )
    .unwrap_err();
    assert!(err.to_string().contains("EventID"), "{err}");
}

/// Only an object with exactly the keys ID, UD and FD is InstanceInfo: other payloads with an
/// `id` (a Resource Health status, an Event Grid envelope) are refused and never reach the
/// state.
#[test]
fn legacy_instance_info_is_exactly_id_ud_fd() {
    let at = t("2015-09-15T06:43:00Z");
    for f in [
        "azure-resource-health-degraded-hardware.json",
        "azure-resource-health-unavailable-unplanned.json",
        "azure-eventgrid-health-availability-status-changed.json",
        "azure-scheduled-events-eventgrid-freeze-started.json",
        "aws-eventbridge-spot-interruption-warning.json",
    ] {
        let mut st = NormalizerState::default();
        match normalize(
            "azure.maintenance_v1",
            &Input::new(&fixture(f), at),
            &mut st,
        ) {
            Err(NormalizeError::WrongPayload { reason, .. }) => {
                assert!(reason.contains("exactly ID/UD/FD"), "{f}: {reason}")
            }
            other => panic!("{f}: {other:?}"),
        }
        assert_eq!(st, NormalizerState::default(), "{f}");
    }
    for doc in [
        &br#"{"id": "_vm", "ud": "0", "fd": "0"}"#[..],
        br#"{"ID": "_vm", "UD": "0"}"#,
        br#"{"ID": "_vm", "UD": "0", "FD": "0", "Name": "x"}"#,
    ] {
        let mut st = NormalizerState::default();
        let r = normalize("azure.maintenance_v1", &Input::new(doc, at), &mut st);
        assert!(
            matches!(r, Err(NormalizeError::WrongPayload { .. })),
            "{r:?}"
        );
        assert_eq!(st, NormalizerState::default());
    }
    // The real InstanceInfo still enriches the next notice.
    let mut st = NormalizerState::default();
    let doc = br#"{"FD": "1", "ID": "_TestVM", "UD": "2"}"#;
    assert!(
        normalize("azure.maintenance_v1", &Input::new(doc, at), &mut st)
            .unwrap()
            .is_empty()
    );
    assert_eq!(st.azure_maintenance_v1.name.as_deref(), Some("TestVM"));
    assert_eq!(st.azure_maintenance_v1.update_domain, Some(2));
    assert_eq!(st.azure_maintenance_v1.fault_domain, Some(1));
}

/// Every emitted event survives its own JSON round trip (the event schema's four-digit years
/// included).
fn check_round_trip(evs: &[Event]) {
    for ev in evs {
        let text = serde_json::to_string(ev).unwrap();
        assert_eq!(&Event::from_json_str(&text).unwrap(), ev, "{text}");
    }
}

fn check_se(st: &mut NormalizerState, bytes: &[u8], at: &str) {
    if let Ok(evs) = se(st, bytes, at) {
        for ev in &evs {
            assert!(ev.id.starts_with("azure.scheduled_events:"));
            assert_eq!(ev.source, Source::AzureScheduledEvents);
            assert!(ev.maintenance.is_some());
        }
        check_round_trip(&evs);
    }
}

fn check_v1(st: &mut NormalizerState, bytes: &[u8], at: &str) {
    if let Ok(evs) = normalize("azure.maintenance_v1", &Input::new(bytes, t(at)), st) {
        for ev in &evs {
            assert!(ev.id.starts_with("azure.maintenance_v1:"));
            assert_eq!(ev.source, Source::AzureMaintenanceV1);
        }
        check_round_trip(&evs);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut st = NormalizerState::default();
        check_se(&mut st, &bytes, "2026-04-20T22:00:00Z");
        check_v1(&mut st, &bytes, "2026-04-20T22:00:00Z");
    }

    /// Arbitrary field values through a persisted state: no panic, and every event (inferred
    /// ones included) round-trips.
    #[test]
    fn arbitrary_field_values_round_trip(
        nb in time_like(), created in time_like(), eg_time in time_like(),
        status in prop::sample::select(vec!["Scheduled", "Started", "Completed", "Canceled", "Paused", ""]),
        ty in prop::sample::select(vec!["Freeze", "Reboot", "Redeploy", "Preempt", "Terminate", "Hibernate"]),
        duration in any::<i64>(), incarnation in any::<i64>(),
    ) {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let doc = format!(
            r#"{{"DocumentIncarnation": {incarnation}, "Events": [{{"EventId": "E1", "EventStatus": {}, "EventType": {}, "Resources": ["vm1"], "NotBefore": {}, "DurationInSeconds": {duration}, "EventSource": "Platform"}}]}}"#,
            q(status), q(ty), q(&nb)
        );
        let mut st = NormalizerState::default();
        check_se(&mut st, &fixture("azure-scheduled-events-empty.json"), "2026-04-20T22:00:00Z");
        check_se(&mut st, doc.as_bytes(), "2026-04-20T22:00:01Z");
        let gone = format!(r#"{{"DocumentIncarnation": {}, "Events": []}}"#, incarnation.wrapping_add(1));
        check_se(&mut st, gone.as_bytes(), "2026-04-20T22:00:02Z");
        let eg = String::from_utf8(fixture("azure-scheduled-events-eventgrid-freeze-started.json"))
            .unwrap()
            .replace("2017-06-26T18:41:00.9584103Z", &eg_time)
            .replace("Mon, 19 Sep 2025 18:29:47 GMT", &nb);
        check_se(&mut NormalizerState::default(), eg.as_bytes(), "2026-04-20T22:00:00Z");
        let v1 = format!(r#"{{"EventID": "e", "EventCreationTime": {}}}"#, q(&created));
        check_v1(&mut NormalizerState::default(), v1.as_bytes(), "2026-04-20T22:00:00Z");
        let v1 = format!(r#"{{"EventCreationTime": {}}}"#, q(&created));
        check_v1(&mut NormalizerState::default(), v1.as_bytes(), "2026-04-20T22:00:00Z");
    }

    #[test]
    fn mutated_fixtures_never_panic(pos in 0usize..600, byte in any::<u8>(), which in 0usize..5) {
        let files = [
            "azure-scheduled-events-freeze-live-migration-scheduled.json",
            "azure-scheduled-events-preempt-spot.json",
            "azure-scheduled-events-eventgrid-freeze-started.json",
            "azure-scheduled-events-terminate-vmss.json",
            "azure-maintenance-v1-reboot-pending.json",
        ];
        let mut doc = fixture(files[which]);
        let p = pos % doc.len();
        doc[p] = byte;
        let mut st = NormalizerState::default();
        check_se(&mut st, &fixture("azure-scheduled-events-empty.json"), "2026-04-20T22:00:00Z");
        check_se(&mut st, &doc, "2026-04-20T22:00:00Z");
        check_v1(&mut st, &doc, "2026-04-20T22:00:00Z");
        // And what vanishes from it.
        check_se(&mut st, br#"{"DocumentIncarnation": 1000, "Events": []}"#, "2026-04-20T22:00:01Z");
    }
}

/// A document with `DocumentIncarnation` and no `Events` (or `"Events": null`) has nothing
/// scheduled; one with `Events` and no `DocumentIncarnation` is a shape error, not a payload
/// from some other source.
#[test]
fn incarnation_without_events_is_empty_and_events_without_incarnation_is_a_shape_error() {
    for doc in [
        &br#"{"DocumentIncarnation": 5}"#[..],
        br#"{"DocumentIncarnation": 5, "Events": null}"#,
    ] {
        let mut st = NormalizerState::default();
        let evs = se(&mut st, doc, "2026-04-20T22:00:00Z").unwrap();
        assert!(evs.is_empty());
        assert_eq!(st.azure_scheduled_events.incarnation, Some(5));
    }
    let mut st = NormalizerState::default();
    let err = se(&mut st, br#"{"Events": []}"#, "2026-04-20T22:00:00Z").unwrap_err();
    match &err {
        NormalizeError::Shape { path, found, .. } => {
            assert_eq!(path, "DocumentIncarnation");
            assert_eq!(found, "nothing");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert_eq!(st, NormalizerState::default());
}

fn many_events(incarnation: i64, ids: impl Iterator<Item = String>) -> Vec<u8> {
    let events: Vec<serde_json::Value> = ids
        .map(|id| {
            serde_json::json!({"EventId": id, "EventStatus": "Scheduled", "EventType": "Freeze",
                "ResourceType": "VirtualMachine", "Resources": ["vm"], "EventSource": "Platform"})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"DocumentIncarnation": incarnation, "Events": events}))
        .unwrap()
}

/// The state tracks at most 1024 events: 1024 are all kept, and at 1025 the one first seen
/// earliest goes (here `zz-old`, which is not the smallest id, so the choice is by age).
#[test]
fn tracking_is_capped_at_1024_and_the_oldest_goes_first() {
    let mut st = NormalizerState::default();
    let old = "azure.scheduled_events:zz-old/vm";
    se(
        &mut st,
        &many_events(1, std::iter::once("zz-old".to_string())),
        "2026-04-20T22:00:00Z",
    )
    .unwrap();
    let ids =
        |n: usize| std::iter::once("zz-old".to_string()).chain((0..n).map(|i| format!("e{i:05}")));
    let evs = se(&mut st, &many_events(2, ids(1023)), "2026-04-20T22:01:00Z").unwrap();
    assert_eq!(evs.len(), 1023, "the new ones");
    let tracked = &st.azure_scheduled_events.events;
    assert_eq!(tracked.len(), 1024);
    assert!(tracked.contains_key(old));
    let evs = se(&mut st, &many_events(3, ids(1024)), "2026-04-20T22:02:00Z").unwrap();
    assert_eq!(evs.len(), 1, "only e01023 is new");
    let tracked = &st.azure_scheduled_events.events;
    assert_eq!(tracked.len(), 1024);
    assert!(!tracked.contains_key(old), "the oldest is dropped");
    assert!(tracked.contains_key("azure.scheduled_events:e00000/vm"));
    assert!(tracked.contains_key("azure.scheduled_events:e01023/vm"));
}

/// One entry naming `vms` VMs, with a description of `description` bytes.
fn one_entry(vms: usize, description: usize) -> Vec<u8> {
    let names: Vec<String> = (0..vms).map(|i| format!("vm{i}")).collect();
    serde_json::to_vec(&serde_json::json!({"DocumentIncarnation": 1, "Events": [
        {"EventId": "E", "EventStatus": "Scheduled", "EventType": "Freeze",
         "ResourceType": "VirtualMachine", "Resources": names, "EventSource": "Platform",
         "Description": "d".repeat(description)}
    ]}))
    .unwrap()
}

/// Each VM's event keeps its entry in `raw` with its own name only: an entry naming many VMs
/// is not copied whole into each of their events (with 200,000 names, 4 MiB, that took
/// hundreds of GB), and a document that would still make too much is refused.
#[test]
fn an_entry_naming_many_vms_is_kept_once_per_vm_narrowed_to_it() {
    let mut st = NormalizerState::default();
    let evs = se(&mut st, &one_entry(4096, 10), "2026-04-20T22:00:00Z").unwrap();
    assert_eq!(evs.len(), 4096);
    for (i, e) in evs.iter().enumerate().step_by(511) {
        let raw = e.raw.as_ref().unwrap();
        let name = e.resource.name.as_deref().unwrap();
        assert_eq!(raw["Resources"], serde_json::json!([name]), "event {i}");
        assert_eq!(raw["EventId"], "E");
        assert_eq!(raw["Description"], "d".repeat(10));
    }
    // More VMs than a document may name: refused, the state unchanged.
    let before = st.clone();
    let err = se(&mut st, &one_entry(200_000, 10), "2026-04-20T22:01:00Z").unwrap_err();
    assert!(
        matches!(&err, NormalizeError::Shape { path, .. } if path == "Events[0].Resources"),
        "{err}"
    );
    assert!(err.to_string().contains("at most 4096 VM events"), "{err}");
    assert_eq!(st, before);
    // A long description is copied into each VM's event: within the bound for two VMs,
    // refused for eight.
    let mut fresh = NormalizerState::default();
    let two = se(&mut fresh, &one_entry(2, 3 << 20), "2026-04-20T22:02:00Z").unwrap();
    assert_eq!(two.len(), 2);
    let err = se(&mut fresh, &one_entry(8, 3 << 20), "2026-04-20T22:03:00Z").unwrap_err();
    assert!(err.to_string().contains("bytes of entries"), "{err}");
}

/// The approval (StartRequests) starts an event for every VM it lists, and the host reads
/// them from the raw entry of its own VM's event: that one keeps the whole list.
#[test]
fn this_vms_own_event_keeps_every_name_its_entry_lists() {
    let mut st = NormalizerState::default();
    let doc = one_entry(3, 10);
    let evs = normalize(
        "azure.scheduled_events",
        &Input::new(&doc, t("2026-04-20T22:00:00Z")).self_name("VM1"),
        &mut st,
    )
    .unwrap();
    let by_name = |n: &str| {
        evs.iter()
            .find(|e| e.resource.name.as_deref() == Some(n))
            .unwrap()
    };
    assert_eq!(by_name("vm1").resource.is_self, Some(true));
    assert_eq!(
        by_name("vm1").raw.as_ref().unwrap()["Resources"],
        serde_json::json!(["vm0", "vm1", "vm2"])
    );
    assert_eq!(
        by_name("vm2").raw.as_ref().unwrap()["Resources"],
        serde_json::json!(["vm2"])
    );
}

#[test]
fn an_event_grid_envelope_naming_many_vms_is_kept_narrowed_to_each() {
    let names: Vec<String> = (0..300).map(|i| format!("myvmss_{i}")).collect();
    let doc = event_grid_doc("Started", "Platform", serde_json::json!(names));
    let mut st = NormalizerState::default();
    let evs = se(&mut st, &doc, "2025-09-19T18:31:00Z").unwrap();
    assert_eq!(evs.len(), 300);
    for e in &evs {
        let raw = e.raw.as_ref().unwrap();
        assert_eq!(raw["id"], "eg-1", "the envelope is kept");
        assert_eq!(
            raw["data"]["resourceInfo"]["properties"]["Resources"],
            serde_json::json!([e.resource.name.as_deref().unwrap()])
        );
    }
}

fn event_grid_doc(status: &str, source: &str, resources: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": "eg-1",
        "eventType": "Microsoft.ResourceNotifications.MaintenanceResources.ScheduledEventEmitted",
        "eventTime": "2025-09-19T18:30:00Z",
        "data": {"resourceInfo": {
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/providers/microsoft.maintenance/scheduledevents/e",
            "type": "microsoft.maintenance/scheduledEvents",
            "location": "eastus",
            "properties": {"EventId": "e-1", "EventStatus": status, "EventType": "Reboot",
                "EventSource": source, "Resources": resources}
        }}
    }))
    .unwrap()
}

/// Blank VM names are no VM names: `["", " "]` lists none, and that is a shape error. The same
/// VM listed twice in different case is one event.
#[test]
fn blank_resources_are_rejected_and_duplicates_are_one_event() {
    let doc = br#"{"DocumentIncarnation": 2, "Events": [{"EventId": "X", "EventStatus": "Scheduled", "EventType": "Reboot", "Resources": ["", " "]}]}"#;
    let mut st = NormalizerState::default();
    match se(&mut st, doc, "2026-04-20T22:00:00Z").unwrap_err() {
        NormalizeError::Shape { path, expected, .. } => {
            assert_eq!(path, "Events[0].Resources");
            assert_eq!(expected, "at least one VM name");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    assert_eq!(st, NormalizerState::default());
    let evs = se(
        &mut st,
        &event_grid_doc("Scheduled", "Platform", serde_json::json!(["vm", "VM"])),
        "2025-09-19T18:30:00Z",
    )
    .unwrap();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].id, "azure.scheduled_events:e-1/vm");
    assert_eq!(evs[0].resource.name.as_deref(), Some("vm"));
}

/// Event Grid reports the end of an event explicitly: `Completed`, and `Canceled` in both
/// spellings.
#[test]
fn event_grid_completed_and_canceled_in_both_spellings() {
    for (sent, want) in [
        ("Completed", S::Completed),
        ("Canceled", S::Canceled),
        ("Cancelled", S::Canceled),
        ("Started", S::Started),
    ] {
        let mut st = NormalizerState::default();
        let evs = se(
            &mut st,
            &event_grid_doc(sent, "Platform", serde_json::json!(["vm"])),
            "2025-09-19T18:30:00Z",
        )
        .unwrap();
        assert_eq!(evs.len(), 1);
        let m = evs[0].maintenance.as_ref().unwrap();
        assert_eq!(m.status, want, "{sent}");
        assert!(!m.inferred);
    }
}

/// Only `Platform` and `User` name an initiator; anything else (or nothing) is no initiator.
#[test]
fn an_unknown_event_source_gives_no_initiator() {
    for (source, want) in [
        ("Platform", Some(Initiator::Platform)),
        ("user", Some(Initiator::User)),
        ("Customer", None),
        ("", None),
    ] {
        let mut st = NormalizerState::default();
        let evs = se(
            &mut st,
            &event_grid_doc("Scheduled", source, serde_json::json!(["vm"])),
            "2025-09-19T18:30:00Z",
        )
        .unwrap();
        assert_eq!(
            evs[0].maintenance.as_ref().unwrap().initiator,
            want,
            "{source:?}"
        );
    }
}

/// An object with `type` but no `data` is not an Event Grid envelope: it is some other
/// payload, not a malformed Event Grid event.
#[test]
fn type_without_data_is_the_wrong_payload_not_an_event_grid_shape_error() {
    let mut st = NormalizerState::default();
    for doc in [
        &br#"{"type": "x"}"#[..],
        br#"{"eventType": "x", "id": "1"}"#,
    ] {
        match se(&mut st, doc, "2025-09-19T18:30:00Z") {
            Err(NormalizeError::WrongPayload { expected, .. }) => {
                assert_eq!(expected, "azure.scheduled_events");
            }
            other => panic!("{}: {other:?}", String::from_utf8_lossy(doc)),
        }
    }
    assert_eq!(st, NormalizerState::default());
}

// ---- cargo-mutants survivors in the legacy endpoint and the integer fields ----

/// The legacy notice is an event when it has either of EventID and EventCreationTime: a
/// document with one of them is still a reboot coming, and must not be refused for lacking the
/// other.
#[test]
fn legacy_maintenance_notice_with_only_the_id_or_only_the_creation_time_is_an_event() {
    let at = t("2015-09-15T06:43:00Z");
    let mut st = NormalizerState::default();
    let only_id = br#"{"EventID": "6f0a13a3-dc0d-4bbe-ab24-df710a3917e6"}"#;
    let evs = normalize("azure.maintenance_v1", &Input::new(only_id, at), &mut st).unwrap();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(
        evs[0].id,
        "azure.maintenance_v1:6f0a13a3-dc0d-4bbe-ab24-df710a3917e6"
    );
    assert_eq!(evs[0].time, at, "no creation time: the observation time");
    assert_eq!(evs[0].maintenance.as_ref().unwrap().not_before, None);

    let only_created = br#"{"EventCreationTime": "9\/15\/2015 6:42:51 AM"}"#;
    let evs = normalize(
        "azure.maintenance_v1",
        &Input::new(only_created, at),
        &mut st,
    )
    .unwrap();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].time, t("2015-09-15T06:42:51Z"));
    assert_eq!(
        evs[0].maintenance.as_ref().unwrap().not_before,
        Some(t("2015-09-15T06:47:51Z"))
    );
}

/// A blank update or fault domain (`"UD": ""`) is not given, as a blank string is everywhere
/// else, rather than a malformed integer that would make the whole InstanceInfo unreadable.
#[test]
fn legacy_instance_info_with_blank_domains_keeps_the_name() {
    let mut st = NormalizerState::default();
    let doc = br#"{"ID": "_TestVM", "UD": "", "FD": "  "}"#;
    let evs = normalize(
        "azure.maintenance_v1",
        &Input::new(doc, t("2015-09-15T06:43:00Z")),
        &mut st,
    )
    .unwrap();
    assert!(evs.is_empty());
    assert_eq!(st.azure_maintenance_v1.name.as_deref(), Some("TestVM"));
    assert_eq!(st.azure_maintenance_v1.update_domain, None);
    assert_eq!(st.azure_maintenance_v1.fault_domain, None);
}

/// A document naming a VM longer than the history keeps is refused, and the state the
/// earlier documents built is left as it was.
#[test]
fn a_document_refused_for_a_field_s_size_changes_no_state() {
    let mut st = NormalizerState::default();
    se(&mut st, &one_entry(2, 10), "2026-04-20T22:00:00Z").unwrap();
    let before = st.clone();
    let long = "v".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1);
    let doc = serde_json::to_vec(&serde_json::json!({"DocumentIncarnation": 2, "Events": [
        {"EventId": "F", "EventStatus": "Scheduled", "EventType": "Freeze",
         "ResourceType": "VirtualMachine", "Resources": [long], "EventSource": "Platform"}
    ]}))
    .unwrap();
    let err = se(&mut st, &doc, "2026-04-20T22:01:00Z").unwrap_err();
    assert!(err.to_string().contains("at most 2048 bytes"), "{err}");
    assert_eq!(st, before);
}

/// An InstanceInfo whose `ID` the history could not keep (over 2048 bytes, or holding a NUL)
/// is refused, and the name the earlier one gave is kept: it is every later notice's
/// `resource.name`, which would have every notice refused.
#[test]
fn legacy_instance_info_with_an_id_the_history_cannot_keep_is_refused() {
    let at = t("2015-09-15T06:43:00Z");
    let mut st = NormalizerState::default();
    let good = br#"{"FD": "1", "ID": "_TestVM", "UD": "2"}"#;
    normalize("azure.maintenance_v1", &Input::new(good, at), &mut st).unwrap();
    let before = st.clone();
    let long = format!(
        "_{}",
        "v".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1)
    );
    for (id, says) in [
        (long.as_str(), "at most 2048 bytes"),
        ("_Test\0VM", "without NUL"),
    ] {
        let doc = serde_json::to_vec(&serde_json::json!({"FD": "0", "ID": id, "UD": "0"})).unwrap();
        match normalize("azure.maintenance_v1", &Input::new(&doc, at), &mut st) {
            Err(NormalizeError::Shape { path, expected, .. }) => {
                assert_eq!(path, "$.ID");
                assert!(expected.contains(says), "{expected}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(st, before);
    }
    let pending = br#"{"EventID": "e1"}"#;
    let evs = normalize("azure.maintenance_v1", &Input::new(pending, at), &mut st).unwrap();
    assert_eq!(evs[0].resource.name.as_deref(), Some("TestVM"));
}
