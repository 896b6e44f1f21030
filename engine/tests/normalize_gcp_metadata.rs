#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The `gcp.metadata` normalizer beyond its fixtures' snapshots (tests/snapshots_fixtures.rs): the
//! vendor quirks of `docs/protocols.md` "GCP metadata", the stateful maintenance-event sequence,
//! edge cases, and a bounded fuzz.

mod common;

use chrono::{DateTime, Duration, Utc};
use common::{hash_id, time_like};
use keel_engine::normalize::{normalize, Input, NormalizeError, NormalizerState};
use keel_engine::{Event, Initiator, Kind, MaintenanceStatus, MaintenanceType, Resource, Source};
use proptest::prelude::*;
use serde_json::Value;

const NAME: &str = "gcp.metadata";

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/../policies/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn t0() -> DateTime<Utc> {
    ts("2026-04-20T12:00:00Z")
}

fn at(payload: &[u8], observed: DateTime<Utc>, st: &mut NormalizerState) -> Vec<Event> {
    normalize(NAME, &Input::new(payload, observed), st).unwrap_or_else(|e| panic!("{e}"))
}

fn run(payload: &[u8]) -> Result<Vec<Event>, NormalizeError> {
    normalize(
        NAME,
        &Input::new(payload, t0()),
        &mut NormalizerState::default(),
    )
}

fn one(payload: &[u8]) -> Event {
    let mut evs = run(payload).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(evs.len(), 1, "{evs:#?}");
    evs.remove(0)
}

fn me_id(value: &str, first_seen: &str) -> String {
    hash_id(
        "gcp.metadata",
        &["instance/maintenance-event", value, first_seen],
    )
}

/// Fields every GCP event shares.
fn common(ev: &Event) {
    assert_eq!(ev.source, Source::GcpMetadata);
    assert_eq!(ev.kind, Kind::Maintenance);
    assert!(ev.health.is_none() && ev.failure.is_none());
    let m = ev.maintenance.as_ref().unwrap();
    assert_eq!(m.initiator, Some(Initiator::Platform));
    assert_eq!(m.duration_s, None);
    assert_eq!(m.vendor_id, None, "GCP gives no event id");
    assert!(ev.id.starts_with("gcp.metadata:"), "{}", ev.id);
}

/// Serializes and reloads the state, as `keel normalize --state FILE` does between calls.
fn persist(st: &NormalizerState) -> NormalizerState {
    serde_json::from_str(&serde_json::to_string(st).unwrap()).unwrap()
}

// ---- maintenance-event fixtures --------------------------------------------------------------

#[test]
fn maintenance_event_wait_for_change_transcript_is_the_bare_value() {
    // Its snapshot states the event; a hanging-GET transcript reads as the bare text.
    let ev = one(&fixture("gcp-maintenance-event-wait-for-change.http"));
    let bare = one(&fixture("gcp-maintenance-event-migrate.txt"));
    assert_eq!(bare, ev);
}

#[test]
fn numeric_etag_becomes_incarnation() {
    let t = b"GET /computeMetadata/v1/instance/maintenance-event?wait_for_change=true HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\nHTTP/1.1 200 OK\r\nETag: \"1234\"\r\n\r\nTERMINATE_ON_HOST_MAINTENANCE\r\n";
    let ev = one(t);
    assert_eq!(ev.maintenance.unwrap().incarnation, Some(1234));
}

#[test]
fn missing_metadata_flavor_is_a_clear_error() {
    let e = run(&fixture("gcp-metadata-403-missing-flavor.txt")).unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    assert!(e.to_string().contains("Metadata-Flavor: Google"), "{e}");
    // The real server's longer wording, with its status.
    let real = b"Your client does not have permission to get URL /computeMetadata/v1/instance/maintenance-event from this server. Missing Metadata-Flavor:Google header.";
    let e = normalize(
        NAME,
        &Input::new(real, t0()).http_status(403),
        &mut NormalizerState::default(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("403") && e.to_string().contains("Metadata-Flavor"),
        "{e}"
    );
    let t = b"GET /computeMetadata/v1/instance/maintenance-event HTTP/1.1\n\nHTTP/1.1 403 Forbidden\n\nMissing Metadata-Flavor:Google header.\n";
    assert!(run(t).unwrap_err().to_string().contains("Metadata-Flavor"));
}

// ---- the stateful sequence -------------------------------------------------------------------------

#[test]
fn sequence_none_migrate_migrate_none() {
    let none = fixture("gcp-maintenance-event-none.txt");
    let migrate = fixture("gcp-maintenance-event-migrate.txt");
    let mut st = NormalizerState::default();

    assert_eq!(at(&none, t0(), &mut st), vec![]);
    st = persist(&st);

    let t1 = t0() + Duration::seconds(30);
    let started = at(&migrate, t1, &mut st);
    assert_eq!(started.len(), 1);
    let id = me_id("MIGRATE_ON_HOST_MAINTENANCE", "2026-04-20T12:00:30Z");
    assert_eq!(started[0].id, id);
    assert_eq!(
        started[0].maintenance.as_ref().unwrap().status,
        MaintenanceStatus::Started
    );
    st = persist(&st);

    // Unchanged value: already reported, nothing new (like an unchanged Azure incarnation).
    assert_eq!(at(&migrate, t1 + Duration::seconds(5), &mut st), vec![]);
    assert_eq!(at(&migrate, t1 + Duration::seconds(50), &mut st), vec![]);
    st = persist(&st);

    let t2 = t1 + Duration::seconds(120);
    let done = at(&none, t2, &mut st);
    assert_eq!(done.len(), 1);
    let ev = &done[0];
    common(ev);
    assert_eq!(ev.id, id, "completed carries the started event's id");
    assert_eq!(ev.time, t2);
    let m = ev.maintenance.as_ref().unwrap();
    assert_eq!(m.type_, MaintenanceType::LiveMigrate);
    assert_eq!(m.status, MaintenanceStatus::Completed);
    assert_eq!(m.not_before, Some(t1 + Duration::seconds(60)));
    assert_eq!(
        m.vendor_type.as_deref(),
        Some("MIGRATE_ON_HOST_MAINTENANCE")
    );
    assert!(!m.inferred);
    assert_eq!(ev.raw, Some(Value::String("NONE".into())));

    // NONE again: nothing. The next maintenance gets a new id.
    assert_eq!(at(&none, t2 + Duration::seconds(1), &mut st), vec![]);
    let next = at(&migrate, t2 + Duration::days(14), &mut st);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].id, "gcp.metadata:7a25478b752249d0",
        "next fortnight's identical notice is a new event"
    );
    assert_ne!(next[0].id, id);
}

#[test]
fn restarted_poller_with_its_state_file_keeps_the_id() {
    // The observation time is the first-seen epoch only through state.
    let mut st = NormalizerState::default();
    let a = at(&fixture("gcp-maintenance-event-migrate.txt"), t0(), &mut st);
    let mut st2 = persist(&st);
    // A restarted poller that kept its state file: nothing new; the completion keeps the id.
    assert_eq!(
        at(
            &fixture("gcp-maintenance-event-migrate.txt"),
            t0() + Duration::seconds(3),
            &mut st2
        ),
        vec![]
    );
    let done = at(
        &fixture("gcp-maintenance-event-none.txt"),
        t0() + Duration::seconds(90),
        &mut st2,
    );
    assert_eq!(done[0].id, a[0].id);
}

#[test]
fn shutdown_and_unknown_values() {
    let ev = one(b"SHUTDOWN_ON_HOST_MAINTENANCE");
    let m = ev.maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Terminate);
    assert_eq!(
        m.vendor_type.as_deref(),
        Some("SHUTDOWN_ON_HOST_MAINTENANCE")
    );
    assert_eq!(m.status, MaintenanceStatus::Started);

    let ev = one(b"REPAIR_ON_HOST_MAINTENANCE\n");
    let m = ev.maintenance.unwrap();
    assert_eq!(
        m.type_,
        MaintenanceType::Unknown,
        "any non-NONE value: maintenance imminent"
    );
    assert_eq!(m.vendor_type.as_deref(), Some("REPAIR_ON_HOST_MAINTENANCE"));
    assert_eq!(m.status, MaintenanceStatus::Started);
    assert_eq!(m.not_before, Some(t0() + Duration::seconds(60)));
}

#[test]
fn json_string_form_is_read_as_text() {
    // `?alt=json` returns the value as a JSON string.
    let ev = one(br#""MIGRATE_ON_HOST_MAINTENANCE""#);
    assert_eq!(
        ev.maintenance.as_ref().unwrap().type_,
        MaintenanceType::LiveMigrate
    );
    assert_eq!(
        ev.raw,
        Some(Value::String("MIGRATE_ON_HOST_MAINTENANCE".into()))
    );
}

#[test]
fn self_name_marks_the_event_as_self() {
    let evs = normalize(
        NAME,
        &Input::new(&fixture("gcp-maintenance-event-migrate.txt"), t0()).self_name("vm-1"),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(evs[0].resource.name.as_deref(), Some("vm-1"));
    assert_eq!(evs[0].resource.is_self, Some(true));
}

// ---- preempted ------------------------------------------------------------------------------------------

#[test]
fn preempted_true_repeated_reset_and_again() {
    // The first TRUE is its snapshot. Repeated TRUE: nothing new; FALSE resets; the next
    // TRUE is a new preemption.
    let mut st = NormalizerState::default();
    let first = at(&fixture("gcp-preempted-true.txt"), t0(), &mut st);
    assert_eq!(first.len(), 1);
    assert_eq!(
        at(
            &fixture("gcp-preempted-true.txt"),
            t0() + Duration::seconds(5),
            &mut st
        ),
        vec![]
    );
    assert_eq!(
        at(
            &fixture("gcp-preempted-false.txt"),
            t0() + Duration::hours(1),
            &mut st
        ),
        vec![]
    );
    let again = at(
        &fixture("gcp-preempted-true.txt"),
        t0() + Duration::hours(2),
        &mut st,
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, "gcp.metadata:5ae6e0951d90de9b");
    assert_ne!(again[0].id, first[0].id);
}

#[test]
fn the_request_path_disambiguates_true() {
    let t =
        b"GET /computeMetadata/v1/instance/maintenance-event HTTP/1.1\n\nHTTP/1.1 200 OK\n\nTRUE\n";
    let m = one(t).maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Unknown);
    assert_eq!(m.vendor_type.as_deref(), Some("TRUE"));
    let t = b"GET /computeMetadata/v1/instance/preempted HTTP/1.1\n\nHTTP/1.1 200 OK\n\nMIGRATE_ON_HOST_MAINTENANCE\n";
    let e = run(t).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "instance/preempted"),
        "{e:?}"
    );
    let t = b"GET /computeMetadata/v1/instance/upcoming-maintenance HTTP/1.1\n\nHTTP/1.1 200 OK\n\nNONE\n";
    assert!(matches!(
        run(t).unwrap_err(),
        NormalizeError::WrongPayload { .. }
    ));
}

// ---- upcoming-maintenance ---------------------------------------------------------------------------

#[test]
fn upcoming_maintenance_is_stateless() {
    // Its snapshot states the event; a re-read (any time) yields the same event.
    let p = fixture("gcp-upcoming-maintenance-pending.json");
    let ev = one(&p);
    let again = normalize(
        NAME,
        &Input::new(&p, ts("2030-01-01T00:00:00Z")),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(again, vec![ev]);
}

#[test]
fn upcoming_status_mapping_and_reschedule() {
    let doc = |status: &str, start: &str| {
        format!(
            r#"{{"type": "SCHEDULED", "maintenance_status": "{status}", "window_start_time": "{start}",
                "window_end_time": "2025-09-10T13:28:15+00:00", "latest_window_start_time": "2025-09-12T00:00:00Z"}}"#
        )
    };
    let pending = one(doc("PENDING", "2025-09-10T09:28:15Z").as_bytes());
    let ongoing = one(doc("ONGOING", "2025-09-10T09:28:15Z").as_bytes());
    assert_eq!(
        pending.maintenance.as_ref().unwrap().status,
        MaintenanceStatus::Scheduled
    );
    assert_eq!(
        ongoing.maintenance.as_ref().unwrap().status,
        MaintenanceStatus::Started
    );
    assert_eq!(
        pending.id, ongoing.id,
        "PENDING → ONGOING is the same maintenance"
    );
    // The enum's UNKNOWN and UNDEFINED_MAINTENANCE_STATUS, a value new to Keel, and no
    // status at all say neither that it is coming nor that it began.
    for s in [
        "UNKNOWN",
        "UNDEFINED_MAINTENANCE_STATUS",
        "SOMETHING_NEW",
        "pending ",
    ] {
        let ev = one(doc(s, "2025-09-10T09:28:15Z").as_bytes());
        let want = if s == "pending " {
            MaintenanceStatus::Scheduled
        } else {
            MaintenanceStatus::Unknown
        };
        assert_eq!(ev.maintenance.unwrap().status, want, "{s}");
        assert_eq!(ev.id, pending.id, "{s}: the same maintenance");
    }
    let bare = one(br#"{"type": "SCHEDULED", "window_start_time": "2025-09-10T09:28:15Z"}"#);
    assert_eq!(bare.maintenance.unwrap().status, MaintenanceStatus::Unknown);
    // The owner reschedules (window start moves, latest start does not): same id.
    let moved = one(doc("PENDING", "2025-09-11T09:00:00Z").as_bytes());
    assert_eq!(moved.id, pending.id);
    assert_eq!(
        moved.maintenance.unwrap().not_before,
        Some(ts("2025-09-11T09:00:00Z"))
    );
}

#[test]
fn camel_case_rest_and_wider_enums() {
    let rest = br#"{"type": "UNSCHEDULED", "maintenanceStatus": "ONGOING", "canReschedule": false,
        "windowStartTime": "2025-09-10T09:28:15Z", "windowEndTime": "2025-09-10T13:28:15Z",
        "latestWindowStartTime": "2025-09-10T09:28:16Z", "maintenanceReasons": ["FAILURE_GPU", "PLATFORM_SOFTWARE_UPGRADE"]}"#;
    let ev = one(rest);
    let m = ev.maintenance.as_ref().unwrap();
    assert_eq!(m.type_, MaintenanceType::HostMaintenance);
    assert_eq!(m.status, MaintenanceStatus::Started);
    assert_eq!(m.vendor_type.as_deref(), Some("UNSCHEDULED"));
    assert_eq!(m.not_before, Some(ts("2025-09-10T09:28:15Z")));
    assert_eq!(m.not_after, Some(ts("2025-09-10T13:28:15Z")));
    assert_eq!(
        m.description.as_deref(),
        Some("maintenance reasons: FAILURE_GPU, PLATFORM_SOFTWARE_UPGRADE")
    );
    // Same content in snake_case: same event apart from raw.
    let snake = br#"{"type": "UNSCHEDULED", "maintenance_status": "ONGOING",
        "window_start_time": "2025-09-10T09:28:15Z", "window_end_time": "2025-09-10T13:28:15Z",
        "latest_window_start_time": "2025-09-10T09:28:16Z", "maintenance_reasons": ["FAILURE_GPU", "PLATFORM_SOFTWARE_UPGRADE"]}"#;
    let s = one(snake);
    assert_eq!(
        (s.id.as_str(), &s.maintenance),
        (ev.id.as_str(), &ev.maintenance)
    );
    // Type-only documents with the documented enum values are read; UNKNOWN_TYPE kept raw.
    let ev = one(br#"{"type": "UNKNOWN_TYPE"}"#);
    assert_eq!(
        ev.maintenance.unwrap().vendor_type.as_deref(),
        Some("UNKNOWN_TYPE")
    );
}

#[test]
fn upcoming_inside_rest_instance() {
    let doc = br#"{"kind": "compute#instance", "id": "1234567890123", "name": "vm-1",
        "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/europe-west1-b",
        "resourceStatus": {"upcomingMaintenance": {"type": "SCHEDULED", "maintenanceStatus": "PENDING",
          "windowStartTime": "2025-09-10T09:28:15Z", "windowEndTime": "2025-09-10T13:28:15Z"}}}"#;
    let evs = normalize(
        NAME,
        &Input::new(doc, t0()).self_name("vm-1"),
        &mut NormalizerState::default(),
    )
    .unwrap();
    assert_eq!(evs.len(), 1);
    let r = &evs[0].resource;
    assert_eq!(r.id.as_deref(), Some("1234567890123"));
    assert_eq!(r.name.as_deref(), Some("vm-1"));
    assert_eq!(r.zone.as_deref(), Some("europe-west1-b"));
    assert_eq!(r.is_self, Some(true));
    assert_eq!(
        evs[0].id,
        hash_id(
            "gcp.metadata",
            &[
                "instance/upcoming-maintenance",
                "SCHEDULED",
                "2025-09-10T09:28:15Z"
            ]
        )
    );
    // No upcoming maintenance on the instance: nothing.
    assert_eq!(
        run(br#"{"name": "vm-1", "resourceStatus": {}}"#).unwrap(),
        vec![]
    );
    // Wrapped alone.
    let w = one(br#"{"upcomingMaintenance": {"type": "SCHEDULED", "windowStartTime": "2025-09-10T09:28:15Z"}}"#);
    assert_eq!(w.resource, Resource::default());
}

#[test]
fn upcoming_without_window_uses_first_seen_until_a_404() {
    let doc = br#"{"type": "UNSCHEDULED", "maintenance_status": "ONGOING"}"#;
    let mut st = NormalizerState::default();
    let a = at(doc, t0(), &mut st);
    let b = at(doc, t0() + Duration::minutes(5), &mut st);
    assert_eq!(a[0].id, b[0].id, "first seen kept in state");
    assert_eq!(
        a[0].id,
        hash_id(
            "gcp.metadata",
            &[
                "instance/upcoming-maintenance",
                "UNSCHEDULED",
                "2026-04-20T12:00:00Z"
            ]
        )
    );
    assert_eq!(a[0].time, t0());
    assert_eq!(
        b[0].time,
        t0() + Duration::minutes(5),
        "no vendor time: observed_at"
    );
    assert_eq!(st.gcp_metadata.upcoming_since, Some(t0()));
    // 404: no upcoming maintenance any more; the next one is new.
    let gone = normalize(
        NAME,
        &Input::new(b"", t0() + Duration::hours(1)).http_status(404),
        &mut st,
    )
    .unwrap();
    assert_eq!(gone, vec![]);
    assert_eq!(st.gcp_metadata.upcoming_since, None);
    let c = at(doc, t0() + Duration::days(3), &mut st);
    assert_eq!(c[0].id, "gcp.metadata:ef08a8997a9b496f");
    assert_ne!(c[0].id, a[0].id);
}

#[test]
fn upcoming_malformed_fields_name_their_path() {
    let e = run(br#"{"type": "SCHEDULED", "window_start_time": "next tuesday"}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "window_start_time"),
        "{e:?}"
    );
    let e = run(br#"{"type": "SCHEDULED", "windowEndTime": 5}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "windowEndTime"),
        "{e:?}"
    );
    let e = run(br#"{"maintenance_status": ["PENDING"]}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "maintenance_status"),
        "{e:?}"
    );
    let e = run(br#"{"type": "SCHEDULED", "maintenance_reasons": ["A", 3]}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "maintenance_reasons[1]"),
        "{e:?}"
    );
    let e = run(br#"{"resourceStatus": {"upcomingMaintenance": {"windowStartTime": "x"}}}"#)
        .unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "resourceStatus.upcomingMaintenance.windowStartTime"),
        "{e:?}"
    );
    let e = run(br#"{"start_time_window": {"earliest": "never"}}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Time { path, .. } if path == "start_time_window.earliest"),
        "{e:?}"
    );
}

// ---- statuses, pages, hostile input ---------------------------------------------------------------

#[test]
fn statuses_and_pages() {
    // 404 and Google's 404 page: nothing.
    let google404 = b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error 404 (Not Found)!!1</title>\n  <p><b>404.</b> <ins>That\xe2\x80\x99s an error.</ins>\n";
    assert_eq!(run(google404).unwrap(), vec![]);
    let t = b"GET /computeMetadata/v1/instance/upcoming-maintenance HTTP/1.1\n\nHTTP/1.1 404 Not Found\n\n";
    assert_eq!(run(t).unwrap(), vec![]);
    // An empty body without a status: nothing; with a 200: an error.
    assert_eq!(run(b"").unwrap(), vec![]);
    let e = normalize(
        NAME,
        &Input::new(b"", t0()).http_status(200),
        &mut NormalizerState::default(),
    )
    .unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    // 503 during maintenance: retry.
    let t = b"GET /computeMetadata/v1/instance/maintenance-event?wait_for_change=true HTTP/1.1\n\nHTTP/1.1 503 Service Unavailable\n\n";
    assert!(run(t).unwrap_err().to_string().contains("retry"));
    // Other HTML.
    assert!(matches!(
        run(b"<html>hi</html>").unwrap_err(),
        NormalizeError::WrongPayload { .. }
    ));
}

#[test]
fn hostile_text_is_rejected() {
    for bad in [
        &b"MIGRATE ON HOST"[..],
        b"NONE\nTRUE",
        b"-1",
        b"\x1b[31mNONE",
        b"[1, 2]",
        b"{\"a\": 1}",
        b"3.5",
    ] {
        let e = run(bad).unwrap_err();
        assert!(
            matches!(
                e,
                NormalizeError::WrongPayload { .. } | NormalizeError::Json { .. }
            ),
            "{:?}: {e:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }
    let long = "A".repeat(200);
    assert!(run(long.as_bytes()).is_err());
    assert!(matches!(
        run(b"\xff").unwrap_err(),
        NormalizeError::NotUtf8 { .. }
    ));
}

#[test]
fn state_is_stable_json() {
    let mut st = NormalizerState::default();
    at(&fixture("gcp-maintenance-event-migrate.txt"), t0(), &mut st);
    at(&fixture("gcp-preempted-true.txt"), t0(), &mut st);
    let v = serde_json::to_value(&st.gcp_metadata).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "maintenance_event": "MIGRATE_ON_HOST_MAINTENANCE",
            "maintenance_event_since": "2026-04-20T12:00:00Z",
            "preempted_since": "2026-04-20T12:00:00Z"
        })
    );
    // Old or partial state files load (every field defaults).
    let partial: NormalizerState = serde_json::from_str(r#"{"gcp_metadata": {}}"#).unwrap();
    assert_eq!(partial, NormalizerState::default());
}

#[test]
fn events_round_trip_through_the_event_schema() {
    for f in [
        "gcp-maintenance-event-migrate.txt",
        "gcp-maintenance-event-terminate.txt",
        "gcp-maintenance-event-wait-for-change.http",
        "gcp-preempted-true.txt",
        "gcp-upcoming-maintenance-pending.json",
    ] {
        for ev in run(&fixture(f)).unwrap() {
            let s = serde_json::to_string(&ev).unwrap();
            assert_eq!(Event::from_json_str(&s).unwrap(), ev, "{f}");
        }
    }
}

// ---- Fuzz ---------------------------------------------------------------------------------------

const FIXTURES: &[&str] = &[
    "gcp-maintenance-event-migrate.txt",
    "gcp-maintenance-event-none.txt",
    "gcp-maintenance-event-terminate.txt",
    "gcp-maintenance-event-wait-for-change.http",
    "gcp-metadata-403-missing-flavor.txt",
    "gcp-preempted-false.txt",
    "gcp-preempted-true.txt",
    "gcp-upcoming-maintenance-pending.json",
];

fn check(payload: &[u8], status: Option<u16>, observed: DateTime<Utc>, st: &mut NormalizerState) {
    let mut input = Input::new(payload, observed).self_name("vm-1");
    if let Some(s) = status {
        input = input.http_status(s);
    }
    if let Ok(evs) = normalize(NAME, &input, st) {
        for ev in evs {
            assert!(ev.id.starts_with("gcp.metadata:"));
            assert_eq!(ev.source, Source::GcpMetadata);
            assert!(ev.maintenance.is_some() && ev.raw.is_some());
            // RFC 3339 has four-digit years: only a sane observation time round-trips.
            if observed < ts("9000-01-01T00:00:00Z") {
                let s = serde_json::to_string(&ev).unwrap();
                assert_eq!(Event::from_json_str(&s).unwrap(), ev);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&bytes, None, t0(), &mut NormalizerState::default());
    }

    #[test]
    fn mutated_fixtures_never_panic(
        idx in 0..FIXTURES.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..8),
        cut in proptest::option::of(any::<usize>()),
        status in proptest::option::of(prop_oneof![Just(200u16), Just(404), Just(403), Just(503)]),
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
        check(&p, status, t0(), &mut NormalizerState::default());
    }

    /// Random sequences through one persisted state: no panic, and at most one open
    /// maintenance-event at a time (every completed id was started before).
    #[test]
    fn random_sequences_keep_state_consistent(
        seq in proptest::collection::vec(0..FIXTURES.len(), 1..24),
        extreme in any::<bool>(),
    ) {
        let mut st = NormalizerState::default();
        let base = if extreme { DateTime::<Utc>::MAX_UTC - Duration::seconds(30) } else { t0() };
        let mut started: Vec<String> = Vec::new();
        for (i, idx) in seq.into_iter().enumerate() {
            let when = base.checked_add_signed(Duration::seconds(i as i64)).unwrap_or(base);
            let p = fixture(FIXTURES[idx]);
            check(&p, None, when, &mut st.clone());
            if let Ok(evs) = normalize(NAME, &Input::new(&p, when), &mut st) {
                for ev in evs {
                    let m = ev.maintenance.unwrap();
                    match m.status {
                        MaintenanceStatus::Started => started.push(ev.id),
                        MaintenanceStatus::Completed => prop_assert!(started.contains(&ev.id)),
                        _ => {}
                    }
                }
            }
            // The state file itself is RFC 3339 too.
            if !extreme {
                st = persist(&st);
            }
        }
    }

    #[test]
    fn arbitrary_upcoming_values_never_panic(
        ty in ".{0,20}", status in ".{0,20}", start in time_like(), end in time_like(), text in "[A-Z_]{0,40}",
    ) {
        let q = |s: &str| serde_json::to_string(s).unwrap();
        let doc = format!(
            r#"{{"type": {}, "maintenance_status": {}, "window_start_time": {}, "windowEndTime": {}}}"#,
            q(&ty), q(&status), q(&start), q(&end)
        );
        check(doc.as_bytes(), None, t0(), &mut NormalizerState::default());
        let mut st = NormalizerState::default();
        check(text.as_bytes(), None, t0(), &mut st);
        check(text.as_bytes(), None, t0(), &mut st);
        check(b"NONE", None, t0(), &mut st);
    }
}

// ---- cargo-mutants survivors ------------------------------------------------------------------

/// A 403 without the missing-header body is some other refusal (an IAM or proxy denial): it
/// must be reported as forbidden, not as the missing `Metadata-Flavor` header, whose fix (add
/// the header) would not help.
#[test]
fn a_403_without_the_flavor_message_is_forbidden_not_missing_header() {
    let t = b"GET /computeMetadata/v1/instance/maintenance-event HTTP/1.1\nMetadata-Flavor: Google\n\nHTTP/1.1 403 Forbidden\n\nAccess denied.\n";
    let e = run(t).unwrap_err();
    assert!(matches!(e, NormalizeError::WrongPayload { .. }), "{e:?}");
    let s = e.to_string();
    assert!(s.contains("HTTP 403 (forbidden)"), "{s}");
    assert!(!s.contains("Metadata-Flavor"), "{s}");
}

/// The transcript of `instance/preempted` answering TRUE is the preemption notice.
#[test]
fn preempted_transcript_true_is_a_preemption() {
    let t = b"GET /computeMetadata/v1/instance/preempted HTTP/1.1\nMetadata-Flavor: Google\n\nHTTP/1.1 200 OK\nMetadata-Flavor: Google\nContent-Type: application/text\n\nTRUE\n";
    let m = one(t).maintenance.unwrap();
    assert_eq!(m.type_, MaintenanceType::Preempt);
    assert_eq!(m.status, MaintenanceStatus::Started);
}

/// A blank maintenance reason is malformed, like a number there: it is not silently turned
/// into an empty reason in the description.
#[test]
fn a_blank_maintenance_reason_is_a_shape_error() {
    let e =
        run(br#"{"type": "SCHEDULED", "maintenance_reasons": ["FAILURE_GPU", "  "]}"#).unwrap_err();
    assert!(
        matches!(&e, NormalizeError::Shape { path, .. } if path == "maintenance_reasons[1]"),
        "{e:?}"
    );
}

/// A REST Instance with a blank `id` has no id: an empty string would be a resource id that
/// matches nothing.
#[test]
fn a_rest_instance_with_a_blank_id_has_no_id() {
    let doc = br#"{"kind": "compute#instance", "id": " ", "name": "vm-1",
        "resourceStatus": {"upcomingMaintenance": {"type": "SCHEDULED",
          "windowStartTime": "2025-09-10T09:28:15Z"}}}"#;
    let r = one(doc).resource;
    assert_eq!(r.id, None);
    assert_eq!(r.name.as_deref(), Some("vm-1"));
}

/// A payload refused for a field the history could not keep (here the caller's VM name, the
/// event's `resource.name`) leaves the state as the earlier reads built it: the next read
/// with a usable name still starts the maintenance, with the id its first sight gives.
#[test]
fn a_read_refused_for_a_field_s_size_changes_no_state() {
    let none = fixture("gcp-maintenance-event-none.txt");
    let migrate = fixture("gcp-maintenance-event-migrate.txt");
    let mut st = NormalizerState::default();
    at(&none, t0(), &mut st);
    let before = st.clone();
    let long = "v".repeat(keel_engine::normalize::MAX_FIELD_BYTES + 1);
    let t1 = t0() + Duration::seconds(30);
    let err = normalize(NAME, &Input::new(&migrate, t1).self_name(&long), &mut st).unwrap_err();
    assert!(err.to_string().contains("at most 2048 bytes"), "{err}");
    assert_eq!(st, before);
    let t2 = t1 + Duration::seconds(30);
    let evs = normalize(NAME, &Input::new(&migrate, t2).self_name("vm-1"), &mut st).unwrap();
    assert_eq!(
        evs.len(),
        1,
        "the maintenance was not taken as already reported"
    );
    assert_eq!(
        evs[0].id,
        me_id("MIGRATE_ON_HOST_MAINTENANCE", "2026-04-20T12:01:00Z")
    );
}
